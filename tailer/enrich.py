"""Building and encoding enrichments: the JSON line written for each hit.

Schema (one JSON object per line, read back by Wazuh's JSON decoder):

    {"integration": "ioc_sqlite",
     "ioc": {"type", "indicator", "field_matched",
             "hit": {<type>: {"indicator", "field_matched", "value_observed", "port",
                              "misp_type", "category", "event_id", "event_uuid",
                              "event_info", "attribute_uuid", "threat_level", "tags",
                              "to_ids", "first_seen", "last_seen", "source"}},
             "replay": "true", "suppressed_repeats": N},
     "alert": {"id", "timestamp", "rule": {"id", "level", "description"},
               "agent": {"id", "name"}, "location"}}

Rules for Wazuh's decoder: `integration` is the only top-level scalar (top-level names
such as `id`, `url` or `data` would become static fields); every value a rule needs
is a scalar (arrays are not flattened); no key contains a dot (a dot would change the
nesting); empty strings and missing values are omitted.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

INTEGRATION = "ioc_sqlite"
TRUNCATION_MARK = "...[truncated]"
MAX_LINE_BYTES = 30000

# Context keys from the store, by enrichment key; the first present one wins.
_CONTEXT_KEYS = {
    "misp_type": ("misp_type", "type"),
    "category": ("category",),
    "event_id": ("event_id",),
    "event_uuid": ("event_uuid",),
    "event_info": ("event_info",),
    "attribute_uuid": ("attribute_uuid", "uuid"),
    "threat_level": ("threat_level", "threat_level_id"),
    "tags": ("tags",),
    "to_ids": ("to_ids",),
    "first_seen": ("first_seen",),
    "last_seen": ("last_seen",),
    "source": ("source",),
}


class EnrichmentTooLarge(ValueError):
    """An enrichment cannot be cut down to the line limit."""


def build_enrichment(
    alert: Mapping[str, Any], hit: Any, *, replay: bool = False, repeats: int = 0
) -> dict:
    """The enrichment record for one hit found in one alert."""
    observable = hit.observable
    ioc = _clean(
        {
            "type": hit.kind,
            "indicator": hit.indicator,
            "field_matched": observable.field_path,
            "hit": {hit.kind: _hit_block(hit)},
            "replay": "true" if replay else None,
            "suppressed_repeats": repeats if repeats > 0 else None,
        }
    )
    return {"integration": INTEGRATION, "ioc": ioc, "alert": _alert_block(alert)}


def _hit_block(hit: Any) -> dict:
    observable = hit.observable
    block: dict[str, Any] = {
        "indicator": hit.indicator,
        "field_matched": observable.field_path,
        "value_observed": observable.raw,
        "port": getattr(observable, "port", None),
    }
    context = hit.context if isinstance(hit.context, Mapping) else {}
    for key, sources in _CONTEXT_KEYS.items():
        block[key] = next((context[s] for s in sources if s in context), None)

    block["tags"] = _joined(block["tags"])
    block["to_ids"] = _flag(block["to_ids"])
    return _clean(block)


def _alert_block(alert: Mapping[str, Any]) -> dict:
    rule = _mapping(alert.get("rule"))
    agent = _mapping(alert.get("agent"))
    return _clean(
        {
            "id": _scalar(alert.get("id")),
            "timestamp": _scalar(alert.get("timestamp")),
            "rule": _clean(
                {
                    "id": _scalar(rule.get("id")),
                    "level": _scalar(rule.get("level")),
                    "description": _scalar(rule.get("description")),
                }
            ),
            "agent": _clean(
                {"id": _scalar(agent.get("id")), "name": _scalar(agent.get("name"))}
            ),
            "location": _scalar(alert.get("location")),
        }
    )


def _scalar(value: Any) -> Any:
    """An alert value as one scalar: odd shapes become their JSON text.

    Wazuh writes these fields as strings and numbers; anything else (an object,
    a list, an integer beyond what JSON readers keep exactly) is carried as text,
    so no array or dotted key reaches the line and the size cut still applies.
    """
    if value is None or isinstance(value, str | bool | float):
        return value
    if isinstance(value, int):
        return value if abs(value) < 2**53 else str(value)
    try:
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()
    except (TypeError, orjson.JSONEncodeError):
        return str(value)


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _joined(tags: Any) -> str | None:
    if isinstance(tags, (list, tuple)):
        names = [_tag_name(tag) for tag in tags]
        return ",".join(name for name in names if name)
    return tags


def _tag_name(tag: Any) -> str:
    if isinstance(tag, Mapping):
        return str(tag.get("name", ""))
    return str(tag)


def _flag(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return "true" if value.strip().lower() in ("1", "true", "yes") else "false"
    return "true" if value else "false"


def _clean(block: dict) -> dict:
    """Drops missing values and empty strings or objects; leaves become scalars."""
    cleaned = {}
    for key, value in block.items():
        if value is None or value == "" or value == {}:
            continue
        if isinstance(value, (list, tuple, set)):
            value = ",".join(str(v) for v in value)
        elif not isinstance(value, (str, int, float, bool, dict)):
            value = str(value)
        cleaned[key] = value
    return cleaned


# --- encoding -------------------------------------------------------------------


def encode_enrichment(
    record: Mapping[str, Any], max_bytes: int = MAX_LINE_BYTES
) -> bytes:
    """One JSON line ending in a newline, at most `max_bytes` long.

    Over-long records lose the end of their largest strings first; a cut string ends
    with TRUNCATION_MARK. Cuts happen on characters, so UTF-8 is never split.
    """
    line = orjson.dumps(record) + b"\n"
    if len(line) <= max_bytes:
        return line

    record = _copy(record)
    while len(line) > max_bytes:
        if not _cut_largest(record, len(line) - max_bytes):
            raise EnrichmentTooLarge(
                f"enrichment: cannot fit the line limit (got {len(line)} bytes); "
                f"expected at most {max_bytes}"
            )
        line = orjson.dumps(record) + b"\n"
    return line


def _copy(record: Mapping[str, Any]) -> dict:
    return {k: _copy(v) if isinstance(v, Mapping) else v for k, v in record.items()}


def _cut_largest(record: dict, excess_bytes: int) -> bool:
    """Shortens the longest cuttable string by about the excess; False if none left."""
    candidates = [
        (len(orjson.dumps(value)), parent, key)
        for parent, key, value in _string_leaves(record)
        if len(value) > len(TRUNCATION_MARK)
    ]
    if not candidates:
        return False

    encoded_bytes, parent, key = max(candidates, key=lambda c: c[0])
    value = parent[key]
    if value.endswith(TRUNCATION_MARK):
        value = value[: -len(TRUNCATION_MARK)]
    # Scale by encoded size per character so escapes and multi-byte text shrink enough.
    wanted_bytes = encoded_bytes - excess_bytes - len(TRUNCATION_MARK) - 2
    keep_chars = max(0, min(len(value) - 1, len(value) * wanted_bytes // encoded_bytes))
    parent[key] = value[:keep_chars] + TRUNCATION_MARK
    return True


def _string_leaves(node: dict):
    for key, value in node.items():
        if isinstance(value, dict):
            yield from _string_leaves(value)
        elif isinstance(value, str):
            yield node, key, value
