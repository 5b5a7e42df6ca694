"""Tests for the Wazuh rules against enrichments and health lines we generate."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import orjson
import pytest

from sync.health import SyncHealth, health_record
from tailer.enrich import build_enrichment, encode_enrichment
from tailer.match import Hit, Observable

RULES_DIR = Path(__file__).parent.parent / "rules"
RULES_FILE = RULES_DIR / "0800-misp_ioc_rules.xml"
# Names Wazuh reserves for static fields; `<field name=...>` rejects them.
STATIC_NAMES = {
    "srcip",
    "dstip",
    "srcport",
    "dstport",
    "protocol",
    "action",
    "id",
    "srcuser",
    "dstuser",
    "user",
    "status",
    "url",
    "data",
    "extra_data",
    "system_name",
    "srcgeoip",
    "dstgeoip",
}
INDICATORS = {
    "ip": "192.0.2.10",
    "domain": "evil.example",
    "url": "http://c2.bad.test/gate.php",
    "hash": "44d88612fea8a8f36de82e1278abb02f",
}
CONTEXT = {
    "misp_type": "md5",
    "event_id": "4242",
    "event_uuid": "5f0c2a2e-6d3b-4b8a-9a51-0a6c0ffee001",
    "event_info": "Example C2",
    "attribute_uuid": "d9e3a82a-47e4-5185-8372-b76e36477be4",
    "category": "Network activity",
    "to_ids": True,
    "tags": ["tlp:green"],
}
ALERT = {
    "id": "1796315294.0",
    "timestamp": "2026-12-03T16:24:41.811+0000",
    "rule": {"id": "5712", "level": 10, "description": "sshd: brute force"},
    "agent": {"id": "002", "name": "WKS-0042"},
    "location": "/var/log/auth.log",
}


def load_rules() -> dict[str, ET.Element]:
    # A rule file has several top-level <group>s; wrap them to parse.
    text = RULES_FILE.read_text(encoding="utf-8")
    root = ET.fromstring(f"<root>{text}</root>")
    return {rule.get("id"): rule for rule in root.iter("rule")}


RULES = load_rules()


def flatten(record: dict, prefix: str = "") -> dict[str, object]:
    """The fields Wazuh's JSON decoder makes of a line (nested keys joined by dots)."""
    fields = {}
    for key, value in record.items():
        if isinstance(value, dict):
            fields.update(flatten(value, f"{prefix}{key}."))
        else:
            fields[f"{prefix}{key}"] = value
    return fields


# A feed hit: a MISP feed has no event ids, only the event's uuid and info.
FEED_CONTEXT = {key: value for key, value in CONTEXT.items() if key != "event_id"}


def enrichment(kind: str, *, replay: bool, feed: bool = False) -> dict[str, object]:
    observable = Observable(kind, INDICATORS[kind], "data.srcip", INDICATORS[kind])
    context = dict(FEED_CONTEXT if feed else CONTEXT)
    hit = Hit(kind, INDICATORS[kind], observable, context)
    line = encode_enrichment(build_enrichment(ALERT, hit, replay=replay, repeats=2))
    return flatten(orjson.loads(line))


def health(status: str, *, stale: bool) -> dict[str, object]:
    run = SyncHealth(
        status=status,
        mode="restsearch",
        source="misp",
        error="" if status == "ok" else "MISP answered HTTP 500",
        indicators=10,
        stored=10,
        last_success=0 if stale else 1000,
    )
    return flatten(health_record(run, now=2000, stale_after_s=3600))


RECORDS = {
    **{f"{k}": enrichment(k, replay=False) for k in INDICATORS},
    **{f"{k}_replay": enrichment(k, replay=True) for k in INDICATORS},
    **{f"{k}_feed": enrichment(k, replay=False, feed=True) for k in INDICATORS},
    **{f"{k}_feed_replay": enrichment(k, replay=True, feed=True) for k in INDICATORS},
    **{
        f"health_{s}_{stale}": health(s, stale=stale)
        for s in ("ok", "failed", "incomplete")
        for stale in (False, True)
    },
}


def _health_of_a_future_status() -> dict[str, object]:
    """A health line whose status this version does not know (a newer sync)."""
    fields = health("ok", stale=False)
    fields["ioc_sync.status"] = "degraded"
    return fields


RECORDS["health_unknown"] = _health_of_a_future_status()


def wazuh_matches(pattern: str, value: object, *, negate: bool = False) -> bool:
    """Enough of OS_Regex for these rules: `^`, `$`, `|` and `\\.` (any character)."""
    found = False
    for alternative in pattern.split("|"):
        regex = re.escape(alternative).replace(r"\\\.", ".").replace(r"\^", "^")
        found = found or re.search(regex.replace(r"\$", "$"), str(value)) is not None
    return found != negate


def conditions(rule_id: str) -> list[tuple[str, str]]:
    """Field conditions of a rule and of all its ancestors."""
    rule = RULES[rule_id]
    own = [
        (f.get("name"), f.text, f.get("negate") == "yes") for f in rule.findall("field")
    ]
    parents = rule.findtext("if_sid")
    if not parents:
        return own
    # A child of several parents: any one parent's conditions suffice; the tests
    # below use the first whose conditions hold.
    return own + [("__parents__", parents, False)]


