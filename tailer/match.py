"""Matching observables against the indicators of the IOC store.

``IndicatorIndex`` keeps a pre-filter in memory: per kind, a ``set`` of the
64-bit ``hash()`` of every stored value (about 70 bytes each: an int object and
its slot, a constant-time lookup), and per IP version and prefix length the set
of stored networks. A lookup that passes
the pre-filter (about one observable in a hundred) is confirmed by reading the
rows of that exact value from the store, which also gives the MISP context.
So a hash collision can cost a query but never invents a hit.

Rules:

* hash, url: equal values.
* domain: an observable equals ``hostname`` or ``domain`` indicators, and each
  parent on a label boundary matches ``domain`` indicators only
  (``a.b.evil.example`` hits domain ``evil.example``; ``notevil.example`` never
  does; hostname ``evil.example`` covers no sub-name).
* ip: equal addresses and every covering network (IPv4 and IPv6). An indicator
  with a port (``ip-dst|port``) hits only an observable carrying that port. The
  port of a ``hostname|port`` indicator is context only.
* hash from ``filename|<hash>`` or ``malware-sample``: the digest hits only when
  the alert also names the file (``file_name_required`` and
  ``alert_names_file``), so the same digest under an unrelated name is not
  reported as that attribute.

``refresh()`` compares the store generation (cheap) and, when it moved, builds
a new index in a background thread and swaps it in with one assignment, so
matching never pauses.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from sync.store import STORE_KINDS, StoreError, StoreReader

log = logging.getLogger(__name__)


class Observable(NamedTuple):
    """A normalised value taken from one alert field.

    A named tuple rather than a frozen dataclass: one is built per field value
    of every alert, and a tuple is built about three times faster.
    """

    kind: str
    value: str
    field_path: str
    raw: str
    port: int | None = None


@dataclass(frozen=True)
class Hit:
    """An observable equal to (or covered by) an indicator, with its context."""

    kind: str
    indicator: str
    observable: Observable
    context: dict[str, Any] = field(hash=False, compare=False)


@dataclass(frozen=True)
class _Tables:
    """One immutable build of the pre-filter."""

    values: dict[str, set[int]]
    # (ip version, prefix length) -> network numbers, longest prefix first.
    networks: tuple[tuple[int, int, int, frozenset[int]], ...]
    counts: dict[str, int]
    generation: tuple
    loaded_at: float


def file_name_required(hit: Hit) -> str | None:
    """The file name a `filename|<hash>` or `malware-sample` hit also needs."""
    misp_type = hit.context.get("misp_type") or ""
    if not (misp_type.startswith("filename|") or misp_type == "malware-sample"):
        return None
    name, separator, _ = str(hit.context.get("raw_value") or "").rpartition("|")
    return name.strip().lower() if separator and name.strip() else None


def alert_names_file(alert_text: str, file_name: str) -> bool:
    """Whether `file_name` stands in the lower-cased alert text as a whole name.

    The name must not be part of a longer name: `invoice.pdf.exe` is found in
    `C:\\Users\\x\\invoice.pdf.exe` but not in `myinvoice.pdf.exe` or
    `invoice.pdf.exe.txt`.
    """
    pattern = r"(?<![\w.-])" + re.escape(file_name) + r"(?![\w.-])"
    return re.search(pattern, alert_text) is not None


def _contains(table: set[int], value: str) -> bool:
    return hash(value) in table


def _network_groups(
    networks: Iterable[str],
) -> tuple[tuple[int, int, int, frozenset[int]], ...]:
    groups: dict[tuple[int, int], set[int]] = {}
    for text in networks:
        network = ipaddress.ip_network(text)
        key = (network.version, network.prefixlen)
        groups.setdefault(key, set()).add(int(network.network_address))
    ordered = sorted(groups.items(), key=lambda item: -item[0][1])
    return tuple(
        (version, prefix_len, _mask(version, prefix_len), frozenset(numbers))
        for (version, prefix_len), numbers in ordered
    )


def _mask(version: int, prefix_len: int) -> int:
    bits = 32 if version == 4 else 128
    return ((1 << prefix_len) - 1) << (bits - prefix_len)


def _build_tables(reader: StoreReader, since: int | None) -> _Tables:
    generation = reader.generation()
    values: dict[str, set[int]] = {}
    counts: dict[str, int] = {}
    cidrs: list[str] = []
    for kind in STORE_KINDS:
        count = 0
        hashes: set[int] = set()
        for value, subtype, _port in reader.iter_values(kind, since=since):
            count += 1
            if subtype == "cidr":
                cidrs.append(value)
            else:
                hashes.add(hash(value))
        values[kind] = hashes
        counts[kind] = count
    counts["networks"] = len(cidrs)
    networks = _network_groups(cidrs)
    return _Tables(values, networks, counts, generation, time.time())


class IndicatorIndex:
    """In-memory index of the store's indicators; see the module docstring."""

    def __init__(self, reader: StoreReader, *, since: int | None = None) -> None:
        self._reader = reader
        self._since = since
        self._tables = self._build()
        self._building: threading.Thread | None = None
        self.build_failures = 0

    @property
    def loaded_at(self) -> float:
        return self._tables.loaded_at

    @property
    def counts(self) -> dict[str, int]:
        return dict(self._tables.counts)

    @property
    def generation(self) -> tuple:
        return self._tables.generation

    def refresh(self) -> bool:
        """Start a rebuild when the store changed; return True if one started."""
        if self._building is not None and self._building.is_alive():
            return False
        try:
            current = self._reader.generation()
        except Exception as err:  # a broken store must not stop matching
            log.warning("index_generation_failed error=%s", err)
            return False
        if current == self._tables.generation:
            return False
        self._building = threading.Thread(
            target=self._rebuild, name="indicator-index", daemon=True
        )
        self._building.start()
        return True

    def wait_refreshed(self, timeout_s: float | None = None) -> None:
        """Wait for a running rebuild to finish (for tests and shutdown)."""
        if self._building is not None:
            self._building.join(timeout_s)

    def match(self, observable: Observable) -> list[Hit]:
        """Return every hit of one observable, most specific first."""
        tables = self._tables
        if observable.kind == "ip":
            return self._match_ip(tables, observable)
        if observable.kind == "domain":
            return self._match_domain(tables, observable)
        if observable.kind in ("url", "hash"):
            return self._match_exact(tables, observable)
        return []

    def _build(self) -> _Tables:
        with StoreReader(self._reader.paths) as reader:
            tables = _build_tables(reader, self._since)
        log.info(
            "index_loaded %s",
            " ".join(f"{kind}={n}" for kind, n in tables.counts.items()),
        )
        return tables

    def _rebuild(self) -> None:
        try:
            self._tables = self._build()
        except (StoreError, OSError, ValueError) as err:
            self.build_failures += 1
            log.warning("index_build_failed error=%s; keeping previous index", err)
        except Exception as err:  # the thread must report, never die silently
            self.build_failures += 1
            log.error("index_build_failed error=%r; keeping previous index", err)

    def _rows(self, kind: str, value: str) -> list[dict[str, Any]]:
        rows = self._reader.contexts(kind, value)
        if self._since is None:
            return rows
        return [row for row in rows if row["stored_at"] >= self._since]

    def _match_exact(self, tables: _Tables, observable: Observable) -> list[Hit]:
        kind, value = observable.kind, observable.value
        if not _contains(tables.values[kind], value):
            return []
        return [Hit(kind, value, observable, row) for row in self._rows(kind, value)]

    def _match_domain(self, tables: _Tables, observable: Observable) -> list[Hit]:
        table = tables.values["domain"]
        hits: list[Hit] = []
        name = observable.value
        while "." in name:
            if _contains(table, name):
                hits += self._domain_hits(name, observable)
            name = name.partition(".")[2]
        return hits

    def _domain_hits(self, name: str, observable: Observable) -> list[Hit]:
        exact = name == observable.value
        return [
            Hit("domain", name, observable, row)
            for row in self._rows("domain", name)
            if exact or row["subtype"] == "domain"
        ]

    def _match_ip(self, tables: _Tables, observable: Observable) -> list[Hit]:
        hits: list[Hit] = []
        if _contains(tables.values["ip"], observable.value):
            hits += self._ip_hits(observable.value, observable)
        for network in self._covering_networks(tables, observable.value):
            hits += self._ip_hits(network, observable)
        return hits

    def _ip_hits(self, indicator: str, observable: Observable) -> list[Hit]:
        return [
            Hit("ip", indicator, observable, row)
            for row in self._rows("ip", indicator)
            if row["port"] is None or row["port"] == observable.port
        ]

    def _covering_networks(self, tables: _Tables, value: str) -> list[str]:
        if not tables.networks:
            return []
        try:
            address = ipaddress.ip_address(value)
        except ValueError:
            return []
        number, found = int(address), []
        for version, prefix_len, mask, numbers in tables.networks:
            if version == address.version and number & mask in numbers:
                network = ipaddress.ip_address(number & mask)
                found.append(f"{network.compressed}/{prefix_len}")
        return found
