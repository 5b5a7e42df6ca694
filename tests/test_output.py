"""Tests for the enrichment writer, on real files."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import orjson
import pytest

from tailer.match import Hit, Observable
from tailer.output import EnrichmentWriter, MemoryDedup


def make_alert(alert_id: str, timestamp: str, *, agent="002", rule="5712") -> dict:
    return {
        "timestamp": timestamp,
        "id": alert_id,
        "rule": {"level": 10, "id": rule, "description": "d"},
        "agent": {"id": agent, "name": "WKS"},
        "location": "/var/log/auth.log",
    }


def make_hit(indicator: str = "192.0.2.10") -> Hit:
    observable = Observable("ip", indicator, "data.srcip", indicator)
    return Hit("ip", indicator, observable, {"event_id": "4242"})


def at(second: int) -> str:
    return f"2026-12-03T16:{second // 60:02d}:{second % 60:02d}.000+0000"


def read_records(path) -> list[dict]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line]


def test_output_file_is_created_with_mode_0640(tmp_path):
    path = tmp_path / "ioc_enrichment.json"
    old_umask = os.umask(0o077)
    try:
        EnrichmentWriter(path).write_hit(make_alert("1.1", at(0)), make_hit())
    finally:
        os.umask(old_umask)

    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert read_records(path)[0]["ioc"]["indicator"] == "192.0.2.10"


def test_each_line_is_written_with_one_write_call(tmp_path):
    """strace-free check: every os.write call carries exactly one whole line."""
    script = f"""
import os, sys
sys.path.insert(0, {os.getcwd()!r})
calls = []
real_write = os.write
def counting_write(fd, data):
    calls.append(bytes(data))
    return real_write(fd, data)
os.write = counting_write
from tailer.output import EnrichmentWriter
from tailer.match import Hit, Observable
writer = EnrichmentWriter({str(tmp_path / "out.json")!r})
for n in range(50):
    ip = f"192.0.2.{{n}}"
    observable = Observable("ip", ip, "data.srcip", ip)
    hit = Hit("ip", ip, observable, {{"event_info": "x" * 900}})
    alert = {{"id": f"1.{{n}}", "timestamp": "2026-12-03T16:00:00.000+0000"}}
    writer.write_hit(alert, hit)
print(len(calls), all(c.endswith(b"\\n") and c.count(b"\\n") == 1 for c in calls))
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )

    assert result.stdout.split() == ["50", "True"]
    assert len(read_records(tmp_path / "out.json")) == 50


def test_writer_reopens_after_the_file_is_rotated_away(tmp_path):
    """logrotate renames the file: later lines go to a new file at the path."""
    path = tmp_path / "ioc_enrichment.json"
    writer = EnrichmentWriter(path)
    writer.write_hit(make_alert("1.1", at(0)), make_hit("192.0.2.1"))
    path.rename(tmp_path / "ioc_enrichment.json.1")

    writer.write_hit(make_alert("1.2", at(1)), make_hit("192.0.2.2"))
    (tmp_path / "ioc_enrichment.json.1").rename(tmp_path / "old")
    path.unlink()
    writer.write_hit(make_alert("1.3", at(2)), make_hit("192.0.2.3"))

    assert [r["alert"]["id"] for r in read_records(tmp_path / "old")] == ["1.1"]
    assert [r["alert"]["id"] for r in read_records(path)] == ["1.3"]
    assert writer.stats()["reopens"] == 2
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_flood_window_uses_alert_timestamps_and_reports_repeats(tmp_path):
    """Same (indicator, agent, rule) within 60 s of alert time is written once."""
    path = tmp_path / "out.json"
    writer = EnrichmentWriter(path, flood_window_s=60)
    outcomes = [
        writer.write_hit(make_alert(f"1.{n}", at(second)), make_hit())
        for n, second in enumerate([0, 10, 59, 30, 61, 62])
    ]

    assert outcomes == [
        "written",
        "suppressed",
        "suppressed",
        "suppressed",
        "written",
        "suppressed",
    ]
    records = read_records(path)
    assert "suppressed_repeats" not in records[0]["ioc"]
    assert records[1]["ioc"]["suppressed_repeats"] == 3
    assert writer.stats()["suppressed"] == 4
    assert writer.stats()["pending_repeats"] == 1


def test_flood_window_keys_on_agent_and_rule(tmp_path):
    writer = EnrichmentWriter(tmp_path / "out.json", flood_window_s=60)

    outcomes = [
        writer.write_hit(make_alert("1.1", at(0)), make_hit()),
        writer.write_hit(make_alert("1.2", at(1), agent="003"), make_hit()),
        writer.write_hit(make_alert("1.3", at(2), rule="5720"), make_hit()),
        writer.write_hit(make_alert("1.4", at(3)), make_hit("192.0.2.11")),
    ]

    assert outcomes == ["written"] * 4


def test_same_alert_and_indicator_is_written_once(tmp_path):
    writer = EnrichmentWriter(tmp_path / "out.json", flood_window_s=0)
    alert = make_alert("1.1", at(0))

    assert writer.write_hit(alert, make_hit()) == "written"
    assert writer.write_hit(alert, make_hit()) == "duplicate"
    assert len(read_records(tmp_path / "out.json")) == 1


