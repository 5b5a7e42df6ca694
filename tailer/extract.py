"""Extracting observables from an alert: one tiny extractor per data source.

The field catalog lists, per data source, the alert fields that hold indicators and
how to read them (wazuh-indicator-fields facts: static decoder fields, Sysmon and
Windows event data, FIM, Suricata EVE, cloud modules, enrichment integrations).
Fields are grouped by their first key below `data` (or `syscheck`), so an alert only
costs the lookups of the sources it actually carries.

Never read: `agent.*` (the agent's own address), `manager.*`, `predecoder.*` and
`location` (log-source identity, not observations).

Product decision: the free-text fields `full_log` and `previous_output` are not
scanned unless `scan_free_text=True`. They repeat what the decoder already extracted,
and a regular expression over free text finds look-alikes (file names, rule ids,
compliance ids) that are not indicators.

Extraction is pure: no I/O, so the live tailer, replay and tests share it.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from sync.normalize import (
    InvalidValue,
    is_skipped_address,
    normalize_domain,
    normalize_hash,
    normalize_ip,
    normalize_url,
    url_host,
)
from tailer.match import Observable

KINDS = ("ip", "domain", "url", "hash")
FORBIDDEN_ROOTS = ("agent", "manager", "predecoder", "location", "cluster")
FREE_TEXT_PATHS = ("full_log", "previous_output")
DNS_DECODERS = ("named", "unbound")

_URL_IN_TEXT = re.compile(r"(?i)\b(?:https?|ftp)://[^\s\"'<>\\^`{|}]+")
_IPV4_IN_TEXT = re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}\b")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_VT_FILE = re.compile(r"/file/([0-9A-Fa-f]{64})(?:/|$)")
_URL_TRAILING = ".,;:)]"


class CatalogError(ValueError):
    """A user-supplied field of the catalog is unusable."""


@dataclass(frozen=True)
class FieldSpec:
    """One alert field that may hold indicators, and how to read it."""

    path: str
    kind: str
    reader: str = "value"
    port_path: str | None = None

    @property
    def parts(self) -> tuple[str, ...]:
        return tuple(self.path.split("."))


@dataclass(frozen=True)
class Catalog:
    """Field specs grouped by root key, plus the extraction options.

    The groups are compiled once into `_Group`s: an alert then costs one lookup
    per key it carries under `data`, and the walk shared by a group (such as
    `data.win.eventdata`) is done once per alert instead of once per field.
    """

    by_root: Mapping[str, tuple[FieldSpec, ...]]
    skip_private: bool = True
    scan_free_text: bool = False
    roots: frozenset[str] = field(default=frozenset())
    data_groups: Mapping[str, _Group] = field(init=False, repr=False, compare=False)
    other_groups: tuple[tuple[str, _Group], ...] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        data_groups, other_groups = {}, []
        for root, specs in self.by_root.items():
            if root.startswith("data."):
                data_groups[root[5:]] = _compile_group(specs)
            else:
                other_groups.append((root, _compile_group(specs)))
        object.__setattr__(self, "data_groups", data_groups)
        object.__setattr__(self, "other_groups", tuple(other_groups))


@dataclass(frozen=True, slots=True)
class _Field:
    """A FieldSpec compiled for reading below its group's root value."""

    path: str
    kind: str
    read: Callable[..., None]
    rest: tuple[str, ...]
    suffix: tuple[str, ...]
    port_parts: tuple[str, ...] | None
    # The suffix split for the common case of a dict below the prefix.
    first: str | None
    after: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _Group:
    """The fields under one root, with the path steps they all share."""

    prefix: tuple[str, ...]
    fields: tuple[_Field, ...]
    # The first key below the prefix of every field; None if a field ends there.
    firsts: frozenset[str] | None


