"""Chaos: the tailer is SIGKILLed at random moments while analysisd-like writes
and rotations go on; every expected hit must still appear exactly once."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import orjson

from tests.test_service import (
    PLANTED,
    REPO,
    Tailer,
    clean_environ,
    plant_indicators,
    store_paths_in,
    wait_until,
    write_config,
)

ALERT_COUNT = 20_000
HIT_EVERY = 20
ROTATE_EVERY = 3_000
WRITE_RATE_PER_S = 1_500
SEED = 20261203

WRITER_SCRIPT = f"""
import sys, time
from tests.alert_writer import AnalysisdWriter
from tests.test_service import HIT_IP, alert_line
with AnalysisdWriter(sys.argv[1], flush_interval_s=0.2, buffer_bytes=4096) as w:
    started = time.monotonic()
    for seq in range({ALERT_COUNT}):
        w.write(alert_line(seq, HIT_IP if seq % {HIT_EVERY} == 0 else "192.0.2.77"))
        if (seq + 1) % {ROTATE_EVERY} == 0:
            w.rotate()
        ahead_s = seq / {WRITE_RATE_PER_S} - (time.monotonic() - started)
        if ahead_s > 0:
            time.sleep(ahead_s)
"""


def complete_records(path: Path) -> tuple[list[dict], int]:
    """Parsed output lines, and how many lines were cut by a kill."""
    records, cut = [], 0
    for line in path.read_bytes().splitlines():
        try:
            records.append(orjson.loads(line))
        except orjson.JSONDecodeError:
            cut += 1
    return records, cut


def test_every_hit_is_written_exactly_once_across_sigkills_and_rotations(tmp_path):
    (tmp_path / "store").mkdir()
    plant_indicators(store_paths_in(tmp_path / "store"), PLANTED)
    config = write_config(tmp_path, tailer={"reload_interval_s": 5})
    output = tmp_path / "out" / "enrichment.json"
    expected = {f"1796342399.{seq}" for seq in range(0, ALERT_COUNT, HIT_EVERY)}
    chance = random.Random(SEED)

    tailer = Tailer(config).start()
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER_SCRIPT, str(tmp_path / "alerts")],
        cwd=REPO,
        env=clean_environ(),
    )
    kills = 0
    try:
        while writer.poll() is None:
            time.sleep(chance.uniform(0.5, 2.5))
            tailer.proc.send_signal(signal.SIGKILL)
            tailer.proc.wait()
            kills += 1
            tailer = Tailer(config).start()
        assert writer.returncode == 0

        def all_written() -> bool:
            return output.exists() and output.read_bytes().count(b"\n") >= len(expected)

        assert wait_until(all_written, 30)
        time.sleep(1.0)
        assert tailer.stop() == 0
    finally:
        tailer.kill()
        writer.kill()

    records, cut = complete_records(output)
    seen = Counter(record["alert"]["id"] for record in records)
    assert kills >= 5
    assert set(seen) == expected
    assert [key for key, count in seen.items() if count > 1] == []
    assert cut <= kills
