"""A stand-in for MISP's ``POST /attributes/restSearch`` served on loopback.

``POST /events/restSearch`` is served in its ``metadata`` form only (events
without attributes, selected by ``eventid``), which a sync uses for event context.

The emulator follows MISP 2.5.1's behaviour for the attribute scope: key check,
parameter whitelist, ``||`` splitting, the filters a sync uses, LIMIT/OFFSET paging
with no default order, the literal JSON framing and the error bodies. Tests load real
MISP events into it, mutate them (soft delete, edit, tag removal) and inject faults.
``MispEmulator.synthetic(count)`` generates attributes on the fly for benchmarks.

Run it as a program for benchmarks and subprocess tests::

    python -m tests.misp_emulator --port 0 --events DIR --key-file F

It prints its URL on stdout and serves until SIGTERM.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import re
import signal
import socket
import ssl
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson

RESTSEARCH_PATHS = ("/attributes/restSearch", "/attributes/restSearch.json")
EVENTS_PATHS = ("/events/restSearch", "/events/restSearch.json")
KEY_PATTERN = re.compile(r"^[a-zA-Z0-9]{40}$")

MSG_INTERNAL = "An Internal Error Has Occurred."
MSG_AUTH = (
    "Authentication failed. Please make sure you pass the API key of an API "
    "enabled user along in the Authorization header."
)
MSG_EMPTY = (
    "Either specify the search terms in the url, or POST a json with the filter "
    "parameters."
)
MSG_GET = (
    "Restsearch queries using GET and no parameters are not allowed. If you have "
    "passed parameters via a JSON body, make sure you use POST requests."
)
MSG_JSON = (
    "Invalid JSON input. Make sure that the JSON input is a correctly formatted JSON "
    "string. This request has been blocked to avoid an unfiltered request."
)
MSG_FORMAT = "Invalid output format."

# RestSearchComponent::$paramArray['Attribute'] in MISP 2.5.1, plus page and limit.
ACCEPTED_PARAMS = frozenset(
    "returnFormat value value1 value2 type category org tags from to last eventid "
    "withAttachments uuid publish_timestamp published timestamp enforceWarninglist "
    "to_ids deleted includeEventUuid event_timestamp threat_level_id includeEventTags "
    "includeProposals limit page requested_attributes includeContext headerless "
    "includeWarninglistHits attackGalaxy object_relation includeSightings "
    "includeCorrelations includeDecayScore decayingModel excludeDecayed "
    "modelOverrides includeFullModel score attribute_timestamp first_seen last_seen "
    "eventinfo sharinggroup allow_proposal_blocking flatten list event_ids "
    "includeAllTags includeAttributeUuid includeGalaxy order policy walled_garden ns "
    "email serial refresh retry expiry minimum_ttl ttl".split()
)
# Accepted by MISP but not emulated: a truthy value gets a 501 naming it.
IMPLEMENTED_PARAMS = frozenset(
    "returnFormat value type category org tags from to last eventid uuid "
    "publish_timestamp published timestamp enforceWarninglist to_ids deleted "
    "includeEventUuid includeAttributeUuid event_timestamp threat_level_id "
    "includeEventTags limit page includeContext object_relation attribute_timestamp "
    "eventinfo order flatten withAttachments".split()
)
VALID_FORMATS = frozenset(
    "attack-sightings cache count csv hashes hosts json kunai netfilter opendata "
    "openioc rpz snort stix stix-json stix2 suricata text xml yara yara-json "
    "download".split()
)
ORDER_FIELDS = frozenset(
    "Attribute.id Attribute.event_id Attribute.object_id Attribute.type "
    "Attribute.category Attribute.value Attribute.distribution Attribute.timestamp "
    "Attribute.object_relation Event.publish_timestamp".split()
)
TIME_UNITS_S = {"d": 86400, "h": 3600, "m": 60, "s": 1}
FAULTS = frozenset(
    "status500 status429 status401 stall reset_mid_body truncated_json".split()
)


class HttpError(Exception):
    """A MISP error response: status and the message MISP puts in its body."""

    def __init__(
        self, status: int, message: str, *, retry_after: object = None
    ) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message
        self.retry_after = retry_after


@dataclass(frozen=True)
class RequestRecord:
    """One request as the emulator saw it; the API key itself is never kept."""

    method: str
    path: str
    headers: dict[str, str]
    auth_present: bool
    body: Any
    fault: str | None


@dataclass(frozen=True)
class Fault:
    name: str
    options: dict[str, Any]


# ---------------------------------------------------------------- value helpers


def _now_int(clock: float | None) -> int:
    return int(time.time()) if clock is None else int(clock)


def _split_params(params: dict[str, Any]) -> dict[str, Any]:
    """Keep whitelisted keys; turn strings holding ``||`` into lists."""
    kept = {}
    for key, value in params.items():
        if key not in ACCEPTED_PARAMS:
            continue
        if isinstance(value, str) and "||" in value:
            value = value.split("||")
        kept[key] = value
    return kept


def _is_truthy(value: Any) -> bool:
    return value not in (None, False, 0, "0", "", [], {}, "false")


def _terms(spec: Any) -> tuple[list[str], list[str], list[str]]:
    """Split a filter value into (OR, AND, NOT) term lists."""
    if isinstance(spec, dict):
        return tuple(_as_list(spec.get(k)) for k in ("OR", "AND", "NOT"))
    elements = spec if isinstance(spec, list) else str(spec).split("&&")
    any_terms, not_terms = [], []
    for element in elements:
        text = _scalar_text(element)
        if text.startswith("!"):
            not_terms.append(text[1:])
        else:
            any_terms.append(text)
    return any_terms, [], not_terms


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    values = value if isinstance(value, list) else [value]
    return [_scalar_text(v) for v in values]


def _scalar_text(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def _like(pattern: str, text: str | None) -> bool:
    """SQL equality or LIKE under a case-insensitive collation."""
    if text is None:
        return False
    if "%" not in pattern:
        return pattern.casefold() == text.casefold()
    regex = ".*".join(re.escape(part) for part in pattern.split("%"))
    return re.fullmatch(regex, text, flags=re.IGNORECASE | re.DOTALL) is not None


def _match_terms(spec: Any, candidates: list[str | None]) -> bool:
    any_terms, all_terms, not_terms = _terms(spec)

    def hit(term: str) -> bool:
        return any(_like(term, c) for c in candidates)

    if any_terms and not any(hit(t) for t in any_terms):
        return False
    if not all(hit(t) for t in all_terms):
        return False
    return not any(hit(t) for t in not_terms)


def _bool_set(value: Any, *, absent: set[bool] | None) -> set[bool] | None:
    """Allowed values of a tinyint flag; None means no condition."""
    if value is None or value is False:
        return absent
    if isinstance(value, list):
        allowed: set[bool] = set()
        for element in value:
            allowed |= _bool_set(element, absent=set()) or set()
        return allowed
    if value in (True, 1, "1", "true"):
        return {True}
    if value in (0, "0", "exclude"):
        return {False}
    return set()


def _resolve_time(value: Any, now: int) -> int:
    """MISP's resolveTimeDelta: epoch, ``Nd``/``Nh``/``Nm``/``Ns`` or a date."""
    if isinstance(value, int | float):
        return int(value)
    text = str(value).strip()
    if re.fullmatch(r"-?\d+(\.\d+)?", text):
        return int(float(text))
    delta = re.fullmatch(r"(\d+)([dhms])", text, flags=re.IGNORECASE)
    if delta:
        return now - int(delta.group(1)) * TIME_UNITS_S[delta.group(2).lower()]
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return now + 1
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp())