def _compile_group(specs: Sequence[FieldSpec]) -> _Group:
    rests = [_below_root(spec.parts) for spec in specs]
    shortest = min(len(rest) for rest in rests)
    prefix: tuple[str, ...] = ()
    for step in range(shortest):
        if len({rest[step] for rest in rests}) > 1:
            break
        prefix = rests[0][: step + 1]
    fields = tuple(
        _Field(
            spec.path,
            spec.kind,
            _READERS[spec.reader],
            rest,
            rest[len(prefix) :],
            tuple(spec.port_path.split(".")) if spec.port_path else None,
            rest[len(prefix)] if len(rest) > len(prefix) else None,
            rest[len(prefix) + 1 :],
        )
        for spec, rest in zip(specs, rests, strict=True)
    )
    firsts = frozenset(spec.first for spec in fields)
    return _Group(prefix, fields, None if None in firsts else firsts)


def _below_root(parts: tuple[str, ...]) -> tuple[str, ...]:
    """The path steps below the value a group is read from (see `_root`)."""
    return parts[2:] if parts[0] == "data" and len(parts) > 1 else parts[1:]


def _specs(kind: str, reader: str, *paths: str) -> list[FieldSpec]:
    return [FieldSpec(path, kind, reader) for path in paths]


def _ip_port(path: str, port_path: str) -> FieldSpec:
    return FieldSpec(path, "ip", "value", port_path)


_W = "data.win.eventdata."
_GD = "data.aws.service.action."

BUILTIN_FIELDS: tuple[FieldSpec, ...] = (
    # Static decoder fields (sshd, web, pfSense, FortiGate, dovecot, ...).
    _ip_port("data.srcip", "data.srcport"),
    _ip_port("data.dstip", "data.dstport"),
    FieldSpec("data.url", "url", "url_field"),
    # Suricata EVE, Cisco ASA/FTD, Sophos XG.
    _ip_port("data.src_ip", "data.src_port"),
    _ip_port("data.dest_ip", "data.dest_port"),
    _ip_port("data.dst_ip", "data.dst_port"),
    *_specs("ip", "value", "data.mapped_src_ip", "data.mapped_dst_ip"),
    *_specs("ip", "value", "data.tran_src_ip", "data.tran_dst_ip"),
    *_specs("domain", "value", "data.dns.rrname", "data.dns.queries.rrname"),
    FieldSpec("data.dns.answers.rrname", "domain"),
    FieldSpec("data.dns.answers.rdata", "ip", "ip_or_domain"),
    FieldSpec("data.http.hostname", "domain"),
    FieldSpec("data.http.url", "url", "suricata_http_url"),
    FieldSpec("data.tls.sni", "domain"),
    *_specs("hash", "value", "data.fileinfo.md5", "data.fileinfo.sha1"),
    FieldSpec("data.fileinfo.sha256", "hash"),
    # FortiGate and Palo Alto dynamic fields.
    FieldSpec("data.remip", "ip"),
    FieldSpec("data.hostname", "ip", "ip_or_domain"),
    FieldSpec("data.qname", "domain"),
    *_specs("ip", "value", "data.source_address", "data.destination_address"),
    FieldSpec("data.xff_address", "ip"),
    FieldSpec("data.file_digest", "hash"),
    # Windows Security and Sysmon through eventchannel.
    _ip_port(_W + "ipAddress", _W + "ipPort"),
    _ip_port(_W + "sourceIp", _W + "sourcePort"),
    _ip_port(_W + "destinationIp", _W + "destinationPort"),
    FieldSpec(_W + "destinationHostname", "domain"),
    FieldSpec(_W + "queryName", "domain"),
    FieldSpec(_W + "queryResults", "ip", "query_results"),
    FieldSpec(_W + "hashes", "hash", "sysmon_hashes"),
    FieldSpec(_W + "commandLine", "url", "urls_in_text"),
    FieldSpec(_W + "parentCommandLine", "url", "urls_in_text"),
    FieldSpec("data.sysmon.hashes", "hash", "sysmon_hashes"),
    # FIM.
    *_specs("hash", "value", "syscheck.md5_after", "syscheck.sha1_after"),
    FieldSpec("syscheck.sha256_after", "hash"),
    # AWS (CloudTrail, VPC flow, GuardDuty, WAF, load balancers, S3 access).
    *_specs("ip", "value", "data.aws.sourceIPAddress", "data.aws.srcaddr"),
    *_specs("ip", "value", "data.aws.dstaddr", "data.aws.httpRequest.clientIp"),
    *_specs("ip", "value", "data.aws.client_ip", "data.aws.remote_ip"),
    FieldSpec(_GD + "networkConnectionAction.remoteIpDetails.ipAddressV4", "ip"),
    FieldSpec(
        _GD + "portProbeAction.portProbeDetails.remoteIpDetails.ipAddressV4", "ip"
    ),
    # Office 365, Microsoft Graph, GitHub, GCP, Cloudflare.
    *_specs("ip", "host_port", "data.office365.ClientIP"),
    *_specs("ip", "host_port", "data.office365.ActorIpAddress"),
    *_specs("ip", "host_port", "data.office365.ClientIPAddress"),
    *_specs("ip", "value", "data.ms-graph.ipAddress", "data.ms-graph.actor.ipAddress"),
    FieldSpec("data.github.actor_ip", "ip"),
    FieldSpec("data.gcp.jsonPayload.sourceIP", "ip"),
    FieldSpec("data.gcp.protoPayload.requestMetadata.callerIp", "ip"),
    FieldSpec("data.gcp.jsonPayload.queryName", "domain"),
    FieldSpec("data.ClientIP", "ip"),
    FieldSpec("data.ClientRequestHost", "domain"),
    # osquery packs.
    *_specs("hash", "value", "data.osquery.columns.md5", "data.osquery.columns.sha1"),
    FieldSpec("data.osquery.columns.sha256", "hash"),
    *_specs("ip", "value", "data.osquery.columns.remote_address"),
    # Packetbeat / ECS-shaped JSON.
    *_specs("ip", "value", "data.source.ip", "data.destination.ip", "data.client.ip"),
    FieldSpec("data.dns.question.name", "domain"),
    FieldSpec("data.dns.answers.data", "ip", "ip_or_domain"),
    # Enrichment integrations (skip them with tailer.skip_integrations).
    *_specs("hash", "value", "data.virustotal.source.md5"),
    *_specs("hash", "value", "data.virustotal.source.sha1", "data.virustotal.sha1"),
    FieldSpec("data.virustotal.permalink", "hash", "vt_permalink"),
)


