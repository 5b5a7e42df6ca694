"""The checkpoint keeps the tail position, emitted keys and counters on disk."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tailer.checkpoint import CheckpointError, CheckpointStore
from tailer.follow import FileIdentity, Position

REPO = Path(__file__).resolve().parent.parent


def _position(offset: int = 1234) -> Position:
    identity = FileIdentity(2049, 5308565, "ab" * 16)
    return Position(identity, offset, "/var/ossec/logs/alerts/alerts.json")


def test_first_start_has_no_position(tmp_path):
    """A new state directory holds no position yet."""
    with CheckpointStore(tmp_path / "state") as store:
        loaded = store.load()

    assert loaded is None


def test_saved_position_survives_reopening(tmp_path):
    """save then a new store on the same directory loads the same Position."""
    with CheckpointStore(tmp_path) as store:
        store.save(_position(10))
        store.save(_position(20))
    with CheckpointStore(tmp_path) as store:
        loaded = store.load()

    assert loaded == _position(20)


def test_state_dir_and_database_are_private(tmp_path):
    """A created state directory is 0750 and state.db 0640."""
    with CheckpointStore(tmp_path / "new" / "state") as store:
        db_mode = stat.S_IMODE(os.stat(store.path).st_mode)
    dir_mode = stat.S_IMODE(os.stat(tmp_path / "new" / "state").st_mode)

    assert dir_mode == 0o750
    assert db_mode == 0o640


def test_remembered_keys_are_seen_until_pruned(tmp_path):
    """remember marks keys seen; prune forgets only those older than the window."""
    with CheckpointStore(tmp_path) as store:
        store.remember(["old-1", "old-2"], now=1000.0)
        store.remember(["new-1"], now=5000.0)
        before = [store.seen(k) for k in ("old-1", "new-1", "never")]
        removed = store.prune(3600, now=5000.0)
        after = [store.seen(k) for k in ("old-1", "old-2", "new-1")]

    assert before == [True, True, False]
    assert removed == 2
    assert after == [False, False, True]


def test_remembered_keys_survive_a_restart(tmp_path):
    """Keys written before a restart are still seen after it."""
    with CheckpointStore(tmp_path) as store:
        store.remember(["1796342399.7|203.0.113.7|data.srcip"])
    with CheckpointStore(tmp_path) as store:
        seen = store.seen("1796342399.7|203.0.113.7|data.srcip")

    assert seen is True


def test_counters_round_trip_as_json(tmp_path):
    """save_counters stores a dict that load_counters returns unchanged."""
    counters = {"lines": 12, "hits": 3, "oversized": 0}
    with CheckpointStore(tmp_path) as store:
        empty = store.load_counters()
        store.save_counters(counters)
    with CheckpointStore(tmp_path) as store:
        loaded = store.load_counters()

    assert empty == {}
    assert loaded == counters


def test_unwritable_state_dir_raises_checkpoint_error(tmp_path):
    """A state path that is a file gives a named error naming the path."""
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")

    with pytest.raises(CheckpointError, match="state.db"):
        CheckpointStore(blocker)


def test_position_saved_before_sigkill_is_loaded_after(tmp_path):
    """A process killed with SIGKILL mid-stream leaves its last committed save."""
    script = textwrap.dedent(
        f"""
        import sys
        from tailer.checkpoint import CheckpointStore
        from tailer.follow import FileIdentity, Position
        store = CheckpointStore({str(tmp_path)!r})
        offset = 0
        while True:
            offset += 100
            store.save(Position(FileIdentity(1, 2, "ff"), offset, "a"))
            if offset == 5000:
                print("saved", flush=True)
        """
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE
    )
    assert child.stdout.readline() == b"saved\n"
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=10)

    with CheckpointStore(tmp_path) as store:
        loaded = store.load()

    assert child.returncode == -signal.SIGKILL
    assert loaded.offset >= 5000 and loaded.offset % 100 == 0
    assert loaded.identity == FileIdentity(1, 2, "ff")
