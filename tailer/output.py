"""Writing enrichments to the file Wazuh's logcollector reads.

* The file is opened with O_APPEND and created with mode 0640; every line goes out in
  one `os.write`, so a reader (or the sync writing health lines into the same file)
  never sees half of one line interleaved with another.
* When the path is rotated away (logrotate renames or deletes it), the next write
  reopens the path.
* De-duplication: one (alert id, ioc type, indicator) is written once, also across a
  restart. The keys live in a `seen`/`remember` store; after a restart
  `recover_tail` re-reads our own output after the last checkpoint, because the
  output file itself is the record of what was written.
* Flood control: the same (indicator, agent id, rule id) within `flood_window_s`,
  measured on the alerts' own timestamps (so a replay gives the same result), is
  written once; the repeats are counted and reported as `ioc.suppressed_repeats` on
  the next line written for that key after the window.
"""

from __future__ import annotations

import logging
import os
from collections import Counter, OrderedDict
from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import orjson

from tailer.enrich import MAX_LINE_BYTES, build_enrichment, encode_enrichment

logger = logging.getLogger(__name__)

FILE_MODE = 0o640
_OPEN_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
_FLOOD_PRUNE_AT = 50_000


class DedupStore(Protocol):
    def seen(self, key: str) -> bool: ...

    def remember(self, keys: Iterable[str]) -> None: ...


class MemoryDedup:
    """In-memory dedup keys, the oldest forgotten past `max_keys`."""

    def __init__(self, max_keys: int = 200_000) -> None:
        self.max_keys = max_keys
        self._keys: OrderedDict[str, None] = OrderedDict()

    def seen(self, key: str) -> bool:
        return key in self._keys

    def remember(self, keys: Iterable[str]) -> None:
        for key in keys:
            self._keys[key] = None
            self._keys.move_to_end(key)
        while len(self._keys) > self.max_keys:
            self._keys.popitem(last=False)


@dataclass
class _Flood:
    start_s: float
    suppressed: int = 0


def dedup_key(alert_id: Any, ioc_type: Any, indicator: Any) -> str:
    return f"{alert_id}|{ioc_type}|{indicator}"


def alert_time_s(timestamp: Any) -> float | None:
    """Epoch seconds of an alert timestamp such as `2022-11-17T19:17:42.694+0200`."""
    if not isinstance(timestamp, str):
        return None
    for pattern in ("%Y-%m-%dT%H:%M:%S.%f%z", "%Y-%m-%dT%H:%M:%S%z"):
        try:
            return datetime.strptime(timestamp, pattern).timestamp()
        except ValueError:
            continue
    return None