def build_catalog(
    extra_fields: Sequence[Mapping[str, Any]] = (),
    *,
    skip_private: bool = True,
    scan_free_text: bool = False,
) -> Catalog:
    """The built-in catalog plus `tailer.extra_fields`; raises CatalogError."""
    specs = list(BUILTIN_FIELDS)
    errors = []
    for index, entry in enumerate(extra_fields):
        try:
            specs.append(_extra_spec(index, entry))
        except CatalogError as err:
            errors.append(str(err))
    if errors:
        raise CatalogError("; ".join(errors))

    by_root: dict[str, list[FieldSpec]] = {}
    for spec in specs:
        by_root.setdefault(_root(spec.parts), []).append(spec)
    frozen = {root: tuple(group) for root, group in by_root.items()}
    return Catalog(frozen, skip_private, scan_free_text, frozenset(frozen))


def _extra_spec(index: int, entry: Mapping[str, Any]) -> FieldSpec:
    where = f"config tailer.extra_fields[{index}]"
    if not isinstance(entry, Mapping):
        raise CatalogError(
            f"{where}: not a mapping (got {entry!r}); expected {{path, type}}"
        )
    path, kind = entry.get("path"), entry.get("type")
    if kind not in KINDS:
        raise CatalogError(
            f"{where}.type: unknown (got {kind!r}); expected ip|domain|url|hash"
        )
    if not isinstance(path, str) or not path.strip(".") or ".." in path:
        raise CatalogError(
            f"{where}.path: not a dotted path (got {path!r}); expected data.a.b"
        )

    if path.split(".")[0] in FORBIDDEN_ROOTS or path in FREE_TEXT_PATHS:
        raise CatalogError(
            f"{where}.path: not an observation field (got {path!r}); "
            "expected a field under data or syscheck"
        )
    reader = "url_field" if kind == "url" else "value"
    return FieldSpec(path, kind, reader)


