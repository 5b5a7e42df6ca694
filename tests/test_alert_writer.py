"""The test writer behaves like analysisd and monitord on disk."""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

from tests.alert_writer import AnalysisdWriter, alert_line

DAY = dt.date(2026, 12, 3)
REPO = Path(__file__).resolve().parent.parent


def test_alerts_json_is_a_hard_link_to_the_dated_piece(tmp_path):
    """alerts.json and ossec-alerts-DD.json are one inode with two names."""
    with AnalysisdWriter(tmp_path, day=DAY, flush_interval_s=None) as writer:
        piece = writer.current_piece
        link = os.stat(tmp_path / "alerts.json")

    assert piece == tmp_path / "2026" / "Dec" / "ossec-alerts-03.json"
    assert link.st_ino == os.stat(piece).st_ino
    assert link.st_nlink == 2


def test_rotation_gives_alerts_json_a_new_inode_and_keeps_the_old_piece(tmp_path):
    """rotate() re-links alerts.json to -001; the old buffer lands in the old piece."""
    with AnalysisdWriter(tmp_path, day=DAY, flush_interval_s=None) as writer:
        writer.write(alert_line(1))
        before = os.stat(tmp_path / "alerts.json").st_ino
        new_piece = writer.rotate()
        after = os.stat(tmp_path / "alerts.json").st_ino

    old_piece = tmp_path / "2026" / "Dec" / "ossec-alerts-03.json"
    assert new_piece.name == "ossec-alerts-03-001.json"
    assert before != after == os.stat(new_piece).st_ino
    assert old_piece.read_bytes() == alert_line(1) + b"\n"


def test_empty_previous_piece_is_removed_at_rotation(tmp_path):
    """Like analysisd, an empty file is unlinked rather than kept."""
    with AnalysisdWriter(tmp_path, day=DAY, flush_interval_s=None) as writer:
        writer.rotate()

    assert not (tmp_path / "2026" / "Dec" / "ossec-alerts-03.json").exists()


def test_full_buffer_puts_a_partial_line_on_disk(tmp_path):
    """Past buffer_bytes the first buffer_bytes go out, cutting a line in two."""
    with AnalysisdWriter(
        tmp_path, day=DAY, flush_interval_s=None, buffer_bytes=100
    ) as writer:
        writer.write(alert_line(1, pad_bytes=150))
        on_disk = (tmp_path / "alerts.json").read_bytes()

    line = alert_line(1, pad_bytes=150) + b"\n"
    assert len(on_disk) == len(line) // 100 * 100 > 0
    assert line.startswith(on_disk) and not on_disk.endswith(b"\n")


def test_flush_interval_writes_the_buffer_out(tmp_path):
    """A buffered line reaches the disk within a few flush intervals."""
    with AnalysisdWriter(tmp_path, day=DAY, flush_interval_s=0.05) as writer:
        writer.write(alert_line(1))
        time.sleep(0.3)
        on_disk = (tmp_path / "alerts.json").read_bytes()

    assert on_disk == alert_line(1) + b"\n"


def test_compress_previous_gzips_base_piece_and_leaves_counters(tmp_path):
    """monitord's job: base piece of an old day -> .gz + .sum, -NNN left plain."""
    with AnalysisdWriter(tmp_path, day=DAY, flush_interval_s=None) as writer:
        writer.write(alert_line(1))
        writer.rotate()
        writer.write(alert_line(2))
        writer.rotate(DAY + dt.timedelta(days=1))
        writer.write(alert_line(3))
        done = writer.compress_previous()

    folder = tmp_path / "2026" / "Dec"
    body = gzip.decompress((folder / "ossec-alerts-03.json.gz").read_bytes())
    sums = (folder / "ossec-alerts-03.json.sum").read_text()
    assert done == [folder / "ossec-alerts-03.json.gz"]
    assert body == alert_line(1) + b"\n"
    assert f"sha256={hashlib.sha256(body).hexdigest()}" in sums
    assert not (folder / "ossec-alerts-03.json").exists()
    assert (folder / "ossec-alerts-03-001.json").exists()


def test_command_line_writer_writes_count_lines_across_rotations(tmp_path):
    """python -m tests.alert_writer writes every line once over several pieces."""
    result = subprocess.run(
        [sys.executable, "-m", "tests.alert_writer", "--dir", str(tmp_path),
         "--count", "100", "--rotate-every", "30"],
        cwd=REPO, timeout=30,
    )  # fmt: skip

    pieces = sorted(tmp_path.glob("*/*/ossec-alerts-*.json"))
    lines = b"".join(p.read_bytes() for p in pieces).splitlines()
    assert result.returncode == 0
    assert len(pieces) == 4
    assert len(lines) == 100 and len(set(lines)) == 100