def _time_bounds(value: Any, now: int) -> tuple[int | None, int | None] | None:
    """(lower, upper) inclusive bounds of a timestamp filter, None for none."""
    if not isinstance(value, list):
        lower = _resolve_time(value, now)
        return None if lower == 0 else (lower, None)
    if len(value) != 2:
        raise HttpError(500, "An Internal Error Has Occurred.")
    low, high = sorted(_resolve_time(v, now) for v in value)
    return (None if low == 0 else low, high)


def _within(bounds: tuple[int | None, int | None], stamp: int) -> bool:
    low, high = bounds
    return (low is None or stamp >= low) and (high is None or stamp <= high)


def _order_keys(spec: Any) -> list[tuple[str, bool]] | None:
    """[(field, descending)] for a valid ``order``; None when MISP ignores it."""
    clauses = spec if isinstance(spec, list) else [spec]
    keys = []
    for clause in clauses:
        parts = str(clause).split()
        if not parts or len(parts) > 2:
            return None
        field = parts[0] if "." in parts[0] else f"Attribute.{parts[0]}"
        direction = parts[1].lower() if len(parts) == 2 else "asc"
        if field not in ORDER_FIELDS or direction not in ("asc", "desc"):
            return None
        keys.append((field, direction == "desc"))
    return keys


def _int_param(value: Any) -> int | None:
    try:
        number = int(value)
    except (TypeError, ValueError):
        return None
    return number if number > 0 else None


def _page_window(params: dict[str, Any]) -> tuple[int, int | None]:
    """(offset, limit): page without limit is ignored, as MISP does."""
    limit = _int_param(params.get("limit"))
    if limit is None:
        return 0, None
    page = _int_param(params.get("page")) or 1
    return limit * (page - 1), limit


def _result_count(limit: int | None, fetched: int) -> int:
    """X-Result-Count as MISP computes it: a loop counter, not a total."""
    if limit is None:
        return fetched
    if fetched == limit:
        return limit + 1
    return fetched or 1


def _frame(records: Iterable[bytes]) -> bytes:
    return b'{"response": {"Attribute": [' + b",".join(records) + b"]}}\n"


def _shuffle_seed(seed: int, request_number: int) -> int:
    return seed * 1_000_003 + request_number


# ---------------------------------------------------------------- in-memory store


class _Store:
    """Events, attributes and tags, shaped after MISP's tables."""

    def __init__(self) -> None:
        self.events: dict[int, dict[str, Any]] = {}
        self.attributes: list[dict[str, Any]] = []
        self.tags: dict[str, dict[str, Any]] = {}
        self.next_ids = {"event": 1, "attribute": 1, "object": 1, "tag": 1}

    def take_id(self, table: str, wanted: Any = None) -> int:
        number = int(wanted) if wanted not in (None, "") else self.next_ids[table]
        self.next_ids[table] = max(self.next_ids[table], number + 1)
        return number

    def tag(self, source: dict[str, Any] | str) -> dict[str, Any]:
        """The canonical tag for a name, created on first use."""
        source = {"name": source} if isinstance(source, str) else source
        name = source["name"]
        known = self.tags.get(name.casefold())
        if known is not None:
            return known
        tag = {
            "id": str(self.take_id("tag", source.get("id"))),
            "name": name,
            "colour": source.get("colour", "#ffffff"),
            "numerical_value": source.get("numerical_value"),
            "is_galaxy": name.startswith("misp-galaxy:"),
            "local": bool(source.get("local", False)),
        }
        self.tags[name.casefold()] = tag
        return tag

    def tag_ids(self, term: str) -> set[str]:
        if term.isdigit():
            return {term}
        return {t["id"] for t in self.tags.values() if _like(term, t["name"])}

    def attribute(self, uuid: str) -> dict[str, Any]:
        for attr in self.attributes:
            if attr["uuid"] == uuid:
                return attr
        raise KeyError(f"emulator: no attribute with uuid {uuid}")


def _event_record(store: _Store, source: dict[str, Any], now: int) -> dict[str, Any]:
    stamp = int(source.get("timestamp") or now)
    orgc = source.get("Orgc") or {}
    orgc_id = str(source.get("orgc_id") or orgc.get("id") or "1")
    org_id = source.get("org_id") or (source.get("Org") or {}).get("id") or orgc_id
    day = source.get("date") or datetime.fromtimestamp(stamp, UTC).date().isoformat()
    return {
        "id": store.take_id("event", source.get("id")),
        "uuid": source.get("uuid") or _fake_uuid(store.next_ids["event"], 0xE),
        "info": source.get("info", ""),
        "threat_level_id": str(source.get("threat_level_id", "4")),
        "published": _truthy_flag(source.get("published", False)),
        "publish_timestamp": int(source.get("publish_timestamp") or 0),
        "timestamp": stamp,
        "date": day,
        "analysis": str(source.get("analysis", "0")),
        "distribution": str(source.get("distribution", "3")),
        "sharing_group_id": str(source.get("sharing_group_id", "0")),
        "org_id": str(org_id),
        "orgc_id": orgc_id,
        "Orgc": {
            "id": orgc_id,
            "name": orgc.get("name", "ORGNAME"),
            "uuid": orgc.get("uuid", ""),
        },
        "Tag": [store.tag(t) for t in source.get("Tag", [])],
    }


def _attribute_record(
    store: _Store, source: dict[str, Any], event: dict[str, Any], obj: dict | None
) -> dict[str, Any]:
    number = store.take_id("attribute", source.get("id"))
    return {
        "id": number,
        "event_id": event["id"],
        "object_id": obj["id"] if obj else 0,
        "object_relation": source.get("object_relation") if obj else None,
        "category": source.get("category", "Other"),
        "type": source["type"],
        "to_ids": _truthy_flag(source.get("to_ids", False)),
        "uuid": source.get("uuid") or _fake_uuid(number, 0xA),
        "timestamp": int(source.get("timestamp") or event["timestamp"]),
        "distribution": str(source.get("distribution", "5")),
        "sharing_group_id": str(source.get("sharing_group_id", "0")),
        "comment": source.get("comment") or "",
        "deleted": _truthy_flag(source.get("deleted", False)),
        "disable_correlation": _truthy_flag(source.get("disable_correlation", False)),
        "first_seen": source.get("first_seen"),
        "last_seen": source.get("last_seen"),
        "value": source["value"],
        "Object": obj,
        "Tag": [store.tag(t) for t in source.get("Tag", [])],
        # Fields sent as given, over the rendered ones: a MISP gone wrong.
        "raw": dict(source.get("raw") or {}),
    }