def _root(parts: tuple[str, ...]) -> str:
    if parts[0] == "data" and len(parts) > 1:
        return "data." + parts[1]
    return parts[0]


def extract_observables(
    alert: Mapping[str, Any], catalog: Catalog, *, drops: Counter | None = None
) -> list[Observable]:
    """Normalised observables of one alert, deduplicated per (kind, value, port).

    Values that do not normalise are dropped and counted in `drops` by reason.
    Fields are read in the order of the alert's keys under `data`, then the
    catalog's order; the first field holding a value names its observable.
    """
    data = alert.get("data")
    groups = catalog.data_groups
    keys = _keys_in(data, groups) if isinstance(data, dict) else ()
    others = [(root, group) for root, group in catalog.other_groups if root in alert]
    if not (keys or others or catalog.scan_free_text):
        return []

    run = _Run(alert, catalog.skip_private, drops if drops is not None else Counter())
    for key in keys:
        _read_group(run, groups[key], data[key])
    for root, group in others:
        _read_group(run, group, alert[root])
    if catalog.scan_free_text:
        _scan_free_text(run)
    return list(run.found.values())


@dataclass(slots=True)
class _Run:
    """The alert being read and what was found in it so far."""

    alert: Mapping[str, Any]
    skip_private: bool
    drops: Counter
    found: dict[tuple, Observable] = field(default_factory=dict)


def _keys_in(data: dict, groups: Mapping[str, _Group]) -> list[str] | set[str]:
    """The keys of `data` that have a group, in the alert's order."""
    common = groups.keys() & data.keys()
    if len(common) < 2:
        return common
    return [key for key in data if key in common]


_MISSING = object()
_LISTED = object()


def _walk(node: Any, parts: tuple[str, ...]) -> Any:
    """The value at `parts` below `node`; _MISSING, or _LISTED at a list on the way."""
    for part in parts:
        if isinstance(node, dict):
            node = node.get(part, _MISSING)
            if node is _MISSING:
                return _MISSING
        elif isinstance(node, list):
            return _LISTED
        else:
            return _MISSING
    return node


def _read_group(run: _Run, group: _Group, node: Any) -> None:
    base = _walk(node, group.prefix) if group.prefix else node
    if base is _MISSING:
        return
    if base is _LISTED:
        for spec in group.fields:
            _read_values(run, spec, _values_at(node, spec.rest))
        return
    if group.firsts is not None and isinstance(base, dict):
        _read_dict(run, group, base)
        return

    for spec in group.fields:
        value = _walk(base, spec.suffix)
        if value is not _MISSING:
            _read_found(run, spec, value, base)


def _read_dict(run: _Run, group: _Group, base: dict) -> None:
    """The common case: one dict lookup per field, none when no key is there."""
    if base.keys().isdisjoint(group.firsts):
        return
    for spec in group.fields:
        value = base.get(spec.first, _MISSING)
        if value is not _MISSING and spec.after:
            value = _walk(value, spec.after)
        if value is not _MISSING:
            _read_found(run, spec, value, base)


def _read_found(run: _Run, spec: _Field, value: Any, base: Any) -> None:
    if isinstance(value, str):
        text = value.strip()
        if text and text not in _NO_VALUE:
            spec.read(run, spec, text)
    elif value is _LISTED or isinstance(value, list):
        _read_values(run, spec, _values_at(base, spec.suffix))
    else:
        _read_value_at(run, spec, value)


def _read_values(run: _Run, spec: _Field, values: Iterator[Any]) -> None:
    for raw in values:
        _read_value_at(run, spec, raw)


_NO_VALUE = frozenset(("-", "null", "N/A"))


def _read_value_at(run: _Run, spec: _Field, raw: Any) -> None:
    if isinstance(raw, str):
        text = raw.strip()
    elif isinstance(raw, (int, float)) and not isinstance(raw, bool):
        text = str(raw).strip()
    else:
        return
    if text and text not in _NO_VALUE:
        spec.read(run, spec, text)


