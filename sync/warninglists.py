"""Local MISP warninglists: drop known-benign values before they are stored.

A directory holds lists in the misp-warninglists layout, one `<name>/list.json`
per list (a checkout's `lists/` directory works as is). Each list is matched
with MISP's own semantics, so a list behaves here as it does on a MISP server
with `enforceWarninglist`:

* `string`: exact, case-sensitive membership of the value;
* `substring`: the value contains an entry;
* `hostname`: the host of the value (text before the first `/`, after `//`
  when present) or any of its label-aligned parent domains is an entry;
* `cidr`: the value is an address or network inside an entry network;
* `regex`: an entry, written as a PCRE literal `/pattern/flags`, finds the value.

A list applies only to the MISP types in its `matching_attributes` (all types
when absent). Composite values (`domain|ip`, `filename|sha256`, ...) are split
on the first `|` and each part is tested, as MISP does; a hit on any part drops
the whole attribute.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

MATCH_TYPES = ("string", "substring", "hostname", "cidr", "regex")
_Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_REGEX_FLAGS = {"i": re.IGNORECASE, "m": re.MULTILINE, "s": re.DOTALL, "x": re.VERBOSE}


class WarninglistError(ValueError):
    """A warninglist directory or file that cannot be used."""


@dataclass(frozen=True)
class Warninglist:
    """One list: its directory name, match type, types it applies to, matcher."""

    name: str
    match_type: str
    matching_attributes: frozenset[str] | None
    entry_count: int
    matches: Callable[[str], bool]

    def applies_to(self, misp_type: str) -> bool:
        return self.matching_attributes is None or misp_type in self.matching_attributes


@dataclass(frozen=True)
class WarninglistSet:
    """The lists a sync applies, in a stable order."""

    lists: tuple[Warninglist, ...] = ()

    def match(self, misp_type: str, value: str) -> str | None:
        """Return the name of the first list that holds `value`, else None."""
        parts = _value_parts(misp_type, value)
        for wl in self.lists:
            if wl.applies_to(misp_type) and any(wl.matches(p) for p in parts):
                return wl.name
        return None

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(wl.name for wl in self.lists)


def _value_parts(misp_type: str, value: str) -> tuple[str, ...]:
    if ("|" in misp_type or misp_type == "malware-sample") and "|" in value:
        first, second = value.split("|", 1)
        return (first, second)
    return (value,)


def load_warninglists(
    directory: str | Path | None, names: Iterable[str] = ()
) -> WarninglistSet:
    """Load the lists of `directory` (all, or only `names`); no directory, none."""
    if directory is None or str(directory) == "":
        return WarninglistSet()
    root = Path(directory)
    if (root / "lists").is_dir():
        root = root / "lists"
    if not root.is_dir():
        raise WarninglistError(
            f"config sync.warninglists_dir: not a directory (got {directory}); "
            "expected a directory of <name>/list.json"
        )

    available = {p.parent.name: p for p in sorted(root.glob("*/list.json"))}
    wanted = list(names) or sorted(available)
    missing = [n for n in wanted if n not in available]
    if missing:
        raise WarninglistError(
            f"config sync.warninglists: unknown list {', '.join(missing)} "
            f"(got {missing}); expected names of directories in {root}"
        )
    lists = tuple(load_warninglist(available[n]) for n in wanted)
    log.info("warninglists_loaded dir=%s lists=%s", root, ",".join(wanted))
    return WarninglistSet(lists)


def load_warninglist(path: Path) -> Warninglist:
    """Parse one `list.json` into a matcher."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise WarninglistError(
            f"{path}: unreadable ({err}); expected a misp-warninglists list.json"
        ) from err
    if not isinstance(doc, dict):
        raise WarninglistError(
            f"{path}: top level is {type(doc).__name__}; expected a JSON object"
        )

    match_type = doc.get("type")
    if match_type not in MATCH_TYPES:
        raise WarninglistError(
            f"{path}: type is not supported (got {match_type!r}); "
            f"expected one of {', '.join(MATCH_TYPES)}"
        )
    entries = _entries(path, doc.get("list"))
    attributes = doc.get("matching_attributes")
    scope = None if not attributes or "ALL" in attributes else frozenset(attributes)

    matcher = _MATCHER_BUILDERS[match_type](path, entries)
    return Warninglist(path.parent.name, match_type, scope, len(entries), matcher)