class EnrichmentWriter:
    """Appends enrichment lines with dedup and flood control."""

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        flood_window_s: float = 60,
        dedup: DedupStore | None = None,
        max_line_bytes: int = MAX_LINE_BYTES,
    ) -> None:
        self.path = Path(path)
        self.flood_window_s = flood_window_s
        self.dedup = dedup if dedup is not None else MemoryDedup()
        self.max_line_bytes = max_line_bytes
        self.counts: Counter[str] = Counter()
        self._flood: dict[tuple, _Flood] = {}
        self._fd: int | None = None

    # --- the write path ---------------------------------------------------------

    def write_hit(
        self, alert: Mapping[str, Any], hit: Any, *, replay: bool = False
    ) -> str:
        """Writes the enrichment for one hit: `written`, `duplicate` or `suppressed`."""
        status, line, key, repeats = self._render(alert, hit, replay, pending=())
        if line is not None:
            self.write_line(line)
            self.dedup.remember([key])
            self._count_written(1, repeats)
        return status

    def write_hits(
        self, matches: Iterable[tuple[Mapping[str, Any], Any]], *, replay: bool = False
    ) -> None:
        """`write_hit` for many hits, the written lines going out in one write.

        The keys are remembered only once the write succeeded, so a failed write
        is written again when its alerts are read again.
        """
        lines: list[bytes] = []
        keys: dict[str, None] = {}
        repeats = 0
        for alert, hit in matches:
            _status, line, key, line_repeats = self._render(alert, hit, replay, keys)
            if line is not None:
                lines.append(line)
                keys[key] = None
                repeats += line_repeats
        if not lines:
            return
        self.write_line(b"".join(lines))
        self.dedup.remember(keys)
        self._count_written(len(lines), repeats)

    def _render(
        self,
        alert: Mapping[str, Any],
        hit: Any,
        replay: bool,
        pending: Container[str],
    ) -> tuple[str, bytes | None, str, int]:
        """(status, line to write or None, dedup key, repeats reported) of a hit."""
        key = dedup_key(alert.get("id"), hit.kind, hit.indicator)
        if key in pending or self.dedup.seen(key):
            self.counts["duplicate"] += 1
            return "duplicate", None, key, 0

        repeats = self._flood_check(_flood_key(alert, hit.indicator), alert)
        if repeats is None:
            self.counts["suppressed"] += 1
            return "suppressed", None, key, 0

        record = build_enrichment(alert, hit, replay=replay, repeats=repeats)
        line = encode_enrichment(record, self.max_line_bytes)
        return "written", line, key, repeats

    def _count_written(self, lines: int, repeats: int) -> None:
        self.counts["written"] += lines
        self.counts["reported_repeats"] += repeats

    def write_line(self, line: bytes) -> None:
        """Appends complete lines with a single write."""
        fd = self._open_current()
        written = os.write(fd, line)
        if written != len(line):
            # TODO: a short write to a regular file means a full disk; the rest is
            # written separately and may interleave with another writer's line.
            self.counts["short_writes"] += 1
            logger.error(
                "short_write path=%s wrote=%d of=%d", self.path, written, len(line)
            )
            os.write(fd, line[written:])

    def flush(self, *, fsync: bool = False) -> None:
        """Lines are unbuffered; `fsync=True` also forces them to disk."""
        if fsync and self._fd is not None:
            os.fsync(self._fd)

    def sync_handle(self) -> int | None:
        """A duplicate of the output descriptor, for syncing it elsewhere.

        The caller owns it (and closes it); it keeps naming this file even after
        the writer reopens the path.
        """
        return os.dup(self._fd) if self._fd is not None else None

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def position(self) -> tuple[int, int]:
        """(inode, offset) of the end of the output, for the checkpoint."""
        fd = self._open_current()
        status = os.fstat(fd)
        return status.st_ino, status.st_size

    def stats(self) -> dict[str, int]:
        pending = sum(state.suppressed for state in self._flood.values())
        return {**self.counts, "pending_repeats": pending}

    # --- flood control ----------------------------------------------------------

    def _flood_check(self, key: tuple, alert: Mapping[str, Any]) -> int | None:
        """None when suppressed, else the repeats to report on this line."""
        now_s = alert_time_s(alert.get("timestamp"))
        if now_s is None or self.flood_window_s <= 0:
            return 0
        state = self._flood.get(key)
        if state is not None and abs(now_s - state.start_s) < self.flood_window_s:
            state.suppressed += 1
            return None

        repeats = state.suppressed if state is not None else 0
        self._flood[key] = _Flood(now_s)
        self._prune_flood(now_s)
        return repeats

    def _prune_flood(self, now_s: float) -> None:
        if len(self._flood) < _FLOOD_PRUNE_AT:
            return
        horizon_s = now_s - 2 * self.flood_window_s
        stale = [key for key, state in self._flood.items() if state.start_s < horizon_s]
        for key in stale:
            self.counts["unreported_repeats"] += self._flood.pop(key).suppressed

    # --- files ------------------------------------------------------------------

    def _open_current(self) -> int:
        """The open descriptor, reopened when the path was rotated away."""
        if self._fd is not None and not self._rotated_away():
            return self._fd
        if self._fd is not None:
            logger.info("output_reopen path=%s reason=rotated_away", self.path)
            self.counts["reopens"] += 1
            self.close()

        existed = self.path.exists()
        self._fd = os.open(self.path, _OPEN_FLAGS, FILE_MODE)
        if not existed:
            os.fchmod(self._fd, FILE_MODE)
        return self._fd

    def _rotated_away(self) -> bool:
        try:
            on_path = os.stat(self.path)
        except FileNotFoundError:
            return True
        current = os.fstat(self._fd)
        return (on_path.st_dev, on_path.st_ino) != (current.st_dev, current.st_ino)

    # --- restart ----------------------------------------------------------------

    def recover_tail(self, since_offset: int = 0, *, inode: int | None = None) -> int:
        """Re-learns the keys written after a checkpoint; returns how many.

        Reads our output from `since_offset` (from 0 when the file is another inode or
        shorter). A partial last line is terminated with a newline so the next line
        starts clean; its key is not learnt, so that hit is written again.
        """
        try:
            with open(self.path, "rb") as stream:
                status = os.fstat(stream.fileno())
                stale = inode is not None and inode != status.st_ino
                if stale or status.st_size < since_offset:
                    since_offset = 0
                stream.seek(since_offset)
                tail = stream.read()
        except FileNotFoundError:
            return 0

        lines = tail.split(b"\n")
        if lines[-1]:
            self.counts["partial_lines_closed"] += 1
            self.write_line(b"\n")
        keys = [key for key in map(self._learn_line, lines[:-1]) if key]
        self.dedup.remember(keys)
        recovered = len(keys)
        logger.info(
            "output_recovered path=%s offset=%d keys=%d",
            self.path,
            since_offset,
            recovered,
        )
        return recovered

    def _learn_line(self, line: bytes) -> str | None:
        try:
            record = orjson.loads(line)
            ioc, alert = record["ioc"], record["alert"]
            key = dedup_key(alert["id"], ioc["type"], ioc["indicator"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return None

        now_s = alert_time_s(alert.get("timestamp"))
        if now_s is not None:
            flood_key = _flood_key(alert, ioc["indicator"])
            state = self._flood.get(flood_key)
            if state is None or now_s - state.start_s >= self.flood_window_s:
                self._flood[flood_key] = _Flood(now_s)
        return key


def _flood_key(alert: Mapping[str, Any], indicator: Any) -> tuple:
    agent = alert.get("agent") if isinstance(alert.get("agent"), Mapping) else {}
    rule = alert.get("rule") if isinstance(alert.get("rule"), Mapping) else {}
    return (str(indicator), str(agent.get("id", "")), str(rule.get("id", "")))
