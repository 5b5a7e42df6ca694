"""The follower returns every alert line exactly once, in order, through
analysisd's rotations, truncations, deletions and restarts."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tailer.follow import (
    Change,
    FileIdentity,
    FileState,
    Follower,
    Position,
    classify,
    find_by_identity,
    fingerprint_of,
    list_pieces,
    load_fingerprint,
)
from tests.alert_writer import AnalysisdWriter, alert_line

DATA = Path(__file__).parent / "data" / "rotation"
DAY = dt.date(2026, 12, 3)
REPO = Path(__file__).resolve().parent.parent


def _stat(dev=1, ino=10, size=100) -> os.stat_result:
    return os.stat_result((0o100644, ino, dev, 1, 0, 0, size, 0, 0, 0))


def _known(dev=1, ino=10, offset=100, fingerprint="aa") -> FileState:
    return FileState(FileIdentity(dev, ino, fingerprint), offset)


@pytest.mark.parametrize(
    ("known", "observed", "fingerprint", "expected"),
    [
        (_known(), _stat(), "aa", Change.UNCHANGED),
        (_known(), _stat(size=150), "aa", Change.GREW),
        (_known(), _stat(ino=11), "bb", Change.ROTATED),
        (_known(), _stat(dev=2), "aa", Change.ROTATED),
        (_known(), _stat(size=40), "aa", Change.TRUNCATED),
        (_known(), _stat(size=40), "", Change.TRUNCATED),
        (_known(), _stat(size=500), "bb", Change.REPLACED_SAME_INODE),
        (_known(fingerprint=""), _stat(size=500), "bb", Change.GREW),
        (_known(), _stat(size=100), "", Change.UNCHANGED),
        (_known(), None, "", Change.MISSING),
        (None, None, "", Change.MISSING),
        (None, _stat(), "aa", Change.ROTATED),
    ],
)
def test_classify_decides_from_stat_and_fingerprint(
    known, observed, fingerprint, expected
):
    """classify maps each (known, observed) pair to exactly one change."""
    change = classify(known, observed, observed_fingerprint=fingerprint)

    assert change is expected


def test_fingerprint_is_empty_until_the_first_line_is_complete():
    """A first line without its newline gives no fingerprint; a capped one does."""
    assert fingerprint_of(b'{"partial":') == ""
    assert fingerprint_of(b"a\nb") == fingerprint_of(b"a\nzzz") != ""
    assert fingerprint_of(b"x" * 5000) == fingerprint_of(b"x" * 4096 + b"y")


# -- helpers -------------------------------------------------------------------


@pytest.fixture(params=[True, False], ids=["watchdog", "poll"])
def use_watchdog(request) -> bool:
    return request.param


@pytest.fixture
def alerts_dir(tmp_path) -> Path:
    folder = tmp_path / "logs" / "alerts"
    folder.mkdir(parents=True)
    return folder


def _writer(alerts_dir: Path, **kwargs) -> AnalysisdWriter:
    kwargs.setdefault("flush_interval_s", None)
    return AnalysisdWriter(alerts_dir, day=DAY, **kwargs)


def _follower(alerts_dir: Path, use_watchdog: bool, **kwargs) -> Follower:
    kwargs.setdefault("start_at", "beginning")
    kwargs.setdefault("rotate_grace_s", 0.2)
    return Follower(
        alerts_dir / "alerts.json",
        use_watchdog=use_watchdog,
        poll_interval_s=0.02,
        **kwargs,
    )


def _seqs(lines: list[bytes]) -> list[int]:
    return [json.loads(line)["seq"] for line in lines]


def _collect(follower: Follower, count: int, timeout_s: float = 10) -> list[int]:
    """Read until ``count`` lines arrived (or the timeout); return their seqs."""
    lines: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    while len(lines) < count and time.monotonic() < deadline:
        batch = follower.read_batch()
        lines += batch.lines
        if not batch.lines:
            follower.wait(0.05)
    return _seqs(lines)


def _idle(follower: Follower, duration_s: float) -> list[bytes]:
    """Read for ``duration_s`` and return whatever arrived (should be nothing)."""
    lines: list[bytes] = []
    deadline = time.monotonic() + duration_s
    while time.monotonic() < deadline:
        lines += follower.read_batch().lines
        follower.wait(0.02)
    return lines


def _write(writer: AnalysisdWriter, seqs, *, flush: bool = True) -> None:
    for seq in seqs:
        writer.write(alert_line(seq))
    if flush:
        writer.flush()


# -- reading one file ------------------------------------------------------------


def test_partial_line_waits_for_its_newline(alerts_dir, use_watchdog):
    """Bytes without a newline are held back until the newline arrives."""
    writer = _writer(alerts_dir)
    line = alert_line(1)
    writer.write_raw(line[:20])
    with _follower(alerts_dir, use_watchdog) as follower:
        first = follower.read_batch()
        writer.write_raw(line[20:] + b"\n")
        second = _collect(follower, 1)

    assert first.lines == []
    assert first.position.offset == 0
    assert second == [1]
    writer.close()


def test_oversized_line_is_skipped_and_next_line_is_intact(alerts_dir, use_watchdog):
    """A line over the cap is dropped even across reads; alignment is kept."""
    writer = _writer(alerts_dir)
    _write(writer, [1])
    with _follower(alerts_dir, use_watchdog, max_line_bytes=300) as follower:
        before = _collect(follower, 1)
        writer.write_raw(b"y" * 400)
        middle = follower.read_batch()
        writer.write_raw(b"y" * 400 + b"\n")
        _write(writer, [2, 3])
        after = _collect(follower, 2)

    assert before == [1]
    assert middle.lines == []
    assert after == [2, 3]
    assert follower.oversized_count == 1
    writer.close()


def test_start_at_end_skips_existing_lines_and_a_partial_tail(alerts_dir, use_watchdog):
    """start_at=end begins after the last complete line already in the file."""
    writer = _writer(alerts_dir)
    _write(writer, [1, 2])
    tail = alert_line(3)
    writer.write_raw(tail[:10])
    with _follower(alerts_dir, use_watchdog, start_at="end") as follower:
        writer.write_raw(tail[10:] + b"\n")
        _write(writer, [4])
        got = _collect(follower, 2)

    assert got == [3, 4]
    writer.close()


def test_missing_file_at_start_is_read_once_it_appears(alerts_dir, use_watchdog):
    """A follower started before alerts.json exists reads it from 0 later."""
    with _follower(alerts_dir, use_watchdog, start_at="end") as follower:
        nothing = follower.read_batch()
        writer = _writer(alerts_dir)
        _write(writer, [1, 2])
        got = _collect(follower, 2)

    assert nothing.lines == [] and nothing.position is None
    assert got == [1, 2]
    writer.close()


# -- rotation ------------------------------------------------------------------------


def test_rotation_drains_old_file_then_reads_new_one_from_zero(
    alerts_dir, use_watchdog
):
    """Lines reaching the old piece after the re-link still arrive, before new ones."""
    writer = _writer(alerts_dir, buffer_bytes=1 << 20)
    _write(writer, range(0, 5))
    old_piece = writer.current_piece
    with _follower(alerts_dir, use_watchdog, rotate_grace_s=0.5) as follower:
        first = _collect(follower, 5)
        _write(writer, range(5, 10), flush=False)
        writer.rotate()
        _write(writer, range(10, 15))
        drained = _seqs(follower.read_batch().lines)
        with open(old_piece, "ab") as late:
            late.write(alert_line(99) + b"\n")
        rest = _collect(follower, 6)

    assert first == [0, 1, 2, 3, 4]
    assert drained == [5, 6, 7, 8, 9]
    assert rest == [99, 10, 11, 12, 13, 14]
    writer.close()


def test_two_rotations_between_two_looks_lose_nothing(alerts_dir, use_watchdog):
    """The piece written and rotated away unseen is read from the archive folder."""
    writer = _writer(alerts_dir)
    _write(writer, [0])
    with _follower(alerts_dir, use_watchdog) as follower:
        first = _collect(follower, 1)
        _write(writer, [1, 2])
        writer.rotate()
        _write(writer, [3, 4])
        writer.rotate()
        _write(writer, [5, 6])
        rest = _collect(follower, 6)
        extra = _idle(follower, 0.4)

    assert first == [0]
    assert rest == [1, 2, 3, 4, 5, 6]
    assert extra == []
    writer.close()


def test_midnight_rotation_with_gzip_of_old_piece_loses_nothing(
    alerts_dir, use_watchdog
):
    """Day change plus monitord's gzip of the old piece during the grace period."""
    writer = _writer(alerts_dir)
    _write(writer, range(0, 3))
    with _follower(alerts_dir, use_watchdog, rotate_grace_s=0.3) as follower:
        first = _collect(follower, 3)
        _write(writer, range(3, 6))
        writer.rotate(DAY + dt.timedelta(days=1))
        _write(writer, range(6, 9))
        drained = _seqs(follower.read_batch().lines)
        compressed = writer.compress_previous()
        rest = drained + _collect(follower, 6 - len(drained))

    assert [p.name for p in compressed] == ["ossec-alerts-03.json.gz"]
    assert first + rest == list(range(9))
    writer.close()