def _truthy_flag(value: Any) -> bool:
    return value in (True, 1, "1", "true", "True")


def _fake_uuid(number: int, kind: int) -> str:
    return f"{number:08x}-0000-4000-8000-{kind:012x}"


def _object_record(store: _Store, source: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": store.take_id("object", source.get("id")),
        "distribution": str(source.get("distribution", "5")),
        "sharing_group_id": str(source.get("sharing_group_id", "0")),
    }


# ---------------------------------------------------------------- query and render


class _Query:
    """One restSearch over the store: filters, order, page, render."""

    def __init__(self, store: _Store, params: dict[str, Any], now: int) -> None:
        self.store = store
        self.params = params
        self.now = now
        self.checks = self._build_checks()

    def select(self) -> list[dict[str, Any]]:
        return [a for a in self.store.attributes if self._accepts(a)]

    def _accepts(self, attr: dict[str, Any]) -> bool:
        event = self.store.events[attr["event_id"]]
        return all(check(attr, event) for check in self.checks)

    def _build_checks(self) -> list[Callable[[dict, dict], bool]]:
        params = self.params
        checks = [self._deleted_check(params.get("deleted"))]
        checks += self._term_checks()
        checks += self._flag_checks()
        checks += self._time_checks()
        if params.get("tags") not in (None, [], ""):
            checks.append(self._tag_check(params["tags"]))
        return checks

    def _deleted_check(self, value: Any) -> Callable[[dict, dict], bool]:
        if value == "only":
            # MISP 2.5.1 turns the legacy value into an impossible condition.
            return lambda attr, event: False
        allowed = _bool_set(value, absent={False})
        return lambda attr, event: attr["deleted"] in allowed

    def _term_checks(self) -> list[Callable[[dict, dict], bool]]:
        getters = {
            "type": _type_candidates,
            "category": lambda a, e: [a["category"]],
            "value": _value_candidates,
            "uuid": lambda a, e: [a["uuid"], e["uuid"]],
            "eventid": lambda a, e: [str(e["id"]), e["uuid"]],
            "object_relation": lambda a, e: [a["object_relation"]],
            "eventinfo": lambda a, e: [e["info"]],
            "org": lambda a, e: [e["orgc_id"], e["Orgc"]["name"], e["Orgc"]["uuid"]],
            "threat_level_id": lambda a, e: [e["threat_level_id"]],
        }
        checks = []
        for name, getter in getters.items():
            spec = self.params.get(name)
            if spec in (None, [], ""):
                continue
            checks.append(_term_check(spec, getter))
        return checks

    def _flag_checks(self) -> list[Callable[[dict, dict], bool]]:
        checks = []
        to_ids = _bool_set(self.params.get("to_ids"), absent=None)
        if to_ids is not None:
            checks.append(lambda a, e: a["to_ids"] in to_ids)
        published = _bool_set(self.params.get("published"), absent=None)
        if published is not None:
            checks.append(lambda a, e: e["published"] in published)
        return checks

    def _time_checks(self) -> list[Callable[[dict, dict], bool]]:
        columns = {
            "timestamp": lambda a, e: a["timestamp"],
            "attribute_timestamp": lambda a, e: a["timestamp"],
            "event_timestamp": lambda a, e: e["timestamp"],
            "publish_timestamp": lambda a, e: e["publish_timestamp"],
            "last": lambda a, e: e["publish_timestamp"],
        }
        checks = []
        for name, column in columns.items():
            if self.params.get(name) in (None, ""):
                continue
            bounds = _time_bounds(self.params[name], self.now)
            if bounds is not None:
                checks.append(_time_check(bounds, column))
        checks += self._date_checks()
        return checks

    def _date_checks(self) -> list[Callable[[dict, dict], bool]]:
        checks = []
        low, high = self.params.get("from"), self.params.get("to")
        if low not in (None, ""):
            day = _as_day(low, self.now)
            checks.append(lambda a, e: e["date"] >= day)
        if high not in (None, ""):
            last_day = _as_day(high, self.now)
            checks.append(lambda a, e: e["date"] <= last_day)
        return checks

    def _tag_check(self, spec: Any) -> Callable[[dict, dict], bool]:
        any_terms, all_terms, not_terms = _terms(spec)
        any_ids = set().union(*(self.store.tag_ids(t) for t in any_terms))
        all_ids = [self.store.tag_ids(t) for t in all_terms]
        not_ids = set().union(*(self.store.tag_ids(t) for t in not_terms))
        if (any_terms and not any_ids) or any(not ids for ids in all_ids):
            return lambda attr, event: False

        def check(attr: dict, event: dict) -> bool:
            carried = {t["id"] for t in attr["Tag"]} | {t["id"] for t in event["Tag"]}
            if any_ids and not carried & any_ids:
                return False
            if any(not carried & ids for ids in all_ids):
                return False
            return not carried & not_ids

        return check

    def order(self, rows: list[dict], seed: int) -> list[dict]:
        keys = None
        if self.params.get("order") not in (None, "", []):
            keys = _order_keys(self.params["order"])
        if keys is None:
            # MISP sends no ORDER BY: any order is legal, so make it unhelpful.
            random.Random(seed).shuffle(rows)
            return rows
        for field, descending in reversed(keys):
            rows.sort(key=self._sort_key(field), reverse=descending)
        return rows

    def _sort_key(self, field: str) -> Callable[[dict], Any]:
        if field == "Event.publish_timestamp":
            return lambda a: self.store.events[a["event_id"]]["publish_timestamp"]
        column = field.split(".", 1)[1]
        if column in ("id", "event_id", "object_id", "timestamp", "distribution"):
            return lambda a: int(a[column])
        return lambda a: (a[column] or "").casefold()

    def render(self, attr: dict[str, Any]) -> bytes:
        event = self.store.events[attr["event_id"]]
        record = _attribute_fields(attr)
        if _is_truthy(self.params.get("includeEventUuid")) or _is_truthy(
            self.params.get("includeAttributeUuid")
        ):
            record["event_uuid"] = event["uuid"]
        record["Event"] = self._event_block(event)
        if attr["Object"] is not None:
            record["Object"] = {**attr["Object"], "id": str(attr["Object"]["id"])}
        tags = [_attribute_tag(t) for t in attr["Tag"]]
        if _is_truthy(self.params.get("includeEventTags")):
            tags += [_inherited_tag(t) for t in event["Tag"]]
        if tags:
            record["Tag"] = tags
        record.update(attr.get("raw") or {})
        return orjson.dumps(record)

    def _event_block(self, event: dict[str, Any]) -> dict[str, Any]:
        if _is_truthy(self.params.get("includeContext")):
            return _context_event(event)
        return {
            "org_id": event["org_id"],
            "distribution": event["distribution"],
            "publish_timestamp": str(event["publish_timestamp"]),
            "id": str(event["id"]),
            "info": event["info"],
            "orgc_id": event["orgc_id"],
            "uuid": event["uuid"],
        }