def _entries(path: Path, raw: object) -> list[str]:
    # MISP also accepts `list` as an object of value -> comment.
    if isinstance(raw, dict):
        raw = list(raw)
    if not isinstance(raw, list) or not all(isinstance(e, str) for e in raw):
        raise WarninglistError(
            f"{path}: list is not a list of strings (got {type(raw).__name__}); "
            "expected an array of strings"
        )
    return [e.strip() for e in raw if e.strip()]


def _string_matcher(path: Path, entries: list[str]) -> Callable[[str], bool]:
    return frozenset(entries).__contains__


def _substring_matcher(path: Path, entries: list[str]) -> Callable[[str], bool]:
    pattern = re.compile("|".join(re.escape(e) for e in entries))
    return lambda value: pattern.search(value) is not None


def _hostname_matcher(path: Path, entries: list[str]) -> Callable[[str], bool]:
    names = frozenset(e.lower().strip(".") for e in entries)

    def matches(value: str) -> bool:
        labels = _host_of(value).split(".")
        return any(".".join(labels[i:]) in names for i in range(len(labels)))

    return matches


def _host_of(value: str) -> str:
    # MISP takes the text after `//` (if any) up to the first `/`.
    if "//" in value:
        value = value.split("//", 1)[1]
    return value.split("/", 1)[0].rstrip(".")


def _cidr_matcher(path: Path, entries: list[str]) -> Callable[[str], bool]:
    # Networks as integer prefixes grouped by (version, length): one set lookup
    # per distinct prefix length instead of one containment test per entry.
    by_prefix: dict[tuple[int, int], set[int]] = {}
    for entry in entries:
        try:
            net = ipaddress.ip_network(entry, strict=False)
        except ValueError:
            log.warning("warninglist_entry_skipped list=%s entry=%s", path, entry)
            continue
        key = (net.version, net.prefixlen)
        by_prefix.setdefault(key, set()).add(_prefix_bits(net, net.prefixlen))
    prefixes = sorted(by_prefix)

    def matches(value: str) -> bool:
        try:
            net = ipaddress.ip_network(value, strict=False)
        except ValueError:
            return False
        return any(
            _prefix_bits(net, length) in by_prefix[(version, length)]
            for version, length in prefixes
            if version == net.version and length <= net.prefixlen
        )

    return matches


def _prefix_bits(net: _Network, length: int) -> int:
    return int(net.network_address) >> (net.max_prefixlen - length)


def _regex_matcher(path: Path, entries: list[str]) -> Callable[[str], bool]:
    patterns = [p for p in (_compile_pcre(path, e) for e in entries) if p]
    return lambda value: any(p.search(value) for p in patterns)


def _compile_pcre(path: Path, literal: str) -> re.Pattern[str] | None:
    """Compile a PCRE literal such as `/^foo$/i`; warn and skip what fails."""
    delimiter = literal[:1]
    end = literal.rfind(delimiter)
    if not delimiter or delimiter.isalnum() or delimiter == "\\" or end <= 0:
        log.warning("warninglist_regex_skipped list=%s entry=%s", path, literal)
        return None

    flags = 0
    for letter in literal[end + 1 :]:
        flags |= _REGEX_FLAGS.get(letter, 0)
    try:
        return re.compile(literal[1:end], flags)
    except re.error:
        log.warning("warninglist_regex_skipped list=%s entry=%s", path, literal)
        return None


_MATCHER_BUILDERS = {
    "string": _string_matcher,
    "substring": _substring_matcher,
    "hostname": _hostname_matcher,
    "cidr": _cidr_matcher,
    "regex": _regex_matcher,
}