def test_truncation_restarts_at_zero(alerts_dir, use_watchdog):
    """A file emptied in place is read again from its start."""
    writer = _writer(alerts_dir)
    _write(writer, range(0, 5))
    with _follower(alerts_dir, use_watchdog) as follower:
        first = _collect(follower, 5)
        writer.truncate()
        _write(writer, [7])
        rest = _collect(follower, 1)

    assert first == [0, 1, 2, 3, 4]
    assert rest == [7]
    writer.close()


def test_file_rewritten_longer_between_looks_is_read_from_zero(
    alerts_dir, use_watchdog
):
    """Truncated and regrown past the offset: the first-line fingerprint tells."""
    writer = _writer(alerts_dir)
    _write(writer, [0])
    with _follower(alerts_dir, use_watchdog) as follower:
        first = _collect(follower, 1)
        writer.truncate()
        _write(writer, [10, 11, 12])
        rest = _collect(follower, 3)

    assert first == [0]
    assert rest == [10, 11, 12]
    writer.close()


def test_deleted_and_recreated_file_is_followed(alerts_dir, use_watchdog):
    """While the path is gone nothing crashes; the new file is read from 0."""
    writer = _writer(alerts_dir)
    _write(writer, [0, 1])
    with _follower(alerts_dir, use_watchdog) as follower:
        first = _collect(follower, 2)
        os.unlink(alerts_dir / "alerts.json")
        missing = _idle(follower, 0.1)
        os.link(writer.current_piece, alerts_dir / "alerts.json")
        writer.delete_and_recreate()
        _write(writer, [2, 3])
        rest = _collect(follower, 2)

    assert first == [0, 1]
    assert missing == []
    assert rest == [2, 3]
    writer.close()


