"""A writer that appends to logs/alerts the way wazuh-analysisd 4.x does.

* Alert lines go through a userspace buffer flushed every ``flush_interval_s``
  (analysisd: about once a second); when the buffer passes ``buffer_bytes`` its
  first ``buffer_bytes`` are written at once, so half a line can reach the disk.
* ``rotate`` opens the next dated piece ``YYYY/Mon/ossec-alerts-DD[-NNN].json``,
  unlinks ``alerts.json`` and hard-links the piece to it (the path is briefly
  missing and gets a new inode); the old buffer is flushed into the old piece
  only after that, the worst case a reader must survive.
* ``compress_previous`` does wazuh-monitord's job: gzip earlier days' base
  pieces to ``.json.gz``, write a ``.sum``, delete the plain file.

Usable in-process and as ``python -m tests.alert_writer --dir D --count N ...``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import hashlib
import json
import os
import shutil
import threading
import time
from pathlib import Path

MONTHS = (
    "Jan", "Feb", "Mar", "Apr", "May", "Jun",
    "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
)  # fmt: skip


def alert_line(seq: int, *, pad_bytes: int = 0) -> bytes:
    """One alert-shaped JSON line (no newline) carrying its sequence number."""
    alert = {
        "timestamp": "2026-12-03T23:59:59.000+0000",
        "rule": {"level": 10, "id": "5712", "description": "writer test"},
        "id": f"1796342399.{seq}",
        "seq": seq,
        "pad": "x" * pad_bytes,
    }
    return json.dumps(alert, separators=(",", ":")).encode()


def piece_path(alerts_dir: Path, day: dt.date, counter: int) -> Path:
    suffix = f"-{counter:03d}" if counter else ""
    name = f"ossec-alerts-{day.day:02d}{suffix}.json"
    return alerts_dir / str(day.year) / MONTHS[day.month - 1] / name


class AnalysisdWriter:
    """Buffered appender to ``<logs_alerts_dir>/alerts.json`` with hard-link
    rotation, like analysisd."""

    def __init__(
        self,
        logs_alerts_dir: str | os.PathLike,
        *,
        day: dt.date | None = None,
        flush_interval_s: float | None = 1.0,
        buffer_bytes: int = 4096,
    ) -> None:
        self.alerts_dir = Path(logs_alerts_dir)
        self.link_path = self.alerts_dir / "alerts.json"
        self.day = day or dt.date.today()
        self.counter = 0
        self.buffer_bytes = buffer_bytes
        self._buffer = bytearray()
        self._lock = threading.RLock()
        self._fd = self._open_piece()
        self._stop = threading.Event()
        self._flusher = None
        if flush_interval_s:
            self._flusher = threading.Thread(
                target=self._flush_loop, args=(flush_interval_s,), daemon=True
            )
            self._flusher.start()

    @property
    def current_piece(self) -> Path:
        return piece_path(self.alerts_dir, self.day, self.counter)

    def _open_piece(self) -> int:
        path = self.current_piece
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        if self.link_path.exists():
            os.unlink(self.link_path)
        os.link(path, self.link_path)
        return fd

    # -- writing ---------------------------------------------------------------

    def write(self, line: bytes) -> None:
        """Append one alert line (newline added) to the buffer."""
        with self._lock:
            self._buffer += line + b"\n"
            while len(self._buffer) >= self.buffer_bytes:
                os.write(self._fd, self._buffer[: self.buffer_bytes])
                del self._buffer[: self.buffer_bytes]

    def write_raw(self, chunk: bytes) -> None:
        """Write bytes straight to the file, bypassing the buffer."""
        with self._lock:
            os.write(self._fd, chunk)

    def flush(self) -> None:
        with self._lock:
            if self._buffer:
                os.write(self._fd, bytes(self._buffer))
                self._buffer.clear()

    def _flush_loop(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            self.flush()

    def close(self) -> None:
        self._stop.set()
        if self._flusher is not None:
            self._flusher.join()
        self.flush()
        os.close(self._fd)

    def __enter__(self) -> AnalysisdWriter:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # -- rotation and friends ------------------------------------------------

    def rotate(self, day: dt.date | None = None) -> Path:
        """Switch to the next piece (next day resets the counter); return it."""
        with self._lock:
            old_fd, old_piece = self._fd, self.current_piece
            if day is not None and day != self.day:
                self.day, self.counter = day, 0
            else:
                self.counter += 1
            self._fd = self._open_piece()

            # The old stream is flushed and closed after the re-link.
            os.write(old_fd, bytes(self._buffer))
            self._buffer.clear()
            if os.fstat(old_fd).st_size == 0:
                os.unlink(old_piece)
            os.close(old_fd)
            return self.current_piece

    def compress_previous(self, *, include_counters: bool = False) -> list[Path]:
        """gzip earlier days' pieces (base piece only unless include_counters)."""
        done = []
        for path in sorted(self.alerts_dir.glob("*/*/ossec-alerts-*.json")):
            if self._is_today(path) or (not include_counters and _has_counter(path)):
                continue
            done.append(_gzip_and_sign(path))
        return done

    def _is_today(self, path: Path) -> bool:
        month_dir = self.alerts_dir / str(self.day.year) / MONTHS[self.day.month - 1]
        return path.parent == month_dir and path.name.startswith(
            f"ossec-alerts-{self.day.day:02d}"
        )

    def truncate(self) -> None:
        """Empty the current file in place (same inode)."""
        with self._lock:
            self.flush()
            os.ftruncate(self._fd, 0)

    def delete_and_recreate(self) -> Path:
        """Delete alerts.json and its piece, then start a new file of that name."""
        with self._lock:
            self.flush()
            os.close(self._fd)
            os.unlink(self.link_path)
            os.unlink(self.current_piece)
            self._fd = self._open_piece()
            return self.current_piece


def _has_counter(path: Path) -> bool:
    return path.name.count("-") == 3


def _gzip_and_sign(path: Path) -> Path:
    target = path.with_name(path.name + ".gz")
    with open(path, "rb") as source, gzip.open(target, "wb") as sink:
        shutil.copyfileobj(source, sink)
    body = path.read_bytes()
    sums = [f"{name}={hashlib.new(name, body).hexdigest()}" for name in _SUMS]
    path.with_name(path.name + ".sum").write_text("\n".join(sums) + "\n")
    os.unlink(path)
    return target


_SUMS = ("md5", "sha1", "sha256")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", required=True, help="the logs/alerts directory")
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--start", type=int, default=0, help="first sequence")
    parser.add_argument("--rate", type=float, default=0, help="lines/s; 0 = fast")
    parser.add_argument("--rotate-every", type=int, default=0)
    parser.add_argument("--pad-bytes", type=int, default=200)
    parser.add_argument("--flush-interval-s", type=float, default=0.05)
    args = parser.parse_args(argv)

    with AnalysisdWriter(args.dir, flush_interval_s=args.flush_interval_s) as w:
        for seq in range(args.start, args.start + args.count):
            w.write(alert_line(seq, pad_bytes=args.pad_bytes))
            if args.rotate_every and (seq + 1) % args.rotate_every == 0:
                w.rotate()
            if args.rate:
                time.sleep(1 / args.rate)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
