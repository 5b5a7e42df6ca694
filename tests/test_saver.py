"""The checkpoint saver: off the loop, output synced first, newest position wins."""

from __future__ import annotations

import os
import time

from tailer.checkpoint import CheckpointStore
from tailer.follow import FileIdentity, Position
from tailer.saver import CheckpointSaver


def position(offset: int) -> Position:
    return Position(FileIdentity(1, 2, "f"), offset, "/var/ossec/logs/alerts.json")


class SlowCheckpoint(CheckpointStore):
    """Saves like the real store, after a pause, recording the order of events."""

    def __init__(self, state_dir, events: list, pause_s: float) -> None:
        super().__init__(state_dir)
        self.events, self.pause_s = events, pause_s

    def save(self, saved: Position) -> None:
        time.sleep(self.pause_s)
        self.events.append(("save", saved.offset))
        super().save(saved)


def test_submit_returns_at_once_while_a_save_waits_on_the_disk(tmp_path):
    checkpoint = SlowCheckpoint(tmp_path / "state", [], pause_s=0.5)
    saver = CheckpointSaver(checkpoint)

    started = time.monotonic()
    saver.submit(position(100))
    saver.submit(position(200))
    submit_s = time.monotonic() - started
    saver.close()

    assert submit_s < 0.1
    assert checkpoint.load().offset == 200
    checkpoint.close()


def test_newest_position_covers_the_ones_still_waiting(tmp_path):
    events: list = []
    checkpoint = SlowCheckpoint(tmp_path / "state", events, pause_s=0.2)
    saver = CheckpointSaver(checkpoint)

    for offset in range(1, 6):
        saver.submit(position(offset * 10))
        time.sleep(0.01)
    saver.close()

    saved = [offset for event, offset in events if event == "save"]
    assert saved[-1] == 50
    assert len(saved) < 5
    checkpoint.close()


def test_output_is_synced_before_the_position_is_saved(tmp_path, monkeypatch):
    events: list = []
    checkpoint = SlowCheckpoint(tmp_path / "state", events, pause_s=0.0)
    output = os.open(tmp_path / "out.json", os.O_CREAT | os.O_WRONLY, 0o640)
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        events.append(("fsync", fd))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    saver = CheckpointSaver(checkpoint)

    saver.submit(position(300), output_fd=os.dup(output), status={"counts": 1})
    saver.close()

    assert [event for event, _ in events] == ["fsync", "save"]
    assert checkpoint.load_counters() == {"counts": 1}
    os.close(output)
    checkpoint.close()