def test_writer_subprocess_rotating_fast_loses_and_repeats_nothing(
    alerts_dir, use_watchdog
):
    """2,000 lines with a rotation every 150, read live: each exactly once."""
    seed = _writer(alerts_dir)
    seed.close()
    with _follower(alerts_dir, use_watchdog) as follower:
        writer = subprocess.Popen(
            [sys.executable, "-m", "tests.alert_writer", "--dir", str(alerts_dir),
             "--count", "2000", "--rotate-every", "150", "--rate", "4000",
             "--flush-interval-s", "0.02"],
            cwd=REPO,
        )  # fmt: skip
        got = _collect(follower, 2000, timeout_s=30)
        writer.wait(timeout=30)
        extra = _idle(follower, 0.5)

    assert writer.returncode == 0
    assert got == list(range(2000))
    assert extra == []


# -- restart -----------------------------------------------------------------------


def _position_after(alerts_dir: Path, count: int) -> Position:
    with _follower(alerts_dir, False) as follower:
        batch = follower.read_batch()
    return Position(batch.position.identity, batch.line_ends[count - 1], "x")


def test_restart_resumes_in_plain_piece_rotated_while_down(alerts_dir, use_watchdog):
    """The checkpointed file was rotated away: finish it, then the later pieces."""
    writer = _writer(alerts_dir)
    _write(writer, range(0, 10))
    checkpoint = _position_after(alerts_dir, 4)
    _write(writer, range(10, 12))
    writer.rotate()
    _write(writer, range(12, 14))
    writer.rotate()
    _write(writer, range(14, 16))

    with _follower(alerts_dir, use_watchdog, start=checkpoint) as follower:
        got = _collect(follower, 12)
        extra = _idle(follower, 0.3)

    assert got == list(range(4, 16))
    assert extra == []
    writer.close()