def fires_on(rule_id: str, fields: dict) -> bool:
    for name, pattern, negate in conditions(rule_id):
        if name == "__parents__":
            if not any(fires_on(p.strip(), fields) for p in pattern.split(",")):
                return False
        elif name not in fields:
            return False
        elif not wazuh_matches(pattern, fields[name], negate=negate):
            return False
    return True


def test_rule_file_parses_and_ids_are_unique_and_in_range():
    text = RULES_FILE.read_text(encoding="utf-8")
    ids = re.findall(r'<rule id="(\d+)"', text)

    assert len(ids) == len(set(ids)) == len(RULES) >= 10
    assert all(101080 <= int(i) <= 101099 for i in ids)


def test_rule_101080_is_exactly_the_deployed_one():
    rule = RULES["101080"]

    assert rule.get("level") == "12"
    assert rule.findtext("decoded_as") == "json"
    assert [(f.get("name"), f.text) for f in rule.findall("field")] == [
        ("integration", "ioc_sqlite")
    ]
    assert rule.findtext("description") == (
        "MISP: Found $(ioc.hit.ip.field_matched): $(ioc.hit.ip.indicator) "
        "in MISP database"
    )
    assert '<group name="misp, threatintel">' in RULES_FILE.read_text()


def test_no_rule_uses_a_static_field_name():
    names = {f.get("name") for rule in RULES.values() for f in rule.findall("field")}

    assert not names & STATIC_NAMES


def test_every_generated_line_fires_a_specific_child_rule():
    """Each hit type, replay and health state reaches a child of 101080."""
    for name, fields in RECORDS.items():
        children = [r for r in RULES if r != "101080" and fires_on(r, fields)]
        assert children, name


@pytest.mark.parametrize("rule_id", sorted(set(RULES) - {"101080"}))
def test_fields_and_description_placeholders_exist_as_scalars(rule_id):
    """Every field a rule names exists, as a scalar, in each line it fires on."""
    rule = RULES[rule_id]
    names = {f.get("name") for f in rule.findall("field")}
    names |= set(re.findall(r"\$\(([^)]+)\)", rule.findtext("description")))
    firing = [n for n, fields in RECORDS.items() if fires_on(rule_id, fields)]

    assert firing, rule_id
    for record_name in firing:
        fields = RECORDS[record_name]
        for name in names:
            assert name in fields, (rule_id, record_name, name)
            assert isinstance(fields[name], (str, int, float)), (rule_id, name)


def test_feed_hits_carry_no_event_id_yet_fire_the_hit_rules():
    """The feed-sourced records really lack event_id, so the check above covers
    descriptions that would name it."""
    rule_ids = ("101081", "101082", "101083", "101084")
    for kind, rule_id in zip(INDICATORS, rule_ids, strict=True):
        fields = RECORDS[f"{kind}_feed"]
        assert f"ioc.hit.{kind}.event_id" not in fields
        assert fires_on(rule_id, fields)


def test_legacy_description_is_complete_for_ip_hits():
    fields = RECORDS["ip"]

    assert fields["ioc.hit.ip.field_matched"] == "data.srcip"
    assert fields["ioc.hit.ip.indicator"] == "192.0.2.10"


def test_hit_rules_never_fire_on_health_lines():
    hit_rules = {"101081", "101082", "101083", "101084", "101085"}
    for name, fields in RECORDS.items():
        if name.startswith("health_"):
            assert not [r for r in hit_rules if fires_on(r, fields)], name


def test_health_rules_grade_failed_incomplete_and_stale():
    def levels(name):
        fields = RECORDS[name]
        return {
            r: RULES[r].get("level")
            for r in RULES
            if r != "101080" and fires_on(r, fields)
        }

    assert levels("health_ok_False") == {"101090": "3"}
    assert levels("health_failed_False")["101091"] == "12"
    assert levels("health_incomplete_False")["101092"] == "7"
    assert "101093" in levels("health_ok_True")
    assert levels("health_unknown") == {"101094": "5"}


def test_maximal_enrichment_line_stays_under_30_kb():
    huge = {**CONTEXT, "event_info": "\u00e9" * 40000, "tags": ["t" * 9000] * 9}
    observable = Observable(
        "url", "http://x.example/" + "a" * 9000, "data.url", "r" * 9000
    )
    hit = Hit("url", observable.value, observable, huge)
    alert = {**ALERT, "rule": {**ALERT["rule"], "description": "d" * 30000}}

    line = encode_enrichment(build_enrichment(alert, hit, replay=True, repeats=9))

    assert len(line) <= 30000
    assert orjson.loads(line)["ioc"]["replay"] == "true"


def test_localfile_snippet_reads_our_output_as_json():
    root = ET.fromstring((RULES_DIR / "localfile.xml").read_text())

    assert root.findtext("log_format") == "json"
    assert root.findtext("location") == "/var/ossec/logs/ioc_enrichment.json"
