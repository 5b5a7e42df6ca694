"""Saving the checkpoint off the run loop.

Making the output durable (`fsync`) and committing the checkpoint with a synced
SQLite write can each wait for seconds behind other writeback on a busy disk, for
instance while a sync writes the IOC store. Done in the loop, that wait would hold
back every alert behind it. The loop hands each position over once every
enrichment before it has been written; this thread syncs the output to disk and
only then saves the position, so a saved position never runs ahead of a durable
output. When positions arrive faster than they are saved, only the newest one is
saved: it covers the older ones.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from typing import Any

from sync.logs import kv
from tailer.checkpoint import CheckpointError, CheckpointStore
from tailer.follow import Position

log = logging.getLogger(__name__)


@dataclass
class _Pending:
    position: Position | None = None
    # Duplicates of the output descriptors to sync before the position is saved.
    output_fds: tuple[int, ...] = ()
    status: dict[str, Any] | None = None


class CheckpointSaver:
    """A thread that syncs the output, then saves positions and status."""

    def __init__(self, checkpoint: CheckpointStore) -> None:
        self.checkpoint = checkpoint
        self._pending = _Pending()
        self._changed = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(
            target=self._run, name="checkpoint-saver", daemon=True
        )
        self._thread.start()

    def submit(
        self,
        position: Position | None,
        *,
        output_fd: int | None = None,
        status: dict[str, Any] | None = None,
    ) -> None:
        """Queue a position (with a dup of the output descriptor) and status."""
        with self._changed:
            pending = self._pending
            if position is not None:
                pending.position = position
            if output_fd is not None:
                pending.output_fds += (output_fd,)
            if status is not None:
                pending.status = status
            self._changed.notify()

    def close(self, timeout_s: float = 5.0) -> None:
        """Save what is pending, then stop the thread."""
        with self._changed:
            self._closing = True
            self._changed.notify()
        self._thread.join(timeout_s)

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._has_work() and not self._closing:
                    self._changed.wait()
                pending, self._pending = self._pending, _Pending()
                closing = self._closing
            self._save(pending)
            if closing and not self._has_work():
                return

    def _has_work(self) -> bool:
        pending = self._pending
        return bool(pending.position or pending.output_fds or pending.status)

    def _save(self, pending: _Pending) -> None:
        try:
            for fd in pending.output_fds:
                os.fsync(fd)
            if pending.position is not None:
                self.checkpoint.save(pending.position)
            if pending.status is not None:
                self.checkpoint.save_counters(pending.status)
        except (OSError, CheckpointError) as err:
            # The next submission saves a newer position; a restart in between
            # re-reads from the older one and the output dedup drops repeats.
            log.error(kv("checkpoint_save_failed", error=err))
        finally:
            for fd in pending.output_fds:
                os.close(fd)