def test_restart_waits_for_the_late_flush_of_a_piece_rotated_just_before(
    alerts_dir, use_watchdog
):
    """analysisd's last flush into a piece rotated just before a restart arrives."""
    writer = _writer(alerts_dir)
    _write(writer, range(0, 6))
    checkpoint = _position_after(alerts_dir, 2)
    old_piece = os.path.realpath(alerts_dir / "alerts.json")
    old_piece = next(
        path
        for path in alerts_dir.rglob("ossec-alerts-*.json")
        if path.stat().st_ino == os.stat(old_piece).st_ino
    )
    writer.rotate()
    _write(writer, [100, 101])

    with _follower(
        alerts_dir, use_watchdog, start=checkpoint, rotate_grace_s=1.0
    ) as follower:
        first = _collect(follower, 4)
        before_flush = _idle(follower, 0.1)
        with open(old_piece, "ab") as late:
            late.write(alert_line(6) + b"\n")
        rest = _collect(follower, 3)

    assert first == [2, 3, 4, 5]
    assert before_flush == []
    assert rest == [6, 100, 101]
    writer.close()


def test_restart_resumes_in_gzipped_piece_by_uncompressed_offset(
    alerts_dir, use_watchdog
):
    """The checkpointed piece was gzipped while down: matched by first line."""
    writer = _writer(alerts_dir)
    _write(writer, range(0, 10))
    checkpoint = _position_after(alerts_dir, 7)
    writer.rotate()
    _write(writer, [10])
    writer.rotate(DAY + dt.timedelta(days=1))
    _write(writer, [11, 12])
    writer.compress_previous()

    with _follower(alerts_dir, use_watchdog, start=checkpoint) as follower:
        got = _collect(follower, 6)

    assert not writer.alerts_dir.joinpath("2026/Dec/ossec-alerts-03.json").exists()
    assert got == [7, 8, 9, 10, 11, 12]
    writer.close()


def test_restart_in_same_file_resumes_at_offset(alerts_dir, use_watchdog):
    """The checkpointed file is still alerts.json: continue right after it."""
    writer = _writer(alerts_dir)
    _write(writer, range(0, 6))
    checkpoint = _position_after(alerts_dir, 2)

    with _follower(alerts_dir, use_watchdog, start=checkpoint) as follower:
        got = _collect(follower, 4)

    assert got == [2, 3, 4, 5]
    writer.close()


def test_reused_inode_with_other_first_line_is_read_from_zero(alerts_dir, use_watchdog):
    """Same device and inode as the checkpoint but another file: not resumed."""
    writer = _writer(alerts_dir)
    _write(writer, range(0, 6))
    real = _position_after(alerts_dir, 3)
    stale = FileIdentity(real.identity.device, real.identity.inode, "0" * 32)

    with _follower(
        alerts_dir, use_watchdog, start=Position(stale, real.offset, "x")
    ) as follower:
        got = _collect(follower, 6)

    assert got == list(range(6))
    writer.close()


# -- the real tree written by analysisd and monitord ---------------------------------


@pytest.fixture
def midnight_tree(tmp_path) -> Path:
    """The real midnight tree with alerts.json hard-linked to the newest piece."""
    tree = tmp_path / "alerts"
    shutil.copytree(DATA / "midnight", tree)
    os.link(tree / "2026/Dec/ossec-alerts-04-003.json", tree / "alerts.json")
    return tree


def _real_ids(tree: Path) -> list[str]:
    ids = []
    for piece in list_pieces(tree):
        opener = __import__("gzip").open if piece.compressed else open
        with opener(piece.path, "rb") as stream:
            ids += [json.loads(line)["id"] for line in stream]
    return ids


def test_real_tree_pieces_are_ordered_by_day_and_counter(midnight_tree):
    """Day 03 (gzipped base, plain -NNN) comes before day 04, counters in order."""
    names = [p.path.name for p in list_pieces(midnight_tree)]

    assert names == [
        "ossec-alerts-03.json.gz", "ossec-alerts-03-001.json",
        "ossec-alerts-03-002.json", "ossec-alerts-03-003.json",
        "ossec-alerts-04.json", "ossec-alerts-04-001.json",
        "ossec-alerts-04-002.json", "ossec-alerts-04-003.json",
    ]  # fmt: skip


