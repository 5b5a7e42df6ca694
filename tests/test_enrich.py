"""Tests for building and encoding enrichment lines."""

from __future__ import annotations

import json

import orjson
import pytest

from tailer.enrich import (
    TRUNCATION_MARK,
    build_enrichment,
    encode_enrichment,
)
from tailer.match import Hit, Observable

ALERT = {
    "timestamp": "2026-12-03T16:24:41.811+0000",
    "rule": {
        "level": 10,
        "description": "sshd: brute force",
        "id": "5712",
        "groups": ["sshd"],
    },
    "agent": {"id": "002", "name": "WKS-0042", "ip": "10.0.2.15"},
    "id": "1796315294.0",
    "location": "/var/log/auth.log",
    "data": {"srcip": "192.0.2.10"},
}

CONTEXT = {
    "attribute_uuid": "d9e3a82a-47e4-5185-8372-b76e36477be4",
    "misp_type": "ip-src",
    "category": "Network activity",
    "to_ids": True,
    "event_id": "4242",
    "event_uuid": "5f0e1c2a-0000-4000-8000-000000004242",
    "event_info": "Example C2 campaign",
    "threat_level": "1",
    "tags": ["tlp:amber", 'misp-galaxy:threat-actor="Example"'],
    "comment": "",
    "first_seen": None,
    "last_seen": "",
    "source": "misp",
}

INDICATORS = {
    "ip": ("192.0.2.10", "data.srcip"),
    "domain": ("evil.example", "data.win.eventdata.queryName"),
    "url": ("http://c2.bad.test/gate.php", "data.url"),
    "hash": ("44d88612fea8a8f36de82e1278abb02f", "syscheck.md5_after"),
}


def make_hit(kind: str, context: dict | None = None) -> Hit:
    indicator, path = INDICATORS[kind]
    observable = Observable(kind, indicator, path, indicator.upper(), None)
    return Hit(
        kind, indicator, observable, dict(CONTEXT if context is None else context)
    )


def _leaves(node, prefix=""):
    for key, value in node.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _leaves(value, path + ".")
        else:
            yield path, key, value


@pytest.mark.parametrize("kind", sorted(INDICATORS))
@pytest.mark.parametrize("replay", [False, True])
def test_enrichment_schema_is_flat_enough_for_wazuh(kind, replay):
    """Only integration is a top-level scalar; leaves are non-empty scalars."""
    record = build_enrichment(ALERT, make_hit(kind), replay=replay, repeats=3)

    assert record["integration"] == "ioc_sqlite"
    assert [k for k, v in record.items() if not isinstance(v, dict)] == ["integration"]
    for path, key, value in _leaves(record):
        assert "." not in key, path
        assert isinstance(value, (str, int, float, bool)), path
        assert value != "", path


def test_enrichment_carries_hit_context_and_alert_identity():
    record = build_enrichment(ALERT, make_hit("ip"), replay=True, repeats=4)

    block = record["ioc"]["hit"]["ip"]
    assert record["ioc"]["type"] == "ip"
    assert record["ioc"]["indicator"] == "192.0.2.10"
    assert record["ioc"]["field_matched"] == "data.srcip"
    assert record["ioc"]["replay"] == "true"
    assert record["ioc"]["suppressed_repeats"] == 4
    assert block["value_observed"] == "192.0.2.10"
    assert block["event_info"] == "Example C2 campaign"
    assert block["tags"] == 'tlp:amber,misp-galaxy:threat-actor="Example"'
    assert block["to_ids"] == "true"
    assert "first_seen" not in block and "last_seen" not in block
    assert record["alert"] == {
        "id": "1796315294.0",
        "timestamp": "2026-12-03T16:24:41.811+0000",
        "rule": {"id": "5712", "level": 10, "description": "sshd: brute force"},
        "agent": {"id": "002", "name": "WKS-0042"},
        "location": "/var/log/auth.log",
    }


def test_live_hit_has_no_replay_or_repeat_marks():
    record = build_enrichment(ALERT, make_hit("hash"))

    assert "replay" not in record["ioc"]
    assert "suppressed_repeats" not in record["ioc"]


def test_enrichment_of_a_bare_alert_does_not_raise():
    """A malformed alert still gives a valid record (nothing to lose)."""
    record = build_enrichment({"rule": "x"}, make_hit("domain", {}))

    assert record["ioc"]["hit"]["domain"]["indicator"] == "evil.example"
    assert "alert" not in record or record["alert"] == {}


def test_encoded_line_is_one_json_object_with_a_newline():
    line = encode_enrichment(build_enrichment(ALERT, make_hit("url")))

    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert json.loads(line)["ioc"]["type"] == "url"


def _huge_context(text: str) -> dict:
    return {
        **CONTEXT,
        "event_info": text * 20000,
        "tags": [text * 5000] * 10,
        "category": '\\"\n' * 8000,
    }


@pytest.mark.parametrize("text", ["a", "\u00e9", "\U0001f600", '"\\', "\x01"])
def test_maximal_enrichment_is_cut_to_the_limit_and_still_parses(text):
    """Huge strings of any script or escape shrink to <= 30,000 bytes, valid UTF-8."""
    alert = {**ALERT, "rule": {**ALERT["rule"], "description": text * 30000}}
    record = build_enrichment(alert, make_hit("url", _huge_context(text)))

    line = encode_enrichment(record, max_bytes=30000)

    parsed = json.loads(line.decode("utf-8"))
    assert len(line) <= 30000
    assert parsed["ioc"]["hit"]["url"]["tags"].endswith(TRUNCATION_MARK)
    assert parsed["ioc"]["indicator"] == "http://c2.bad.test/gate.php"


def test_cutting_takes_the_largest_string_first():
    context = {**CONTEXT, "event_info": "x" * 40000, "category": "y" * 2000}
    record = build_enrichment(ALERT, make_hit("ip", context))

    parsed = orjson.loads(encode_enrichment(record, max_bytes=30000))

    assert parsed["ioc"]["hit"]["ip"]["category"] == "y" * 2000
    assert parsed["ioc"]["hit"]["ip"]["event_info"].endswith(TRUNCATION_MARK)


def test_encoding_does_not_change_the_record():
    record = build_enrichment(
        ALERT, make_hit("ip", {**CONTEXT, "event_info": "z" * 50000})
    )

    encode_enrichment(record, max_bytes=30000)

    assert record["ioc"]["hit"]["ip"]["event_info"] == "z" * 50000


def test_odd_shaped_alert_fields_become_text_and_fit_the_line():
    alert = {
        "id": {"a": [1] * 20000},
        "timestamp": ["2026-12-03"],
        "rule": {"id": 2**70, "level": 12, "description": {"x.y": "z"}},
        "agent": {"id": {f"k{n}": 1 for n in range(5000)}, "name": ["a", "b"]},
        "location": {"srcip": ["1", "2"]},
    }

    line = encode_enrichment(build_enrichment(alert, make_hit("ip")), 30000)

    record = orjson.loads(line)
    assert len(line) <= 30000
    assert record["alert"]["rule"]["id"] == str(2**70)
    assert record["alert"]["location"] == '{"srcip":["1","2"]}'
    assert record["alert"]["id"].endswith(TRUNCATION_MARK)
    for path, key, value in _leaves(record):
        assert "." not in key, path
        assert isinstance(value, (str, int, float, bool)), path