def _term_check(spec: Any, getter: Callable) -> Callable[[dict, dict], bool]:
    return lambda attr, event: _match_terms(spec, getter(attr, event))


def _time_check(bounds, column: Callable) -> Callable[[dict, dict], bool]:
    return lambda attr, event: _within(bounds, column(attr, event))


def _type_candidates(attr: dict, event: dict) -> list[str]:
    # MISP widens email-src/email-dst filters to email; matching the reverse way
    # (an ``email`` row for an email-src term) gives the same result set.
    if attr["type"] == "email":
        return ["email", "email-src", "email-dst"]
    return [attr["type"]]


def _value_candidates(attr: dict, event: dict) -> list[str]:
    if "|" in attr["type"] and "|" in attr["value"]:
        return [attr["value"], *attr["value"].split("|", 1)]
    return [attr["value"]]


def _as_day(value: Any, now: int) -> str:
    text = str(value)
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
        return text
    return datetime.fromtimestamp(_resolve_time(value, now), UTC).date().isoformat()


def _attribute_fields(attr: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": str(attr["id"]),
        "event_id": str(attr["event_id"]),
        "object_id": str(attr["object_id"]),
        "object_relation": attr["object_relation"],
        "category": attr["category"],
        "type": attr["type"],
        "to_ids": attr["to_ids"],
        "uuid": attr["uuid"],
        "timestamp": str(attr["timestamp"]),
        "distribution": attr["distribution"],
        "sharing_group_id": attr["sharing_group_id"],
        "comment": attr["comment"],
        "deleted": attr["deleted"],
        "disable_correlation": attr["disable_correlation"],
        "first_seen": attr["first_seen"],
        "last_seen": attr["last_seen"],
        "value": attr["value"],
    }


def _attribute_tag(tag: dict[str, Any]) -> dict[str, Any]:
    return dict(tag)


def _inherited_tag(tag: dict[str, Any]) -> dict[str, Any]:
    fields = ("id", "name", "colour", "numerical_value")
    return {**{k: tag[k] for k in fields}, "inherited": 1}


def _context_event(event: dict[str, Any]) -> dict[str, Any]:
    tags = [
        {k: t[k] for k in ("local", "id", "name", "colour", "numerical_value")}
        for t in event["Tag"]
    ]
    return {
        "id": str(event["id"]),
        "orgc_id": event["orgc_id"],
        "org_id": event["org_id"],
        "date": event["date"],
        "threat_level_id": event["threat_level_id"],
        "info": event["info"],
        "published": event["published"],
        "uuid": event["uuid"],
        "analysis": event["analysis"],
        "timestamp": str(event["timestamp"]),
        "distribution": event["distribution"],
        "publish_timestamp": str(event["publish_timestamp"]),
        "sharing_group_id": event["sharing_group_id"],
        "extends_uuid": "",
        "Tag": tags,
        "Orgc": dict(event["Orgc"]),
    }


# ---------------------------------------------------------------- synthetic data

SYNTHETIC_TYPES = ("ip-dst", "domain", "url", "md5", "sha256")
SYNTHETIC_CATEGORY = {
    "ip-dst": "Network activity",
    "domain": "Network activity",
    "url": "Network activity",
    "md5": "Payload delivery",
    "sha256": "Payload delivery",
}
SYNTHETIC_ROW = (
    '{"id":"%d","event_id":"%d","object_id":"0","object_relation":null,'
    '"category":"%s","type":"%s","to_ids":true,"uuid":"%08x-5e7d-4000-8000-%012x",'
    '"timestamp":"%d","distribution":"5","sharing_group_id":"0","comment":"",'
    '"deleted":false,"disable_correlation":false,"first_seen":null,"last_seen":null,'
    '"value":"%s",%s}'
)
SYNTHETIC_EVENT_UUID = "%08x-5e7e-4000-8000-%012x"
SYNTHETIC_EVENT = (
    '{"org_id":"1","distribution":"3","publish_timestamp":"%d","id":"%d",'
    '"info":"Synthetic event %d","orgc_id":"1","uuid":"%s"}'
)
SYNTHETIC_CONTEXT_EVENT = (
    '{"id":"%d","orgc_id":"1","org_id":"1","date":"%s","threat_level_id":"3",'
    '"info":"Synthetic event %d","published":true,"uuid":"%s","analysis":"2",'
    '"timestamp":"%d","distribution":"3","publish_timestamp":"%d",'
    '"sharing_group_id":"0","extends_uuid":"","Tag":[{"local":false,"id":"1",'
    '"name":"tlp:white","colour":"#ffffff","numerical_value":null}],'
    '"Orgc":{"id":"1","name":"SYNTHETIC","uuid":"00000001-5e7f-4000-8000-000000000000"}}'
)
SYNTHETIC_EVENT_TAGS = (
    ',"Tag":[{"id":"1","name":"tlp:white","colour":"#ffffff",'
    '"numerical_value":null,"inherited":1}]'
)
EVENT_PARAMS = frozenset("returnFormat eventid metadata limit page".split())
SYNTHETIC_PARAMS = frozenset(
    "returnFormat limit page order timestamp attribute_timestamp to_ids deleted "
    "published type tags enforceWarninglist includeEventTags includeContext "
    "includeEventUuid includeAttributeUuid".split()
)
ROWS_PER_CHUNK = 2000