def test_real_tree_find_by_identity_matches_inode_or_gzip_fingerprint(midnight_tree):
    """A plain piece is found by dev+inode, the gzipped one by its first line."""
    plain = midnight_tree / "2026/Dec/ossec-alerts-03-002.json"
    stat = os.stat(plain)
    gz = midnight_tree / "2026/Dec/ossec-alerts-03.json.gz"
    lost = FileIdentity(stat.st_dev, 999_999_999, load_fingerprint(gz))

    assert find_by_identity(midnight_tree, FileIdentity(stat.st_dev, stat.st_ino)) == (
        plain
    )
    assert find_by_identity(midnight_tree, lost) == gz
    assert find_by_identity(midnight_tree, FileIdentity(0, 1, "f" * 32)) is None


def test_real_tree_resume_inside_gzipped_day_reads_all_346_alerts_once(
    midnight_tree,
):
    """From line 10 of the gzipped base piece to alerts.json: 336 ids, in order."""
    gz = midnight_tree / "2026/Dec/ossec-alerts-03.json.gz"
    with __import__("gzip").open(gz, "rb") as stream:
        offset = sum(len(next(stream)) for _ in range(10))
    start = Position(FileIdentity(1, 2, load_fingerprint(gz)), offset, "gone")
    expected = _real_ids(midnight_tree)

    with _follower(midnight_tree, False, start=start) as follower:
        got = [json.loads(line)["id"] for line in _raw(follower, 336)]
        extra = _idle(follower, 0.3)

    assert len(expected) == 346
    assert got == expected[10:]
    assert extra == []


def _raw(follower: Follower, count: int) -> list[bytes]:
    lines: list[bytes] = []
    deadline = time.monotonic() + 10
    while len(lines) < count and time.monotonic() < deadline:
        batch = follower.read_batch()
        lines += batch.lines
        if not batch.lines:
            follower.wait(0.05)
    return lines


# -- a reader killed with SIGKILL while analysisd keeps rotating ---------------------

_READER = """
import json, os, sys
from tailer.checkpoint import CheckpointStore
from tailer.follow import Follower
alerts, state, out = sys.argv[1:4]
store = CheckpointStore(state)
follower = Follower(alerts, start=store.load(), start_at="beginning",
                    poll_interval_s=0.02, rotate_grace_s=0.2)
print("ready", flush=True)
with open(out, "ab") as sink:
    while True:
        batch = follower.read_batch()
        if batch.lines:
            sink.write(b"".join(line + b"\\n" for line in batch.lines))
            sink.flush()
            os.fsync(sink.fileno())
            store.save(batch.position)
        else:
            follower.wait()
"""


def _start_reader(alerts_dir: Path, tmp_path: Path) -> subprocess.Popen:
    args = [str(alerts_dir / "alerts.json"), str(tmp_path / "state")]
    args.append(str(tmp_path / "out.jsonl"))
    reader = subprocess.Popen(
        [sys.executable, "-c", _READER, *args], cwd=REPO, stdout=subprocess.PIPE
    )
    assert reader.stdout.readline() == b"ready\n"
    return reader


def _read_out(tmp_path: Path) -> list[int]:
    out = tmp_path / "out.jsonl"
    return _seqs(out.read_bytes().splitlines()) if out.exists() else []


def test_reader_killed_and_restarted_during_rotations_loses_nothing(
    alerts_dir, tmp_path
):
    """SIGKILL mid-stream, restart from the checkpoint: no line lost, replay
    starts at the last saved position."""
    _writer(alerts_dir).close()
    reader = _start_reader(alerts_dir, tmp_path)
    writer = subprocess.Popen(
        [sys.executable, "-m", "tests.alert_writer", "--dir", str(alerts_dir),
         "--count", "3000", "--rotate-every", "200", "--rate", "1500",
         "--flush-interval-s", "0.05"],
        cwd=REPO,
    )  # fmt: skip
    time.sleep(0.8)
    reader.send_signal(signal.SIGKILL)
    reader.wait(timeout=10)
    killed_at = len(_read_out(tmp_path))
    time.sleep(0.5)
    reader = _start_reader(alerts_dir, tmp_path)
    writer.wait(timeout=30)
    deadline = time.monotonic() + 15
    while len(set(_read_out(tmp_path))) < 3000 and time.monotonic() < deadline:
        time.sleep(0.1)
    reader.send_signal(signal.SIGTERM)
    reader.wait(timeout=10)
    got = _read_out(tmp_path)

    first, second = got[:killed_at], got[killed_at:]

    # At least once: lines written after the last save are read again.
    assert 0 < killed_at < 3000
    assert first == list(range(killed_at))
    assert second == list(range(second[0], 3000))
    assert second[0] <= killed_at
