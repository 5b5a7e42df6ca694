"""Tests for choosing alerts: the raw-bytes quick path and the full decision."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from tailer.select import AlertSelector

ALERTS_DIR = Path(__file__).parent / "data" / "alerts"
OUTPUT_PATH = "/var/ossec/logs/ioc_enrichment.json"


def _real_lines() -> list[bytes]:
    lines = []
    for path in sorted(ALERTS_DIR.glob("*.jsonl")):
        if "EXPECTED" not in path.name:
            lines.extend(line for line in path.read_bytes().splitlines() if line)
    return lines


REAL_LINES = _real_lines()

SELECTORS = {
    "default": {},
    "min_level_5": {"min_level": 5},
    "keep_lists": {
        "keep_groups": ["sysmon", "authentication_failed"],
        "keep_rule_ids": ["5710", "61605", "554"],
    },
    "drop_lists": {"drop_groups": ["web"], "drop_rule_ids": ["5712"]},
    "skip_virustotal": {"skip_integrations": ["virustotal"]},
}


def test_real_corpus_has_the_engine_alerts_and_the_public_samples():
    """The agreement tests below run over 1,867 + 108 + 40 real alerts."""
    assert len(REAL_LINES) == 1867 + 108 + 40


@pytest.mark.parametrize("name", sorted(SELECTORS))
def test_quick_reject_never_rejects_what_accept_keeps(name):
    """On every real alert, a quick rejection implies the full check rejects too."""
    selector = AlertSelector(own_output_path=OUTPUT_PATH, **SELECTORS[name])
    wrongly_rejected = []
    quick_count = 0
    for line in REAL_LINES:
        rejected = selector.quick_reject(line)
        quick_count += rejected
        if rejected and selector.accept(orjson.loads(line)):
            wrongly_rejected.append(line[:120])

    assert wrongly_rejected == []
    assert quick_count > 0


def test_quick_reject_catches_most_low_level_engine_alerts():
    """Below-level alerts written by analysisd are rejected without a JSON parse."""
    selector = AlertSelector(min_level=10)
    engine = (ALERTS_DIR / "engine-real.jsonl").read_bytes().splitlines()
    low = [line for line in engine if orjson.loads(line)["rule"]["level"] < 10]

    rejected = sum(selector.quick_reject(line) for line in low)

    assert len(low) == 1867 - 228
    assert rejected == len(low)


def test_quick_reject_falls_back_when_level_is_not_first_in_rule():
    """An indexer-ordered alert (level elsewhere) is left to the full check."""
    line = b'{"rule":{"id":"5710","level":5,"groups":["sshd"]},"id":"1.2"}'
    selector = AlertSelector(min_level=10)

    assert selector.quick_reject(line) is False
    assert selector.accept(orjson.loads(line)) is False


def test_quick_reject_spares_low_level_alert_whose_group_is_kept():
    """A keep_groups entry found in the raw line prevents the quick rejection."""
    line = b'{"timestamp":"t","rule":{"level":3,"id":"61650","groups":["sysmon"]}}'
    selector = AlertSelector(min_level=10, keep_groups=["sysmon"])

    assert selector.quick_reject(line) is False
    assert selector.accept(orjson.loads(line)) is True


def test_quick_reject_spares_low_level_alert_whose_rule_id_is_kept():
    line = b'{"timestamp":"t","rule":{"level":3,"id":"61650","groups":["x"]}}'
    selector = AlertSelector(min_level=10, keep_rule_ids=[61650])

    assert selector.quick_reject(line) is False
    assert selector.accept(orjson.loads(line)) is True


def test_keep_group_with_non_ascii_name_disables_the_quick_path():
    line = b'{"timestamp":"t","rule":{"level":3,"id":"1","groups":["x"]}}'
    selector = AlertSelector(keep_groups=["d\u00e9tection"])

    assert selector.quick_reject(line) is False


def _alert(level=12, rule_id="5712", groups=("sshd",), **extra):
    rule = {"level": level, "id": rule_id, "groups": list(groups)}
    return {"timestamp": "2026-12-03T16:24:41.811+0000", "rule": rule, **extra}


@pytest.mark.parametrize(
    ("alert", "reason"),
    [
        (_alert(rule_id="101081"), "own_rule"),
        (_alert(rule_id="101099"), "own_rule"),
        (_alert(data={"integration": "ioc_sqlite"}), "own_integration"),
        (_alert(location=OUTPUT_PATH), "own_location"),
    ],
)
def test_accept_always_skips_our_own_enrichment_alerts(alert, reason):
    """Own alerts are skipped in all three forms, even when kept by rule or group."""
    selector = AlertSelector(keep_rule_ids=["101081"], own_output_path=OUTPUT_PATH)

    assert selector.accept(alert) is False
    assert selector.stats() == {reason: 1}


def test_accept_keeps_rule_next_to_our_range():
    selector = AlertSelector(own_output_path=OUTPUT_PATH)

    assert selector.accept(_alert(rule_id="101100")) is True
    assert selector.accept(_alert(rule_id="101079")) is True


def test_accept_skips_configured_integration_by_data_or_location():
    """A VirusTotal result is skipped by data.integration or by its location."""
    vt_lines = (ALERTS_DIR / "samples-virustotal.jsonl").read_bytes().splitlines()
    vt_alert = orjson.loads(vt_lines[3])
    selector = AlertSelector(skip_integrations=["virustotal"])

    assert vt_alert["rule"]["level"] == 12
    assert selector.accept(vt_alert) is False
    assert selector.accept(_alert(location="virustotal")) is False
    assert selector.stats() == {"skipped_integration": 2}


def test_accept_keeps_virustotal_result_unless_configured():
    vt_alert = orjson.loads(
        (ALERTS_DIR / "samples-virustotal.jsonl").read_bytes().splitlines()[3]
    )

    assert AlertSelector().accept(vt_alert) is True


def test_accept_applies_drop_lists_over_level_and_keep_lists():
    selector = AlertSelector(
        keep_groups=["sshd"], drop_groups=["web"], drop_rule_ids=["5712"]
    )

    assert selector.accept(_alert(rule_id="5712")) is False
    assert selector.accept(_alert(rule_id="31151", groups=["web", "attack"])) is False
    assert selector.accept(_alert(level=3, rule_id="5710")) is True
    assert selector.stats() == {
        "dropped_rule_id": 1,
        "dropped_group": 1,
        "accepted": 1,
    }


def test_accept_matches_groups_with_stray_whitespace():
    """Custom rules leak newlines into group names; they still match keep lists."""
    alert = _alert(level=6, groups=["\n      authentication_success"])

    assert AlertSelector(keep_groups=["authentication_success"]).accept(alert)


@pytest.mark.parametrize(
    "alert", [None, [], {"rule": "x"}, {"rule": {"level": "high", "id": "1"}}]
)
def test_accept_counts_malformed_alerts_without_raising(alert):
    selector = AlertSelector()

    assert selector.accept(alert) is False
    assert selector.stats() == {"malformed_alert": 1}


@pytest.mark.parametrize(
    "odd",
    [
        {"data": {"integration": ["virustotal"]}},
        {"location": {"path": "x"}},
        {"rule": {"level": 12, "id": ["101080"]}},
        {"rule": {"level": 12, "id": 101080.0}},
    ],
)
def test_accept_judges_odd_shaped_integration_location_and_id_by_level(odd):
    alert = _alert(level=12) | odd
    selector = AlertSelector(skip_integrations=["virustotal"])

    assert selector.accept(alert) is True
    assert selector.stats() == {"accepted": 1}


def test_accept_counts_each_reason_over_the_engine_alerts():
    """Counts add up: every engine alert is accepted or rejected for one reason."""
    selector = AlertSelector(min_level=10)
    engine = (ALERTS_DIR / "engine-real.jsonl").read_bytes().splitlines()

    for line in engine:
        selector.accept(orjson.loads(line))

    counts = selector.stats()
    assert counts["accepted"] == 228
    assert counts["below_level"] == 1867 - 228
    assert sum(counts.values()) == 1867
