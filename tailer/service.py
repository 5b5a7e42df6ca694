"""The run loop of `wazuh-ioc-tailer run`.

One step: read a batch of complete alert lines, match each through the shared
pipeline, write every hit, flush, then hand the position to the checkpoint
saver (`tailer/saver.py`), which syncs the output to disk before it saves the
position, off the loop. The checkpoint is thus saved only after the output
holds every enrichment of the lines before it;
the output offset saved beside it lets a restart re-learn what was already
written (`EnrichmentWriter.recover_tail`), so re-read lines emit nothing twice.

Around the step: index refresh every `tailer.reload_interval_s`, a stats line
every `tailer.stats_interval_s`, systemd notifications, and signals (SIGTERM
and SIGINT stop after the current batch, SIGHUP reloads the configuration and
reopens the output). Bad input never stops the loop; a broken file or store is
retried with back-off.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sync.logs import kv
from sync.store import StoreError, StoreReader, store_paths
from tailer.checkpoint import CheckpointError, CheckpointStore
from tailer.follow import Batch, Follower, Position
from tailer.match import IndicatorIndex
from tailer.notify import Notifier
from tailer.output import EnrichmentWriter
from tailer.pipeline import Pipeline, build_pipeline, match_lines
from tailer.saver import CheckpointSaver
from tailer.stats import format_stats

log = logging.getLogger(__name__)

BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 30.0
STATUS_SAVE_INTERVAL_S = 10.0
# While busy, a checkpoint (two synced SQLite commits) at most this often; a
# crash re-reads at most this much, and the output dedup drops the repeats.
CHECKPOINT_INTERVAL_S = 0.5
BATCH_BYTES = 1 << 20

ConfigLoader = Callable[[], Any]


class Backoff:
    """Delays that double from BACKOFF_FIRST_S up to BACKOFF_MAX_S."""

    def __init__(self) -> None:
        self.delay_s = BACKOFF_FIRST_S

    def next_delay_s(self) -> float:
        delay_s = self.delay_s
        self.delay_s = min(self.delay_s * 2, BACKOFF_MAX_S)
        return delay_s

    def reset(self) -> None:
        self.delay_s = BACKOFF_FIRST_S


@dataclass
class Timers:
    """When each periodic task last ran (monotonic seconds)."""

    reload: float = field(default_factory=time.monotonic)
    stats: float = field(default_factory=time.monotonic)
    status: float = 0.0


class Service:
    """State of one `run`: configuration, index, pipeline, follower, writer."""

    def __init__(self, cfg: Any, *, reload_config: ConfigLoader | None = None) -> None:
        self.cfg = cfg
        self.reload_config = reload_config
        self.stop = threading.Event()
        self.hangup = False
        self.notifier = Notifier.from_env()
        self.timers = Timers()
        self.checkpoint: CheckpointStore | None = None
        self.saver: CheckpointSaver | None = None
        self.index: IndicatorIndex | None = None
        self.pipeline: Pipeline | None = None
        self.writer: EnrichmentWriter | None = None
        self.follower: Follower | None = None
        self.saved: Position | None = None
        self.saved_at = 0.0
        self.saved_output: tuple[int, int] | None = None
        self.unsynced_output = False
        self.in_batch = False

    # -- lifecycle -----------------------------------------------------------

    def run(self) -> int:
        """Run until SIGTERM/SIGINT; return the exit code (0)."""
        self.install_signals()
        log.info("tailer_start alerts=%s", self.cfg.tailer.alerts_path)
        # Ready at once: waiting for a missing store or alerts file is a
        # state to report (STATUS=), not a failed start to be restarted.
        self.notifier.ready("starting")
        try:
            if self.start():
                self.notifier.status(f"tailing {self.cfg.tailer.alerts_path}")
                self.loop()
        finally:
            self.shutdown()
        return 0

    def install_signals(self) -> None:
        def on_stop(signum: int, _frame: object) -> None:
            log.info("signal_received signal=%s", signal.Signals(signum).name)
            self.stop.set()

        def on_hangup(_signum: int, _frame: object) -> None:
            self.hangup = True

        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGINT, on_stop)
        signal.signal(signal.SIGHUP, on_hangup)

    def start(self) -> bool:
        """Open checkpoint, follower, index and writer; False when stopped first.

        The follower comes before the store: its first position is saved as
        soon as alerts.json is open, so alerts written while the store is still
        missing (before the first sync) are matched once it appears.
        """
        self.checkpoint = self.retry("checkpoint", self.open_checkpoint)
        if self.checkpoint is not None:
            self.saver = CheckpointSaver(self.checkpoint)
        self.follower = self.retry("alerts", self.open_follower)
        self.index = self.retry("store", self.open_index)
        if self.stop.is_set():
            return False
        self.pipeline = build_pipeline(self.cfg, self.index)
        self.writer = self.open_writer()
        return not self.stop.is_set()

    def shutdown(self) -> None:
        self.notifier.stopping()
        if self.follower is not None:
            # A batch cut short by an error is not covered by the output.
            if not self.in_batch:
                self.save_checkpoint(self.follower.position(), force=True)
            self.follower.close()
        if self.checkpoint is not None and self.pipeline is not None:
            self.save_status()
        if self.saver is not None:
            self.saver.close()
        if self.writer is not None:
            self.writer.close()
        if self.checkpoint is not None:
            self.checkpoint.close()
        if self.pipeline is not None:
            log.info(self.stats_line())
        log.info("tailer_stop")
        self.notifier.close()

    def retry(self, what: str, opener: Callable[[], Any]) -> Any:
        """Call opener until it succeeds or the service is stopped."""
        backoff = Backoff()
        while not self.stop.is_set():
            try:
                return opener()
            except (OSError, StoreError, CheckpointError) as err:
                delay_s = backoff.next_delay_s()
                log.error(kv("open_failed", what=what, error=err, retry_in_s=delay_s))
                self.notifier.status(f"waiting for {what}: {err}")
                self.wait_with_watchdog(delay_s)
        return None

    def wait_with_watchdog(self, delay_s: float) -> None:
        """Sleep until stopped or `delay_s` passed, still pinging the watchdog."""
        deadline = time.monotonic() + delay_s
        while not self.stop.is_set() and time.monotonic() < deadline:
            self.notifier.ping_if_due()
            self.stop.wait(min(1.0, max(0.0, deadline - time.monotonic())))

    # -- opening the parts ----------------------------------------------------

    def open_checkpoint(self) -> CheckpointStore:
        return CheckpointStore(self.cfg.tailer.state_dir)

    def open_index(self) -> IndicatorIndex:
        index = IndicatorIndex(StoreReader(store_paths(self.cfg)))
        self.timers.reload = time.monotonic()
        return index

    def open_writer(self) -> EnrichmentWriter:
        """Open the output and re-learn what was written after the checkpoint."""
        output = self.cfg.output
        writer = EnrichmentWriter(
            output.path,
            flood_window_s=output.flood_window_s,
            max_line_bytes=output.max_line_bytes,
        )
        if self.checkpoint.load() is not None:
            saved = self.checkpoint.load_counters().get("output", {})
            inode, offset = saved.get("inode"), saved.get("offset", 0)
            writer.recover_tail(offset, inode=inode)
            # Until the next checkpoint, the old offset still covers the position.
            self.saved_output = (inode, offset) if inode is not None else None
        return writer

    def open_follower(self) -> Follower:
        """Follow from the checkpoint (or start_at); save the first position now."""
        tailer = self.cfg.tailer
        self.saved = self.checkpoint.load()
        follower = Follower(
            tailer.alerts_path,
            start=self.saved,
            start_at=tailer.start_at,
            max_line_bytes=tailer.max_line_bytes,
            poll_interval_s=tailer.poll_interval_s,
        )
        self.follower = follower
        try:
            self.save_checkpoint(follower.position(), force=True)
        except Exception:
            follower.close()
            raise
        return follower

    # -- the loop ---------------------------------------------------------------

    def loop(self) -> None:
        backoff = Backoff()
        while not self.stop.is_set():
            try:
                self.step()
                backoff.reset()
            except Exception as err:  # the loop boundary: log, back off, resume
                delay_s = backoff.next_delay_s()
                saved = self.saved
                log.error(
                    kv(
                        "loop_error",
                        error=f"{type(err).__name__}: {err}",
                        path=saved.path if saved else None,
                        offset=saved.offset if saved else None,
                        retry_in_s=delay_s,
                    )
                )
                self.wait_with_watchdog(delay_s)
                self.restart_follower()

    def step(self) -> None:
        """Read and write one batch, or wait; then run what is due."""
        batch = self.follower.read_batch(BATCH_BYTES)
        if batch.lines:
            self.in_batch = True
            self.write_batch(batch)
            self.in_batch = False
            self.save_checkpoint(batch.position)
        else:
            idle_at = batch.position or self.follower.position()
            self.save_checkpoint(idle_at, force=True)
            self.follower.wait()
        self.run_periodic()

    def write_batch(self, batch: Batch) -> None:
        """Match every line and write its hits; flush before returning."""
        # TODO: matching runs on one core, so a backlog of large level >= 10
        # alerts drains at about 35,000 alerts/s (orjson.loads about 7 us and
        # extraction about 9 us of some 27 us each). Worker processes that
        # parse and extract, leaving only matching and writing here, would use
        # the other cores; a helper holding its own index measured only 1.24x
        # on a 2-vCPU host and costs 2 s to start with 1M indicators.
        ctx, writer = self.pipeline, self.writer
        path = batch.position.path if batch.position else "-"
        matches = match_lines(batch.lines, ctx, path=path, numbers=batch.line_ends)
        writer.write_hits(matches)
        self.unsynced_output |= bool(matches)
        writer.flush()

    def save_checkpoint(
        self, position: Position | None, *, force: bool = False
    ) -> None:
        """Hand over the position once the output holds the lines before it.

        Every enrichment is already written (one write per line); the saver
        syncs the output to disk before it saves the position that covers it.
        """
        if position is None or self.saver is None or position == self.saved:
            return
        if not force and time.monotonic() - self.saved_at < CHECKPOINT_INTERVAL_S:
            return
        output_fd = None
        if self.unsynced_output:
            output_fd = self.writer.sync_handle()
            self.unsynced_output = False
        self.saved_output = self.output_end() or self.saved_output
        self.saved, self.saved_at = position, time.monotonic()
        self.saver.submit(position, output_fd=output_fd, status=self.status())
        self.timers.status = time.monotonic()

    def output_end(self) -> tuple[int, int] | None:
        """(inode, size) of the output; None when it cannot be opened now.

        Keeping the older offset then is safe: a restart re-reads more.
        """
        if self.writer is None:
            return None
        try:
            return self.writer.position()
        except OSError as err:
            log.warning(kv("output_unavailable", path=self.writer.path, error=err))
            return None

    def save_status(self) -> None:
        """Hand the status to the saver (counters, indicator counts, output end)."""
        self.timers.status = time.monotonic()
        if self.saver is not None:
            self.saver.submit(None, status=self.status())

    def status(self) -> dict[str, Any]:
        """Counters for `status`, and the output end at the saved position.

        A restart re-reads the output from that offset (recover_tail), so it
        must be the output end when the position was saved, never later.
        """
        status: dict[str, Any] = {"saved_at": time.time(), "pid": os.getpid()}
        if self.saved_output is not None:
            inode, offset = self.saved_output
            status["output"] = {"inode": inode, "offset": offset}
        if self.pipeline is not None:
            status["counts"] = self.counters()
        if self.index is not None:
            status["indicators"] = self.index.counts
            status["index_loaded_at"] = self.index.loaded_at
        return status

    def restart_follower(self) -> None:
        """After an error: follow again from the last saved checkpoint."""
        if self.follower is not None:
            self.follower.close()
        self.in_batch = False
        self.follower = self.retry("alerts", self.open_follower)
        if self.follower is None:
            self.follower = _ClosedFollower()

    # -- periodic work ------------------------------------------------------------

    def run_periodic(self) -> None:
        now = time.monotonic()
        self.notifier.ping_if_due(now)
        if now - self.timers.reload >= self.cfg.tailer.reload_interval_s:
            self.timers.reload = now
            self.index.refresh()
        if now - self.timers.stats >= self.cfg.tailer.stats_interval_s:
            self.timers.stats = now
            line = self.stats_line()
            log.info(line)
            self.notifier.status(line)
        if now - self.timers.status >= STATUS_SAVE_INTERVAL_S:
            self.save_status()
        if self.hangup:
            self.hangup = False
            self.reload()

    def counters(self) -> dict[str, int]:
        counts = self.pipeline.counts
        writer_counts = self.writer.counts if self.writer else {}
        counts.written = writer_counts.get("written", 0)
        counts.suppressed = writer_counts.get("suppressed", 0)
        snapshot = counts.snapshot()
        snapshot["duplicates"] = writer_counts.get("duplicate", 0)
        snapshot["oversized"] = self.follower.oversized_count if self.follower else 0
        snapshot["lag_bytes"] = self.lag_bytes()
        return snapshot

    def stats_line(self) -> str:
        snapshot = self.counters()
        return format_stats(self.pipeline.counts, lag_bytes=snapshot["lag_bytes"])

    def lag_bytes(self) -> int:
        """Bytes of the live file not read yet (its whole size when elsewhere)."""
        try:
            stat = os.stat(self.cfg.tailer.alerts_path)
        except OSError:
            return 0
        saved = self.saved
        if saved is None:
            return stat.st_size
        if (saved.identity.device, saved.identity.inode) == (stat.st_dev, stat.st_ino):
            return max(0, stat.st_size - saved.offset)
        return stat.st_size

    # -- SIGHUP -------------------------------------------------------------------

    def reload(self) -> None:
        """Reload the configuration (keep the old one if invalid); reopen output."""
        log.info("reload_requested")
        new_cfg = self.load_new_config()
        if new_cfg is not None:
            self.apply_config(new_cfg)
        self.writer.close()
        log.info("output_reopened path=%s", self.writer.path)

    def load_new_config(self) -> Any | None:
        if self.reload_config is None:
            return None
        try:
            return self.reload_config()
        except Exception as err:  # a bad edit must not stop the service
            log.error(kv("reload_failed", error=err, action="keeping_running_config"))
            return None

    def apply_config(self, new_cfg: Any) -> None:
        old = self.cfg
        if new_cfg.tailer.alerts_path != old.tailer.alerts_path:
            log.warning("reload_needs_restart key=tailer.alerts_path")
        if store_paths(new_cfg) != store_paths(old):
            self.index = self.retry("store", lambda: self.open_index_for(new_cfg))
        self.cfg = new_cfg
        counts = self.pipeline.counts
        self.pipeline = build_pipeline(new_cfg, self.index)
        self.pipeline.counts = counts
        if new_cfg.output != old.output:
            self.writer.close()
            self.writer = self.open_writer()
        log.info("reload_applied")

    def open_index_for(self, cfg: Any) -> IndicatorIndex:
        return IndicatorIndex(StoreReader(store_paths(cfg)))


class _ClosedFollower:
    """Stands in when the service stopped while waiting for alerts.json."""

    oversized_count = 0

    def read_batch(self, _max_bytes: int) -> Batch:
        return Batch()

    def wait(self, timeout_s: float | None = None) -> bool:
        time.sleep(0.1 if timeout_s is None else min(timeout_s, 0.1))
        return False

    def position(self) -> None:
        return None

    def close(self) -> None:
        return None


def run(cfg: Any, *, reload_config: ConfigLoader | None = None) -> int:
    """Run the tailer service with `cfg` until stopped; return the exit code."""
    return Service(cfg, reload_config=reload_config).run()
