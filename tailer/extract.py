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
    """Field specs grouped by root key, plus the extraction options."""

    by_root: Mapping[str, tuple[FieldSpec, ...]]
    skip_private: bool = True
    scan_free_text: bool = False
    roots: frozenset[str] = field(default=frozenset())


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
    """
    found: dict[tuple, Observable] = {}
    context = _Context(alert, catalog, drops if drops is not None else Counter())
    for spec in _relevant_specs(alert, catalog):
        for observable in _read_spec(context, spec):
            key = (observable.kind, observable.value, observable.port)
            found.setdefault(key, observable)

    if catalog.scan_free_text:
        for observable in _scan_free_text(context):
            key = (observable.kind, observable.value, observable.port)
            found.setdefault(key, observable)
    return list(found.values())


@dataclass(frozen=True)
class _Context:
    alert: Mapping[str, Any]
    catalog: Catalog
    drops: Counter


def _relevant_specs(alert: Mapping[str, Any], catalog: Catalog) -> Iterator[FieldSpec]:
    data = alert.get("data")
    if isinstance(data, dict):
        for key in data:
            yield from catalog.by_root.get("data." + key, ())
    for root in catalog.roots:
        if not root.startswith("data.") and root in alert:
            yield from catalog.by_root[root]


def _read_spec(context: _Context, spec: FieldSpec) -> Iterator[Observable]:
    reader = _READERS[spec.reader]
    for raw in _values_at(context.alert, spec.parts):
        if isinstance(raw, bool) or not isinstance(raw, (str, int, float)):
            continue
        text = str(raw).strip()
        if text and text not in ("-", "null", "N/A"):
            yield from reader(context, spec, text)


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


def _port(context: _Context, spec: FieldSpec) -> int | None:
    if spec.port_path is None:
        return None
    for raw in _values_at(context.alert, spec.port_path.split(".")):
        if str(raw).isdigit() and 0 < int(raw) < 65536:
            return int(raw)
    return None


# --- building observables -------------------------------------------------------


def _make(
    context: _Context, kind: str, text: str, path: str, raw: str, **options: Any
) -> Iterator[Observable]:
    """One normalised observable (a URL also yields its host); bad values counted."""
    try:
        value = _NORMALIZERS[kind](text, options.get("algorithm"))
    except InvalidValue as err:
        context.drops[getattr(err, "reason", "invalid_value")] += 1
        return
    if kind == "ip" and context.catalog.skip_private and is_skipped_address(value):
        context.drops["skipped_address"] += 1
        return

    yield Observable(kind, value, path, raw, options.get("port"))
    if kind == "url":
        yield from _url_host(context, value, path, raw)


def _url_host(context: _Context, url: str, path: str, raw: str) -> Iterator[Observable]:
    host = url_host(url)
    if not host:
        return
    yield from _ip_or_domain(context, host, path, raw)


def _ip_or_domain(
    context: _Context, text: str, path: str, raw: str
) -> Iterator[Observable]:
    if _looks_like_ip(text):
        yield from _make(context, "ip", text, path, raw)
    else:
        yield from _make(context, "domain", text, path, raw)


def _looks_like_ip(text: str) -> bool:
    stripped = text.strip("[]")
    return ":" in stripped or stripped.replace(".", "").isdigit()


_NORMALIZERS: dict[str, Callable[[str, str | None], str]] = {
    "ip": lambda text, _alg: normalize_ip(text),
    "domain": lambda text, _alg: normalize_domain(text),
    "url": lambda text, _alg: normalize_url(text),
    "hash": lambda text, alg: normalize_hash(text, alg),
}


# --- readers: one per field shape ------------------------------------------------


def _read_value(context: _Context, spec: FieldSpec, text: str) -> Iterator[Observable]:
    port = _port(context, spec)
    yield from _make(context, spec.kind, text, spec.path, text, port=port)


def _read_ip_or_domain(
    context: _Context, spec: FieldSpec, text: str
) -> Iterator[Observable]:
    yield from _ip_or_domain(context, text, spec.path, text)


def _read_host_port(
    context: _Context, spec: FieldSpec, text: str
) -> Iterator[Observable]:
    """`1.2.3.4:5678`, `[2001:db8::1]:443` or a bare address (Office 365 ClientIP)."""
    host, port = text, None
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else None
    elif text.count(":") == 1:
        host, port = text.split(":")
    port_number = int(port) if port and port.isdigit() and int(port) < 65536 else None
    yield from _make(context, "ip", host, spec.path, text, port=port_number)


def _read_sysmon_hashes(
    context: _Context, spec: FieldSpec, text: str
) -> Iterator[Observable]:
    """`SHA1=..,MD5=..,SHA256=..,IMPHASH=..`; IMPHASH is not a file hash."""
    for pair in text.split(","):
        algorithm, _, digest = pair.strip().partition("=")
        algorithm = algorithm.strip().lower()
        if algorithm in ("md5", "sha1", "sha256", "sha512") and digest.strip():
            yield from _make(
                context, "hash", digest.strip(), spec.path, text, algorithm=algorithm
            )


def _read_query_results(
    context: _Context, spec: FieldSpec, text: str
) -> Iterator[Observable]:
    """Sysmon EID 22: `type:  5 cname;1.2.3.4;::ffff:5.6.7.8;`."""
    for entry in text.split(";"):
        entry = entry.strip()
        if entry.startswith("type:"):
            name = entry.split()[-1] if len(entry.split()) > 2 else ""
            if name:
                yield from _make(context, "domain", name, spec.path, text)
        elif entry:
            yield from _ip_or_domain(context, entry, spec.path, text)


def _read_url_field(
    context: _Context, spec: FieldSpec, text: str
) -> Iterator[Observable]:
    """`data.url`: a full URL (squid), a query name (BIND, Unbound) or only a path."""
    if _SCHEME.match(text):
        yield from _make(context, "url", text, spec.path, text)
        return
    if _decoder_is(context.alert, DNS_DECODERS):
        yield from _make(context, "domain", text, spec.path, text)
        return
    if _decoder_is(context.alert, ("squid",)) and not text.startswith("/"):
        # A CONNECT request logs `host:port`.
        yield from _ip_or_domain(context, text.rsplit(":", 1)[0], spec.path, text)
        return
    # A path and query: only URLs embedded in it (redirect targets, injected links).
    # Parameters are split before decoding, so `&` ends an encoded URL value.
    for parameter in text.split("&"):
        yield from _urls_in_text(context, spec, parameter, text)


def _read_urls_in_text(
    context: _Context, spec: FieldSpec, text: str
) -> Iterator[Observable]:
    yield from _urls_in_text(context, spec, text, text)


def _urls_in_text(
    context: _Context, spec: FieldSpec, text: str, raw: str
) -> Iterator[Observable]:
    decoded = unquote(text) if "%" in text else text
    for match in _URL_IN_TEXT.finditer(decoded):
        url = match.group(0).rstrip(_URL_TRAILING)
        yield from _make(context, "url", url, spec.path, raw)


def _read_suricata_http_url(
    context: _Context, spec: FieldSpec, text: str
) -> Iterator[Observable]:
    """Suricata's `http.url` is a path; the URL is joined with `http.hostname`."""
    http = context.alert.get("data", {}).get("http", {})
    hostname = http.get("hostname") if isinstance(http, dict) else None
    if not isinstance(hostname, str) or not hostname or not text.startswith("/"):
        return
    port = str(context.alert["data"].get("dest_port", ""))
    authority = hostname if port in ("", "80") else f"{hostname}:{port}"
    yield from _make(context, "url", f"http://{authority}{text}", spec.path, text)


def _read_vt_permalink(
    context: _Context, spec: FieldSpec, text: str
) -> Iterator[Observable]:
    """The SHA-256 inside a VirusTotal permalink path."""
    match = _VT_FILE.search(text)
    if match:
        yield from _make(
            context, "hash", match.group(1), spec.path, text, algorithm="sha256"
        )


_READERS = {
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


def _scan_free_text(context: _Context) -> Iterator[Observable]:
    """Optional: URLs and IPv4 addresses inside `full_log` and `previous_output`."""
    for path in FREE_TEXT_PATHS:
        text = context.alert.get(path)
        if not isinstance(text, str):
            continue
        spec = FieldSpec(path, "url", "urls_in_text")
        yield from _read_urls_in_text(context, spec, text)
        for match in _IPV4_IN_TEXT.finditer(text):
            yield from _make(context, "ip", match.group(0), path, match.group(0))