def _values_at(node: Any, parts: Sequence[str]) -> Iterator[Any]:
    """Every value at a dotted path; lists along the way are walked element-wise."""
    if isinstance(node, list):
        for element in node:
            yield from _values_at(element, parts)
        return
    if not parts:
        yield node
        return
    if isinstance(node, dict) and parts[0] in node:
        yield from _values_at(node[parts[0]], parts[1:])


def _port(run: _Run, spec: _Field) -> int | None:
    if spec.port_parts is None:
        return None
    value = _walk(run.alert, spec.port_parts)
    if value is _MISSING:
        return None
    if value is not _LISTED and not isinstance(value, list):
        return _port_number(value)
    for raw in _values_at(run.alert, spec.port_parts):
        port = _port_number(raw)
        if port is not None:
            return port
    return None


def _port_number(raw: Any) -> int | None:
    text = str(raw)
    return int(text) if text.isdecimal() and 0 < int(text) < 65536 else None


# --- building observables -------------------------------------------------------


def _make(
    run: _Run,
    kind: str,
    text: str,
    path: str,
    raw: str,
    *,
    port: int | None = None,
    algorithm: str | None = None,
) -> None:
    """One normalised observable (a URL also gives its host); bad values counted."""
    try:
        if kind == "hash":
            value = normalize_hash(text, algorithm)
        else:
            value = _NORMALIZERS[kind](text)
    except InvalidValue as err:
        run.drops[getattr(err, "reason", "invalid_value")] += 1
        return
    if kind == "ip" and run.skip_private and is_skipped_address(value):
        run.drops["skipped_address"] += 1
        return

    key = (kind, value, port)
    if key not in run.found:
        run.found[key] = Observable(kind, value, path, raw, port)
    if kind == "url":
        _url_host(run, value, path, raw)


_NORMALIZERS: dict[str, Callable[[str], str]] = {
    "ip": normalize_ip,
    "domain": normalize_domain,
    "url": normalize_url,
}


def _url_host(run: _Run, url: str, path: str, raw: str) -> None:
    host = url_host(url)
    if host:
        _ip_or_domain(run, host, path, raw)


def _ip_or_domain(run: _Run, text: str, path: str, raw: str) -> None:
    kind = "ip" if _looks_like_ip(text) else "domain"
    _make(run, kind, text, path, raw)


def _looks_like_ip(text: str) -> bool:
    stripped = text.strip("[]")
    return ":" in stripped or stripped.replace(".", "").isdigit()


# --- readers: one per field shape ------------------------------------------------


def _read_value(run: _Run, spec: _Field, text: str) -> None:
    port = _port(run, spec) if spec.port_parts else None
    _make(run, spec.kind, text, spec.path, text, port=port)


def _read_ip_or_domain(run: _Run, spec: _Field, text: str) -> None:
    _ip_or_domain(run, text, spec.path, text)


def _read_host_port(run: _Run, spec: _Field, text: str) -> None:
    """`1.2.3.4:5678`, `[2001:db8::1]:443` or a bare address (Office 365 ClientIP)."""
    host, port = text, None
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else None
    elif text.count(":") == 1:
        host, port = text.split(":")
    port_number = int(port) if port and port.isdecimal() and int(port) < 65536 else None
    _make(run, "ip", host, spec.path, text, port=port_number)


_FILE_HASHES = frozenset(("md5", "sha1", "sha256", "sha512"))


def _read_sysmon_hashes(run: _Run, spec: _Field, text: str) -> None:
    """`SHA1=..,MD5=..,SHA256=..,IMPHASH=..`; IMPHASH is not a file hash."""
    for pair in text.split(","):
        algorithm, _, digest = pair.partition("=")
        algorithm = algorithm.strip().lower()
        if algorithm not in _FILE_HASHES:
            continue
        # Lower-cased here, the digest normalises on the first try.
        digest = digest.strip().lower()
        if digest:
            _make(run, "hash", digest, spec.path, text, algorithm=algorithm)