def test_recover_tail_prevents_duplicates_across_a_restart(tmp_path):
    """A new writer re-learns the keys written after the checkpoint from the file."""
    path = tmp_path / "out.json"
    first = EnrichmentWriter(path, flood_window_s=0)
    first.write_hit(make_alert("1.1", at(0)), make_hit("192.0.2.1"))
    checkpoint_inode, checkpoint_offset = first.position()
    first.write_hit(make_alert("1.2", at(1)), make_hit("192.0.2.2"))
    first.close()

    second = EnrichmentWriter(path, flood_window_s=0, dedup=MemoryDedup())
    recovered = second.recover_tail(checkpoint_offset, inode=checkpoint_inode)
    replayed = second.write_hit(make_alert("1.2", at(1)), make_hit("192.0.2.2"))

    assert recovered == 1
    assert replayed == "duplicate"
    assert len(read_records(path)) == 2


def test_recover_tail_closes_a_partial_last_line_and_rewrites_its_hit(tmp_path):
    """A line cut by a crash is terminated; its hit is not taken as written."""
    path = tmp_path / "out.json"
    writer = EnrichmentWriter(path, flood_window_s=0)
    writer.write_hit(make_alert("1.1", at(0)), make_hit("192.0.2.1"))
    writer.close()
    with path.open("ab") as stream:
        stream.write(b'{"integration":"ioc_sqlite","ioc":{"type":"ip","indic')

    restarted = EnrichmentWriter(path, flood_window_s=0)
    recovered = restarted.recover_tail(0)
    outcome = restarted.write_hit(make_alert("1.2", at(1)), make_hit("192.0.2.2"))

    lines = path.read_bytes().split(b"\n")
    assert recovered == 1 and outcome == "written"
    assert lines[1].endswith(b'"indic') and lines[-1] == b""
    assert orjson.loads(lines[2])["alert"]["id"] == "1.2"
    assert restarted.stats()["partial_lines_closed"] == 1


def test_recover_tail_rebuilds_the_flood_window(tmp_path):
    """After a restart, a repeat inside the window of a recovered line is held back."""
    path = tmp_path / "out.json"
    EnrichmentWriter(path).write_hit(make_alert("1.1", at(0)), make_hit())

    restarted = EnrichmentWriter(path)
    restarted.recover_tail(0)

    assert restarted.write_hit(make_alert("1.2", at(5)), make_hit()) == "suppressed"


def test_recover_tail_ignores_health_lines(tmp_path):
    path = tmp_path / "out.json"
    path.write_bytes(b'{"integration":"ioc_sqlite","ioc_sync":{"status":"ok"}}\n')

    assert EnrichmentWriter(path).recover_tail(0) == 0


def test_position_reports_inode_and_end_offset(tmp_path):
    path = tmp_path / "out.json"
    writer = EnrichmentWriter(path)
    writer.write_hit(make_alert("1.1", at(0)), make_hit())

    inode, offset = writer.position()

    assert inode == path.stat().st_ino
    assert offset == path.stat().st_size


def test_write_hits_writes_what_write_hit_would_in_one_call(tmp_path):
    """Same lines and counts as hit-by-hit, including in-batch duplicates."""
    alerts = [make_alert("1.1", at(0)), make_alert("1.2", at(10))]
    hits = [make_hit("192.0.2.1"), make_hit("192.0.2.2")]
    batch = [(alerts[0], hits[0]), (alerts[0], hits[0]), (alerts[1], hits[0])]
    batch.append((alerts[1], hits[1]))
    one_by_one = EnrichmentWriter(tmp_path / "one.json", flood_window_s=60)
    batched = EnrichmentWriter(tmp_path / "batch.json", flood_window_s=60)
    calls: list[bytes] = []
    real_write_line = batched.write_line
    batched.write_line = lambda line: calls.append(line) or real_write_line(line)

    for alert, hit in batch:
        one_by_one.write_hit(alert, hit)
    batched.write_hits(batch)

    one_bytes = (tmp_path / "one.json").read_bytes()
    assert (tmp_path / "batch.json").read_bytes() == one_bytes
    assert len(calls) == 1 and calls[0].count(b"\n") == 2
    assert batched.stats() == one_by_one.stats()
    assert batched.stats()["duplicate"] == 1 and batched.stats()["suppressed"] == 1


def test_write_hits_that_failed_are_written_when_read_again(tmp_path):
    """A failed write remembers no key, so the re-read alert is written."""
    path = tmp_path / "missing" / "out.json"
    writer = EnrichmentWriter(path, flood_window_s=0)
    batch = [(make_alert("1.1", at(0)), make_hit())]

    with pytest.raises(FileNotFoundError):
        writer.write_hits(batch)
    path.parent.mkdir()
    writer.write_hits(batch)

    assert [r["alert"]["id"] for r in read_records(path)] == ["1.1"]
    assert writer.stats()["written"] == 1
    assert "duplicate" not in writer.stats()
