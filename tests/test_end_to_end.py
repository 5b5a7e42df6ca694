"""End to end on real Wazuh 4.14.1 alerts: MISP emulator -> misp-ioc-sync ->
store -> wazuh-ioc-tailer following a rotating alerts.json -> enrichments."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import orjson
import pytest

from tests.alert_writer import AnalysisdWriter
from tests.misp_emulator import DEFAULT_API_KEY, MispEmulator
from tests.test_service import (
    PLANTED,
    REPO,
    Tailer,
    alert_line,
    clean_environ,
    wait_until,
    write_config,
)

ALERTS = Path(__file__).parent / "data" / "alerts"
EXPECTED = Path(__file__).parent / "data" / "iocs-injected" / "EXPECTED.jsonl"
FREE_TEXT_ROOTS = ("full_log", "previous_output")
ALERT_TIME = 1796315294
MIN_LEVEL = 10


def indicator_of(attribute: str) -> str:
    """`ip-dst|port 198.51.100.50|8080` -> the value the store keeps."""
    misp_type, value = attribute.split(" ", 1)
    if misp_type.startswith("filename|"):
        return value.split("|", 1)[1]
    if misp_type.endswith("|port"):
        return value.split("|", 1)[0]
    return value.lower()


def decoded_occurrences(*, expect_match: bool) -> set[tuple[str, str]]:
    """(alert id, indicator) pairs EXPECTED.jsonl sets for decoded fields."""
    pairs = set()
    for record in map(json.loads, EXPECTED.read_text().splitlines()):
        if record["level"] < MIN_LEVEL:
            continue
        for found in record["occurrences"]:
            decoded = found["path"].split(".")[0] not in FREE_TEXT_ROOTS
            if decoded and found["attribute"] and found["expect_match"] is expect_match:
                pairs.add((record["id"], indicator_of(found["attribute"])))
    return pairs


def enrichments(path: Path) -> list[dict]:
    records = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    return [record for record in records if "ioc" in record]


def sync_into_store(root: Path, config: Path) -> subprocess.CompletedProcess:
    with MispEmulator() as misp:
        misp.set_clock(ALERT_TIME)
        misp.load_attributes(PLANTED)
        env = clean_environ(MISP_URL=misp.url, MISP_API_KEY=DEFAULT_API_KEY)
        return run_sync(config, env)


@pytest.fixture
def synced(tmp_path: Path) -> tuple[Path, Path]:
    config = write_config(tmp_path, misp={"retries": 0})
    result = sync_into_store(tmp_path, config)
    assert result.returncode == 0, result.stderr
    return tmp_path, config


def feed(root: Path, lines: list[bytes], *, rotate_every: int) -> None:
    with AnalysisdWriter(root / "alerts", flush_interval_s=0.05) as writer:
        for number, line in enumerate(lines, start=1):
            writer.write(line)
            if number % rotate_every == 0:
                writer.rotate()
            time.sleep(0.002)


def test_planted_indicators_hit_once_and_near_misses_never(synced):
    root, config = synced
    lines = (ALERTS / "iocs-injected.jsonl").read_bytes().splitlines()
    output = root / "out" / "enrichment.json"
    tailer = Tailer(config).start()
    assert tailer.wait_log("follow_start")

    feed(root, lines, rotate_every=30)
    assert wait_until(lambda: "lines=108 " in stats_of(tailer), 20)
    assert tailer.stop() == 0

    found = Counter(
        (r["alert"]["id"], r["ioc"]["indicator"]) for r in enrichments(output)
    )
    missing = decoded_occurrences(expect_match=True) - set(found)
    near_misses = decoded_occurrences(expect_match=False) - decoded_occurrences(
        expect_match=True
    )
    assert sorted(missing) == []
    assert [pair for pair, count in found.items() if count > 1] == []
    assert sorted(near_misses & set(found)) == []


def test_real_alerts_run_through_without_a_bad_line_or_error(synced):
    root, config = synced
    lines = (ALERTS / "engine-real.jsonl").read_bytes().splitlines()
    tailer = Tailer(config).start()
    assert tailer.wait_log("follow_start")

    feed(root, lines, rotate_every=500)
    assert wait_until(lambda: f"lines={len(lines)} " in stats_of(tailer), 30)
    assert tailer.stop() == 0

    log = tailer.log()
    assert len(lines) == 1867
    assert "bad_lines=0" in stats_of(tailer)
    assert "Traceback" not in log
    assert "loop_error" not in log
    assert "ERROR" not in log


def stats_of(tailer: Tailer) -> str:
    lines = re.findall(r"^INFO tailer\.service: stats .*$", tailer.log(), re.M)
    return lines[-1] if lines else ""


def test_sync_retrohunt_finds_alert_seen_before_the_indicator_existed(tmp_path):
    config = write_config(tmp_path, misp={"retries": 0}, sync={"retrohunt_days": 1})
    old_ip, new_ip = "192.0.2.10", "198.51.100.203"
    with AnalysisdWriter(tmp_path / "alerts", flush_interval_s=None) as writer:
        writer.write(alert_line(1, old_ip))
        writer.write(alert_line(2, new_ip))
    output = tmp_path / "out" / "enrichment.json"

    with MispEmulator() as misp:
        misp.load_attributes([a for a in PLANTED if a["value"] == old_ip])
        env = clean_environ(MISP_URL=misp.url, MISP_API_KEY=DEFAULT_API_KEY)
        first = run_sync(config, env)
        before = enrichments(output) if output.exists() else []
        time.sleep(1.1)
        new = {"type": "ip-dst", "value": new_ip, "uuid": "e2e-new", "to_ids": True}
        misp.load_attributes([dict(new, event_id="4243", category="Network activity")])
        second = run_sync(config, env)

    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    after = enrichments(output)[len(before) :]
    assert [(r["alert"]["id"], r["ioc"]["indicator"]) for r in after] == [
        ("1796342399.2", new_ip)
    ]
    assert after[0]["ioc"]["replay"] == "true"


def run_sync(config: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sync.cli", "--config", str(config)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