def _read_query_results(run: _Run, spec: _Field, text: str) -> None:
    """Sysmon EID 22: `type:  5 cname;1.2.3.4;::ffff:5.6.7.8;`."""
    for entry in text.split(";"):
        entry = entry.strip()
        if entry.startswith("type:"):
            words = entry.split()
            if len(words) > 2:
                _make(run, "domain", words[-1], spec.path, text)
        elif entry:
            _ip_or_domain(run, entry, spec.path, text)


def _read_url_field(run: _Run, spec: _Field, text: str) -> None:
    """`data.url`: a full URL (squid), a query name (BIND, Unbound) or only a path."""
    if _SCHEME.match(text):
        _make(run, "url", text, spec.path, text)
        return
    if _decoder_is(run.alert, DNS_DECODERS):
        _make(run, "domain", text, spec.path, text)
        return
    if _decoder_is(run.alert, ("squid",)) and not text.startswith("/"):
        # A CONNECT request logs `host:port`.
        _ip_or_domain(run, text.rsplit(":", 1)[0], spec.path, text)
        return
    # A path and query: only URLs embedded in it (redirect targets, injected links).
    # Parameters are split before decoding, so `&` ends an encoded URL value.
    for parameter in text.split("&"):
        _urls_in_text(run, spec.path, parameter, text)


def _read_urls_in_text(run: _Run, spec: _Field, text: str) -> None:
    _urls_in_text(run, spec.path, text, text)


def _urls_in_text(run: _Run, path: str, text: str, raw: str) -> None:
    decoded = unquote(text) if "%" in text else text
    # Every URL the pattern finds has `://`; most texts have none.
    if "://" not in decoded:
        return
    for match in _URL_IN_TEXT.finditer(decoded):
        _make(run, "url", match.group(0).rstrip(_URL_TRAILING), path, raw)


def _read_suricata_http_url(run: _Run, spec: _Field, text: str) -> None:
    """Suricata's `http.url` is a path; the URL is joined with `http.hostname`."""
    http = run.alert.get("data", {}).get("http", {})
    hostname = http.get("hostname") if isinstance(http, dict) else None
    if not isinstance(hostname, str) or not hostname or not text.startswith("/"):
        return
    port = str(run.alert["data"].get("dest_port", ""))
    authority = hostname if port in ("", "80") else f"{hostname}:{port}"
    _make(run, "url", f"http://{authority}{text}", spec.path, text)


def _read_vt_permalink(run: _Run, spec: _Field, text: str) -> None:
    """The SHA-256 inside a VirusTotal permalink path."""
    match = _VT_FILE.search(text)
    if match:
        _make(run, "hash", match.group(1), spec.path, text, algorithm="sha256")


_READERS: dict[str, Callable[[_Run, _Field, str], None]] = {
    "value": _read_value,
    "ip_or_domain": _read_ip_or_domain,
    "host_port": _read_host_port,
    "sysmon_hashes": _read_sysmon_hashes,
    "query_results": _read_query_results,
    "url_field": _read_url_field,
    "urls_in_text": _read_urls_in_text,
    "suricata_http_url": _read_suricata_http_url,
    "vt_permalink": _read_vt_permalink,
}


def _decoder_is(alert: Mapping[str, Any], prefixes: tuple[str, ...]) -> bool:
    decoder = alert.get("decoder")
    if not isinstance(decoder, dict):
        return False
    names = (str(decoder.get("name", "")), str(decoder.get("parent", "")))
    return any(name.startswith(prefixes) for name in names)


def _scan_free_text(run: _Run) -> None:
    """Optional: URLs and IPv4 addresses inside `full_log` and `previous_output`."""
    for path in FREE_TEXT_PATHS:
        text = run.alert.get(path)
        if not isinstance(text, str):
            continue
        _urls_in_text(run, path, text, text)
        for match in _IPV4_IN_TEXT.finditer(text):
            _make(run, "ip", match.group(0), path, match.group(0))