class _Synthetic:
    """Attributes computed from their index: O(page) memory whatever the count.

    Row i (id i+1) has type SYNTHETIC_TYPES[i % 5], timestamp
    ``base_timestamp + i // rows_per_second`` (so timestamp filters map to an id
    range) and belongs to event ``i // per_event + 1``, published and tagged
    ``tlp:white``. Every 1000th row is a /24. All rows are to_ids, none deleted.
    """

    def __init__(
        self, count: int, *, seed: int, base_timestamp: int, per_event: int
    ) -> None:
        self.count = count
        self.seed = seed
        self.base_timestamp = base_timestamp
        self.per_event = per_event
        self.rows_per_second = 10

    def value(self, index: int) -> str:
        kind = index % 5
        if kind == 0:
            return _synthetic_address(index)
        if kind == 1:
            return f"d{index:x}.ioc-synth.net"
        if kind == 2:
            return f"http://u{index:x}.ioc-synth.net/p/{index}"
        seed_bytes = b"%d:%d" % (self.seed, index)
        if kind == 3:
            return hashlib.md5(seed_bytes).hexdigest()
        return hashlib.sha256(seed_bytes).hexdigest()

    def timestamp(self, index: int) -> int:
        return self.base_timestamp + index // self.rows_per_second

    def render(self, index: int, event_tail: str) -> str:
        kind = SYNTHETIC_TYPES[index % 5]
        return SYNTHETIC_ROW % (
            index + 1, index // self.per_event + 1, SYNTHETIC_CATEGORY[kind], kind,
            index, self.seed, self.timestamp(index), self.value(index), event_tail,
        )  # fmt: skip

    def event_tail(self, event_id: int, params: dict[str, Any]) -> str:
        """Everything after ``value`` for rows of one event, per the options."""
        last_stamp = self.timestamp(min(event_id * self.per_event, self.count) - 1)
        uuid = SYNTHETIC_EVENT_UUID % (event_id, self.seed)
        if _is_truthy(params.get("includeContext")):
            day = datetime.fromtimestamp(last_stamp, UTC).date().isoformat()
            block = SYNTHETIC_CONTEXT_EVENT % (
                event_id,
                day,
                event_id,
                uuid,
                last_stamp,
                last_stamp,
            )
        else:
            block = SYNTHETIC_EVENT % (last_stamp, event_id, event_id, uuid)
        tail = '"Event":' + block
        if _is_truthy(params.get("includeEventUuid")) or _is_truthy(
            params.get("includeAttributeUuid")
        ):
            tail = f'"event_uuid":"{uuid}",' + tail
        if _is_truthy(params.get("includeEventTags")):
            tail += SYNTHETIC_EVENT_TAGS
        return tail

    def event_count(self) -> int:
        return -(-self.count // self.per_event)

    def event_metadata(self, event_id: int) -> dict[str, Any]:
        """Event ``event_id`` as ``/events/restSearch`` with ``metadata`` gives it."""
        last_index = min(event_id * self.per_event, self.count) - 1
        last_stamp = self.timestamp(last_index)
        day = datetime.fromtimestamp(last_stamp, UTC).date().isoformat()
        record = orjson.loads(
            SYNTHETIC_CONTEXT_EVENT
            % (
                event_id,
                day,
                event_id,
                SYNTHETIC_EVENT_UUID % (event_id, self.seed),
                last_stamp,
                last_stamp,
            )
        )
        record["attribute_count"] = str(
            last_index - (event_id - 1) * self.per_event + 1
        )
        record["Tag"] = [_event_tag(t | {"is_galaxy": False}) for t in record["Tag"]]
        return record

    def events(self, wanted: Any) -> list[dict[str, Any]]:
        """Events whose id or uuid is among ``wanted`` (all when empty), by id."""
        numbers = range(1, self.event_count() + 1)
        if wanted not in (None, "", []):
            any_terms, _, _ = _terms(wanted)
            picked = {int(t) for t in any_terms if t.isdigit()}
            numbers = sorted(n for n in picked if 1 <= n <= self.event_count())
        return [self.event_metadata(n) for n in numbers]

    def index_range(self, params: dict[str, Any], now: int) -> range:
        """Indexes that pass the filters, in id order."""
        if not self._passes_flags(params):
            return range(0)
        low, high = 0, self.count - 1
        for name in ("timestamp", "attribute_timestamp"):
            if params.get(name) in (None, ""):
                continue
            bounds = _time_bounds(params[name], now)
            if bounds is None:
                continue
            if bounds[0] is not None:
                low = max(low, (bounds[0] - self.base_timestamp) * self.rows_per_second)
            if bounds[1] is not None:
                last = (bounds[1] - self.base_timestamp + 1) * self.rows_per_second - 1
                high = min(high, last)
        return range(low, high + 1) if low <= high else range(0)

    def _passes_flags(self, params: dict[str, Any]) -> bool:
        deleted = _bool_set(params.get("deleted"), absent={False})
        to_ids = _bool_set(params.get("to_ids"), absent={True})
        published = _bool_set(params.get("published"), absent={True})
        tags = params.get("tags")
        tagged = tags in (None, "", []) or _match_terms(tags, ["tlp:white"])
        return False in deleted and True in to_ids and True in published and tagged

    def check_params(self, params: dict[str, Any]) -> None:
        for name, value in params.items():
            if name not in SYNTHETIC_PARAMS and _is_truthy(value):
                raise HttpError(501, f"emulator: {name} is not emulated in scale mode")
        if params.get("type") not in (None, "", []):
            wanted = {t for t in SYNTHETIC_TYPES if _match_terms(params["type"], [t])}
            if wanted != set(SYNTHETIC_TYPES):
                raise HttpError(
                    501, "emulator: type filters are not emulated in scale mode"
                )

    def rows(self, params: dict[str, Any], now: int, shuffle_seed: int) -> tuple:
        """(iterator of row indexes for this page, row count)."""
        self.check_params(params)
        selected = self.index_range(params, now)
        offset, limit = _page_window(params)
        window = range(offset, min(len(selected), offset + (limit or len(selected))))
        pick = self._picker(params.get("order"), selected, shuffle_seed)
        return (pick(position) for position in window), max(0, len(window))

    def _picker(self, order: Any, selected: range, shuffle_seed: int) -> Callable:
        keys = _order_keys(order) if order not in (None, "", []) else None
        if keys == [("Attribute.id", False)]:
            return lambda position: selected[position]
        if keys == [("Attribute.id", True)]:
            return lambda position: selected[len(selected) - 1 - position]
        if keys is not None:
            raise HttpError(501, "emulator: only Attribute.id order in scale mode")
        return _affine_shuffle(selected, shuffle_seed)

    def chunks(self, indexes: Iterator[int], params: dict) -> Iterator[bytes]:
        """The framed body, a few thousand records at a time."""
        yield b'{"response": {"Attribute": ['
        cached_event, cached_tail, first = -1, "", True
        batch: list[str] = []
        for index in indexes:
            event_id = index // self.per_event + 1
            if event_id != cached_event:
                cached_event = event_id
                cached_tail = self.event_tail(event_id, params)
            batch.append(self.render(index, cached_tail))
            if len(batch) >= ROWS_PER_CHUNK:
                yield ("" if first else ",").encode() + ",".join(batch).encode()
                first, batch = False, []
        if batch:
            yield ("" if first else ",").encode() + ",".join(batch).encode()
        yield b"]}}\n"


def _synthetic_address(index: int) -> str:
    if index % 1000 == 0:
        return f"12.{(index >> 16) & 255}.{(index >> 8) & 255}.0/24"
    number = 0x0B000000 + index
    return f"{number >> 24}.{(number >> 16) & 255}.{(number >> 8) & 255}.{number & 255}"


def _affine_shuffle(selected: range, seed: int) -> Callable[[int], int]:
    """A permutation of positions without materialising it: p -> (a*p+b) mod n."""
    size = max(1, len(selected))
    step = 1_000_003 + seed % 997
    while math.gcd(step, size) != 1:
        step += 1
    shift = seed % size
    return lambda position: selected[(step * position + shift) % size]


# ---------------------------------------------------------------- HTTP side

DEFAULT_API_KEY = "EmulatorTestKey0123456789abcdefghijKLMNO"


@dataclass(frozen=True)
class _Response:
    status: int
    headers: dict[str, str]
    body: bytes = b""
    chunks: Iterator[bytes] | None = None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Small writes (headers, framing) must not wait for a delayed ACK.
    disable_nagle_algorithm = True

    def version_string(self) -> str:
        return "Apache"

    def do_POST(self) -> None:
        self.server.emulator.serve(self, "POST")

    def do_GET(self) -> None:
        self.server.emulator.serve(self, "GET")

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: tests read ``MispEmulator.requests`` instead."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients that vanish (timeouts, failed TLS handshakes) are expected."""


def _error_response(err: HttpError, path: str, user_agent: str) -> _Response:
    body = {"name": err.message, "message": err.message, "url": path}
    # MISP pretty-prints this one error unless the caller looks like PyMISP.
    pretty = err.status == 400 and not user_agent.startswith(("PyMISP", "MISP"))
    if pretty:
        text = json.dumps(body, indent=4, ensure_ascii=False).encode()
    else:
        text = orjson.dumps(body)
    headers = {"Content-Type": "application/json; charset=UTF-8"}
    if err.retry_after is not None:
        headers["Retry-After"] = str(err.retry_after)
    return _Response(err.status, headers, text)


def _read_body(handler: BaseHTTPRequestHandler) -> bytes:
    length = int(handler.headers.get("Content-Length") or 0)
    return handler.rfile.read(length) if length > 0 else b""


def _parse_body(raw: bytes) -> dict[str, Any]:
    if not raw.strip():
        raise HttpError(400, MSG_EMPTY)
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError as err:
        raise HttpError(405, MSG_JSON) from err
    if isinstance(parsed, dict) and isinstance(parsed.get("request"), dict):
        parsed = parsed["request"]
    if not isinstance(parsed, dict) or not parsed:
        raise HttpError(400, MSG_EMPTY)
    return parsed


def _fault_error(fault: Fault) -> HttpError:
    if fault.name == "status401":
        return HttpError(401, "Unauthorized")
    if fault.name == "status429":
        retry_after = fault.options.get("retry_after", 1)
        return HttpError(429, "Too Many Requests", retry_after=retry_after)
    return HttpError(500, fault.options.get("message", MSG_INTERNAL))


def _send(handler: BaseHTTPRequestHandler, response: _Response, fault: Fault | None):
    body = response.body
    if fault is not None and response.chunks is not None:
        body = b"".join(response.chunks)
        response = _Response(response.status, response.headers, body)
    if fault is not None and fault.name == "reset_mid_body":
        return _send_then_reset(handler, response)
    if fault is not None and fault.name == "truncated_json":
        cut = body[: max(1, len(body) // 2)]
        response = _Response(response.status, response.headers, cut)
        handler.close_connection = True
    if response.chunks is not None:
        return _send_chunked(handler, response)
    _send_headers(handler, response, len(response.body))
    handler.wfile.write(response.body)


def _send_headers(handler, response: _Response, length: int | None) -> None:
    handler.send_response(response.status)
    for name, value in response.headers.items():
        handler.send_header(name, value)
    if length is None:
        handler.send_header("Transfer-Encoding", "chunked")
    else:
        handler.send_header("Content-Length", str(length))
    if handler.close_connection:
        handler.send_header("Connection", "close")
    handler.end_headers()


def _send_chunked(handler, response: _Response) -> None:
    _send_headers(handler, response, None)
    for chunk in response.chunks:
        handler.wfile.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
    handler.wfile.write(b"0\r\n\r\n")


def _send_then_reset(handler, response: _Response) -> None:
    """Announce the whole body, send part of it, then abort with a TCP RST."""
    _send_headers(handler, response, len(response.body))
    handler.wfile.write(response.body[: max(1, len(response.body) // 3)])
    handler.wfile.flush()
    linger = struct.pack("ii", 1, 0)
    handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
    handler.close_connection = True
    handler.connection.close()


class MispEmulator:
    """A MISP ``/attributes/restSearch`` endpoint on 127.0.0.1 with test controls.

    ``with MispEmulator(api_key=KEY) as misp:`` starts it; ``misp.url`` is the base
    URL, ``misp.ca_path`` the CA file when ``tls=True``, ``misp.requests`` what the
    clients sent (the key only as ``auth_present``).
    """

    def __init__(
        self,
        *,
        api_key: str = DEFAULT_API_KEY,
        tls: bool = False,
        seed: int = 1,
        port: int = 0,
        synthetic: _Synthetic | None = None,
    ) -> None:
        self.api_key = api_key
        self.tls = tls
        self.seed = seed
        self.ca_path: Path | None = None
        self._port = port
        self._store = _Store()
        self._synthetic = synthetic
        self._lock = threading.RLock()
        self._faults: list[Fault] = []
        self._requests: list[RequestRecord] = []
        self._warninglist: set[str] = set()
        self._withheld_events: set[int] = set()
        self._clock: float | None = None
        self._query_count = 0
        self._server: _Server | None = None
        self._tempdir: tempfile.TemporaryDirectory | None = None

    @classmethod
    def synthetic(
        cls,
        count: int = 1_000_000,
        *,
        base_timestamp: int = 1_700_000_000,
        per_event: int = 1000,
        **options: Any,
    ) -> MispEmulator:
        """An emulator serving ``count`` generated attributes (see _Synthetic)."""
        seed = options.get("seed", 1)
        source = _Synthetic(
            count, seed=seed, base_timestamp=base_timestamp, per_event=per_event
        )
        return cls(synthetic=source, **options)

    # -- lifecycle

    def __enter__(self) -> MispEmulator:
        self.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    def start(self) -> None:
        self._server = _Server(("127.0.0.1", self._port), _Handler)
        self._server.emulator = self
        if self.tls:
            self._wrap_tls(self._server)
        thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._tempdir is not None:
            self._tempdir.cleanup()
            self._tempdir = None

    def _wrap_tls(self, server: _Server) -> None:
        import trustme

        authority = trustme.CA()
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        authority.issue_cert("127.0.0.1", "localhost").configure_cert(context)
        self._tempdir = tempfile.TemporaryDirectory(prefix="misp-emulator-")
        self.ca_path = Path(self._tempdir.name) / "ca.pem"
        authority.cert_pem.write_to_path(str(self.ca_path))
        server.socket = context.wrap_socket(
            server.socket, server_side=True, do_handshake_on_connect=False
        )

    @property
    def url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self._server.server_address[1]}"

    @property
    def requests(self) -> list[RequestRecord]:
        with self._lock:
            return list(self._requests)

    # -- data

    def now(self) -> int:
        return _now_int(self._clock)

    def set_clock(self, epoch_s: float | None) -> None:
        """Fix "now" for relative filters and mutations; None follows the wall clock."""
        self._clock = epoch_s

    def load_event_file(self, path: str | Path) -> int:
        """Load a MISP event JSON (wrapped in ``Event`` or not); returns its id."""
        document = orjson.loads(Path(path).read_bytes())
        return self.load_event(document.get("Event", document))

    def load_event(self, source: dict[str, Any]) -> int:
        with self._lock:
            event = _event_record(self._store, source, self.now())
            self._store.events[event["id"]] = event
            for attr in source.get("Attribute", []):
                self._add_attribute(attr, event, None)
            for obj_source in source.get("Object", []):
                obj = _object_record(self._store, obj_source)
                for attr in obj_source.get("Attribute", []):
                    self._add_attribute(attr, event, obj)
            return event["id"]

    def add_event(self, *, info: str = "Emulated event", **fields: Any) -> int:
        """Create an event from MISP event fields (``Tag`` as a list of names)."""
        tags = [{"name": t} if isinstance(t, str) else t for t in fields.pop("Tag", [])]
        return self.load_event({"info": info, "Tag": tags, **fields})

    def load_attributes(
        self, sources: Iterable[dict[str, Any]], *, event: int | None = None
    ) -> list[str]:
        """Add attributes to ``event`` (default: each row's own ``event_id``)."""
        uuids = []
        with self._lock:
            for source in sources:
                event_id = int(event or source.get("event_id") or 0)
                if event_id not in self._store.events:
                    event_id = self.add_event(id=event_id or None)
                target = self._store.events[event_id]
                uuids.append(self._add_attribute(source, target, None)["uuid"])
        return uuids

    def _add_attribute(self, source: dict, event: dict, obj: dict | None) -> dict:
        attr = _attribute_record(self._store, source, event, obj)
        self._store.attributes.append(attr)
        return attr

    def attribute(self, uuid: str) -> dict[str, Any]:
        """A copy of the stored attribute (native types, not rendered)."""
        with self._lock:
            return dict(self._store.attribute(uuid))

    # -- mutations, with MISP's side effects on timestamps

    def soft_delete_attribute(self, uuid: str) -> None:
        self.edit_attribute(uuid, deleted=True)

    def edit_attribute(self, uuid: str, **fields: Any) -> None:
        with self._lock:
            attr = self._store.attribute(uuid)
            attr.update(fields)
            attr["timestamp"] = int(fields.get("timestamp", self.now()))
            self._unpublish(attr["event_id"])

    def hard_delete_event(self, event_id: int) -> None:
        with self._lock:
            self._store.events.pop(int(event_id))
            kept = [a for a in self._store.attributes if a["event_id"] != int(event_id)]
            self._store.attributes = kept

    def hard_delete_attribute(self, uuid: str) -> None:
        with self._lock:
            self._store.attributes.remove(self._store.attribute(uuid))

    def add_tag(self, name: str, *, attribute_uuid: str = "", event_id: int = 0):
        with self._lock:
            holder = self._tag_holder(attribute_uuid, event_id)
            holder["Tag"].append(self._store.tag(name))

    def remove_tag(self, name: str, *, attribute_uuid: str = "", event_id: int = 0):
        """Untag an attribute (its timestamp moves) or an event (it does not)."""
        with self._lock:
            holder = self._tag_holder(attribute_uuid, event_id)
            kept = [t for t in holder["Tag"] if t["name"].casefold() != name.casefold()]
            holder["Tag"] = kept

    def _tag_holder(self, attribute_uuid: str, event_id: int) -> dict[str, Any]:
        if attribute_uuid:
            attr = self._store.attribute(attribute_uuid)
            attr["timestamp"] = self.now()
            self._unpublish(attr["event_id"])
            return attr
        event = self._store.events[int(event_id)]
        event["timestamp"] = self.now()
        return event

    def publish_event(self, event_id: int) -> None:
        with self._lock:
            event = self._store.events[int(event_id)]
            event["published"] = True
            event["publish_timestamp"] = self.now()

    def _unpublish(self, event_id: int) -> None:
        event = self._store.events[event_id]
        event["published"] = False
        event["timestamp"] = self.now()

    def withhold_event_metadata(self, event_id: int) -> None:
        """Leave the event out of ``/events/restSearch`` answers, as if it had been
        deleted between an attribute page and the metadata request."""
        with self._lock:
            self._withheld_events.add(int(event_id))

    def set_warninglist(self, values: Iterable[str]) -> None:
        """Values that ``enforceWarninglist`` drops (either half of a composite)."""
        with self._lock:
            self._warninglist = {v.casefold() for v in values}

    # -- faults and log

    def inject(self, fault: str, count: int = 1, **options: Any) -> None:
        """Queue ``count`` faults; each request consumes the next one.

        ``status429`` takes ``retry_after`` (seconds, or an HTTP date string),
        ``stall`` takes ``seconds`` (default 2.0), ``status500`` a ``message``.
        """
        if fault not in FAULTS:
            raise ValueError(
                f"emulator fault: unknown (got {fault!r}); expected {sorted(FAULTS)}"
            )
        with self._lock:
            self._faults += [Fault(fault, options)] * count

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    def _take_fault(self) -> Fault | None:
        with self._lock:
            return self._faults.pop(0) if self._faults else None

    def _record(self, handler, method: str, raw: bytes, fault: Fault | None) -> None:
        secret_names = ("authorization", "x-misp-auth")
        headers = {
            k: v for k, v in handler.headers.items() if k.lower() not in secret_names
        }
        present = any(handler.headers.get(name) for name in secret_names)
        try:
            body = orjson.loads(raw) if raw.strip() else None
        except orjson.JSONDecodeError:
            body = raw.decode("utf-8", "replace")
        record = RequestRecord(
            method, handler.path, headers, present, body, fault and fault.name
        )
        with self._lock:
            self._requests.append(record)

    # -- request handling

    def serve(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        raw = _read_body(handler)
        fault = self._take_fault()
        self._record(handler, method, raw, fault)
        if fault is not None and fault.name == "stall":
            time.sleep(fault.options.get("seconds", 2.0))
            fault = None
        response = self._response(handler, method, raw, fault)
        try:
            _send(handler, response, fault)
        except OSError:
            handler.close_connection = True

    def _response(self, handler, method: str, raw: bytes, fault: Fault | None):
        path = handler.path.split("?", 1)[0]
        try:
            if fault is not None and fault.name.startswith("status"):
                raise _fault_error(fault)
            if not self._authorised(handler.headers):
                raise HttpError(403, MSG_AUTH)
            return self._restsearch(method, path, handler.path, raw)
        except HttpError as err:
            user_agent = handler.headers.get("User-Agent", "")
            return _error_response(err, path, user_agent)

    def _authorised(self, headers: Any) -> bool:
        raw = headers.get("X-MISP-AUTH") or headers.get("Authorization") or ""
        if raw.startswith("Basic"):
            return False
        keys = [k.strip() for k in raw.split(",")]
        return any(KEY_PATTERN.match(k) and k == self.api_key for k in keys)

    def _restsearch(self, method: str, path: str, target: str, raw: bytes):
        if path not in RESTSEARCH_PATHS + EVENTS_PATHS:
            raise HttpError(404, "Not Found")
        if method == "GET":
            if "?" in target:
                raise HttpError(501, "emulator: URL parameters are not emulated")
            raise HttpError(400, MSG_GET)
        if path in EVENTS_PATHS:
            return self._event_search(_parse_body(raw))
        params = _split_params(_parse_body(raw))
        self._check_format(params.get("returnFormat") or "json")
        if self._synthetic is not None:
            return self._synthetic_page(params)
        self._check_implemented(params)
        return self._stored_page(params)

    def _check_format(self, name: Any) -> None:
        if name not in VALID_FORMATS:
            raise HttpError(404, MSG_FORMAT)
        if name not in ("json", "download"):
            raise HttpError(501, f"emulator: returnFormat {name} is not emulated")

    def _check_implemented(self, params: dict[str, Any]) -> None:
        for name, value in params.items():
            if name not in IMPLEMENTED_PARAMS and _is_truthy(value):
                # TODO: sightings, decay scores, galaxies and first_seen/last_seen
                # filters are not emulated; a client relying on them gets a 501.
                raise HttpError(501, f"emulator: {name} is not emulated")

    def _next_shuffle_seed(self) -> int:
        with self._lock:
            self._query_count += 1
            return _shuffle_seed(self.seed, self._query_count)

    def _stored_page(self, params: dict[str, Any]) -> _Response:
        shuffle_seed = self._next_shuffle_seed()
        with self._lock:
            query = _Query(self._store, params, self.now())
            rows = query.order(query.select(), shuffle_seed)
            offset, limit = _page_window(params)
            page = rows[offset : offset + limit] if limit else rows
            kept = self._apply_warninglist(params, page)
            body = _frame(query.render(attr) for attr in kept)
        skipped_count = len(page) - len(kept)
        return _Response(
            200, _ok_headers(_result_count(limit, len(page)), skipped_count), body
        )

    def _apply_warninglist(self, params: dict, page: list[dict]) -> list[dict]:
        if not _is_truthy(params.get("enforceWarninglist")) or not self._warninglist:
            return page
        return [a for a in page if not self._on_warninglist(a)]

    def _on_warninglist(self, attr: dict[str, Any]) -> bool:
        values = {attr["value"].casefold(), *attr["value"].casefold().split("|")}
        return bool(values & self._warninglist)

    def _synthetic_page(self, params: dict[str, Any]) -> _Response:
        _, limit = _page_window(params)
        indexes, row_count = self._synthetic.rows(
            params, self.now(), self._next_shuffle_seed()
        )
        headers = _ok_headers(_result_count(limit, row_count), 0)
        chunks = self._synthetic.chunks(indexes, params)
        return _Response(200, headers, chunks=chunks)

    def _event_search(self, raw_params: dict[str, Any]) -> _Response:
        params = {k: v for k, v in raw_params.items() if k in EVENT_PARAMS}
        if params.get("returnFormat", "json") != "json":
            raise HttpError(501, "emulator: only returnFormat json for events")
        if not _is_truthy(params.get("metadata")):
            raise HttpError(501, "emulator: events with attributes are not emulated")
        wanted = params.get("eventid")
        if self._synthetic is not None:
            events = self._synthetic.events(wanted)
        else:
            with self._lock:
                events = [
                    _metadata_event(e)
                    for e in self._store.events.values()
                    if e["id"] not in self._withheld_events
                    and (
                        wanted in (None, "", []) or _match_terms(wanted, _event_keys(e))
                    )
                ]
        offset, limit = _page_window(params)
        page = events[offset : offset + limit] if limit else events
        body = orjson.dumps({"response": [{"Event": e} for e in page]})
        headers = _ok_headers(len(events), 0)
        headers["Content-Disposition"] = 'attachment; filename="misp.event.list.json"'
        del headers["X-Skipped-Elements-Count"]
        return _Response(200, headers, body)


def _event_keys(event: dict[str, Any]) -> list[str]:
    return [str(event["id"]), event["uuid"]]


def _metadata_event(event: dict[str, Any]) -> dict[str, Any]:
    """An event as ``/events/restSearch`` with ``metadata`` renders it."""
    record = _context_event(event)
    del record["Tag"]
    record["Org"] = {"id": event["org_id"], "name": event["Orgc"]["name"]}
    if event["Tag"]:
        record["Tag"] = [_event_tag(t) for t in event["Tag"]]
    return record


def _event_tag(tag: dict[str, Any]) -> dict[str, Any]:
    fields = ("id", "name", "colour", "numerical_value", "is_galaxy", "local")
    return {k: tag[k] for k in fields}


def _ok_headers(result_count: int, skipped_count: int) -> dict[str, str]:
    return {
        "Content-Type": "application/json; charset=UTF-8",
        "X-Result-Count": str(result_count),
        "X-Export-Module-Used": "json",
        "X-Response-Format": "json",
        "X-Skipped-Elements-Count": str(skipped_count),
    }


# ---------------------------------------------------------------- program


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--events", type=Path, help="directory of MISP event JSON")
    parser.add_argument("--key-file", type=Path, help="file holding the API key")
    parser.add_argument("--synthetic", type=int, default=0, help="attribute count")
    parser.add_argument("--tls", action="store_true", help="serve HTTPS (trustme CA)")
    parser.add_argument("--seed", type=int, default=1)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    key = args.key_file.read_text().strip() if args.key_file else DEFAULT_API_KEY
    options = {"api_key": key, "tls": args.tls, "port": args.port, "seed": args.seed}
    if args.synthetic:
        emulator = MispEmulator.synthetic(args.synthetic, **options)
    else:
        emulator = MispEmulator(**options)
    for path in sorted(args.events.glob("*.json")) if args.events else []:
        emulator.load_event_file(path)

    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    with emulator:
        print(emulator.url, flush=True)
        if emulator.ca_path is not None:
            print(f"ca_path={emulator.ca_path}", file=sys.stderr, flush=True)
        stopping.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
