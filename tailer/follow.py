"""Follow alerts.json through analysisd's rotations.

Three parts, kept apart:

* which files exist: the dated archive pieces
  ``<alerts_dir>/YYYY/Mon/ossec-alerts-DD[-NNN].json[.gz]`` (``list_pieces``,
  ``find_by_identity``);
* how one file is read: complete lines only, a partial last line waits for its
  newline, an oversized line is skipped without losing alignment (``_LineReader``);
* where we are: ``Position`` (identity and offset of the next unread line).

``classify`` is the pure rotated/truncated/grown decision. ``Follower`` runs one
stat-based reconcile step whenever a read finds nothing new, whatever woke it, so a
missed or coalesced watchdog event changes nothing.

analysisd rotates by opening the next dated piece, unlinking alerts.json and
hard-linking the piece to it: the path gets a new inode and is briefly missing, and
the old descriptor may still receive its last second of buffered alerts.
"""

from __future__ import annotations

import enum
import gzip
import hashlib
import logging
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

FINGERPRINT_BYTES = 4096
MONTHS = (
    "Jan", "Feb", "Mar", "Apr", "May", "Jun",
    "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
)  # fmt: skip
_PIECE_NAME = re.compile(r"^ossec-alerts-(\d{2})(?:-(\d{3}))?\.json(\.gz)?$")
_TAIL_SCAN_BYTES = 65536


@dataclass(frozen=True)
class FileIdentity:
    """Device, inode and a hash of the first line ("" until it is complete)."""

    device: int
    inode: int
    fingerprint: str = ""

    def same_file(self, other: FileIdentity) -> bool:
        """True when both name one file; an empty fingerprint compares as unknown."""
        if (self.device, self.inode) != (other.device, other.inode):
            return False
        if not self.fingerprint or not other.fingerprint:
            return True
        return self.fingerprint == other.fingerprint


@dataclass(frozen=True)
class Position:
    """The next unread line: file identity, byte offset, path it was read from."""

    identity: FileIdentity
    offset: int
    path: str


@dataclass(frozen=True)
class FileState:
    """What the follower knows of its open file: identity and bytes read so far."""

    identity: FileIdentity
    offset: int


class Change(enum.Enum):
    UNCHANGED = "unchanged"
    GREW = "grew"
    ROTATED = "rotated"
    TRUNCATED = "truncated"
    MISSING = "missing"
    REPLACED_SAME_INODE = "replaced_same_inode"


@dataclass(frozen=True)
class Batch:
    """Complete lines (newline removed) from one file, and where reading resumes.

    ``line_ends[i]`` is the offset just after line i's newline; ``position`` is the
    offset after the last line read or skipped (None when no file is open yet).
    """

    lines: list[bytes] = field(default_factory=list)
    line_ends: list[int] = field(default_factory=list)
    position: Position | None = None
    oversized_count: int = 0


def classify(
    known: FileState | None,
    observed: os.stat_result | None,
    *,
    observed_fingerprint: str = "",
) -> Change:
    """Decide what happened to the path since the last look (pure).

    ``observed`` is ``os.stat`` of the path (None when it does not exist) and
    ``observed_fingerprint`` the first-line hash of the file it names ("" when not
    computed or not yet complete).
    """
    if observed is None:
        return Change.MISSING
    if known is None:
        return Change.ROTATED
    ident = known.identity
    if (observed.st_dev, observed.st_ino) != (ident.device, ident.inode):
        return Change.ROTATED

    # Same inode number but another first line: the inode was freed and reused,
    # or the file was emptied and rewritten between two looks.
    if ident.fingerprint and observed_fingerprint != ident.fingerprint:
        if observed_fingerprint:
            return Change.REPLACED_SAME_INODE

    if observed.st_size < known.offset:
        return Change.TRUNCATED
    if observed.st_size > known.offset:
        return Change.GREW
    return Change.UNCHANGED


def fingerprint_of(head: bytes) -> str:
    """Hash of the first line (capped at FINGERPRINT_BYTES); "" if not complete."""
    newline = head.find(b"\n", 0, FINGERPRINT_BYTES)
    if newline >= 0:
        head = head[: newline + 1]
    elif len(head) < FINGERPRINT_BYTES:
        return ""
    else:
        head = head[:FINGERPRINT_BYTES]
    return hashlib.sha256(head).hexdigest()[:32]


def load_fingerprint(path: Path) -> str:
    """First-line hash of a plain or gzipped file; "" if unreadable or too short."""
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as stream:
            return fingerprint_of(stream.read(FINGERPRINT_BYTES))
    except (OSError, EOFError):
        return ""


@dataclass(frozen=True)
class Piece:
    """One dated archive file; ``order`` is (year, month, day, counter)."""

    path: Path
    order: tuple[int, int, int, int]

    @property
    def compressed(self) -> bool:
        return self.path.name.endswith(".gz")


def list_pieces(alerts_dir: Path) -> list[Piece]:
    """Dated pieces oldest first; a plain file wins over its .gz twin."""
    by_order: dict[tuple[int, int, int, int], Piece] = {}
    for month_dir in _month_dirs(Path(alerts_dir)):
        year, month = int(month_dir.parent.name), MONTHS.index(month_dir.name) + 1
        for entry in os.scandir(month_dir):
            match = _PIECE_NAME.match(entry.name)
            if match is None:
                continue
            order = (year, month, int(match[1]), int(match[2] or 0))
            known = by_order.get(order)
            if known is None or known.compressed:
                by_order[order] = Piece(Path(entry.path), order)
    return [by_order[order] for order in sorted(by_order)]


def _month_dirs(alerts_dir: Path) -> list[Path]:
    found = []
    for year_dir in _subdirs(alerts_dir):
        if year_dir.name.isdigit():
            found += [d for d in _subdirs(year_dir) if d.name in MONTHS]
    return found


def _subdirs(folder: Path) -> list[Path]:
    try:
        return [Path(e.path) for e in os.scandir(folder) if e.is_dir()]
    except OSError:
        return []


def _piece_matches(piece: Piece, identity: FileIdentity) -> bool:
    if not piece.compressed:
        stat = _stat_or_none(piece.path)
        if stat and (stat.st_dev, stat.st_ino) == (identity.device, identity.inode):
            here = FileIdentity(stat.st_dev, stat.st_ino, load_fingerprint(piece.path))
            if here.same_file(identity):
                return True

    # A gzipped copy has a new inode: only its first line can identify it.
    if not identity.fingerprint:
        return False
    return load_fingerprint(piece.path) == identity.fingerprint


def find_by_identity(alerts_dir: Path, identity: FileIdentity) -> Path | None:
    """The archive piece holding the file ``identity`` names, newest first."""
    for piece in reversed(list_pieces(alerts_dir)):
        if _piece_matches(piece, identity):
            return piece.path
    return None


def pieces_after(
    alerts_dir: Path, identity: FileIdentity, live_inode: tuple[int, int]
) -> list[Piece]:
    """Pieces written after the file ``identity`` and before the live file.

    ``live_inode`` is (device, inode) of alerts.json, a hard link to the newest
    piece. Returns [] unless both ends are found, so nothing is read twice.
    """
    pieces = list_pieces(alerts_dir)
    first = _index_of(pieces, lambda p: _piece_matches(p, identity))
    last = _index_of(pieces, lambda p: _dev_ino(p.path) == live_inode)
    if first is None or last is None or last <= first:
        return []
    return pieces[first + 1 : last]


def _index_of(pieces: list[Piece], wanted) -> int | None:
    for index in range(len(pieces) - 1, -1, -1):
        if wanted(pieces[index]):
            return index
    return None


def _dev_ino(path: Path) -> tuple[int, int] | None:
    stat = _stat_or_none(path)
    return None if stat is None else (stat.st_dev, stat.st_ino)


def _stat_or_none(path: Path) -> os.stat_result | None:
    try:
        return os.stat(path)
    except FileNotFoundError:
        return None


class _LineReader:
    """One open file (plain or gzipped) cut into complete lines."""

    def __init__(self, path: Path, offset: int = 0) -> None:
        self.path = path
        self.compressed = path.name.endswith(".gz")
        self.stream = gzip.open(path, "rb") if self.compressed else open(path, "rb", 0)
        try:
            self.identity = self._load_identity()
            self.seek(offset)
        except BaseException:
            self.stream.close()
            raise

    def _load_identity(self) -> FileIdentity:
        if self.compressed:
            stat = os.stat(self.path)
            return FileIdentity(stat.st_dev, stat.st_ino, load_fingerprint(self.path))
        stat = os.fstat(self.stream.fileno())
        return FileIdentity(stat.st_dev, stat.st_ino, self.head_fingerprint())

    def head_fingerprint(self) -> str:
        """First-line hash of the open plain file, read without moving."""
        return fingerprint_of(os.pread(self.stream.fileno(), FINGERPRINT_BYTES, 0))

    def seek(self, offset: int) -> None:
        self.stream.seek(offset)
        self.read_offset = self.committed = offset
        self.pending = b""
        self.discarding = False

    def restart(self) -> None:
        """Read the (emptied or rewritten) file again from offset 0."""
        self.seek(0)
        self.identity = self._load_identity()

    def state(self) -> FileState:
        return FileState(self.identity, self.read_offset)

    def position(self) -> Position:
        return Position(self.identity, self.committed, str(self.path))

    def close(self) -> None:
        self.stream.close()

    def read_chunk(self, max_bytes: int) -> bytes:
        chunk = self.stream.read(max_bytes) or b""
        self.read_offset += len(chunk)
        if chunk and not self.identity.fingerprint and not self.compressed:
            fingerprint = self.head_fingerprint()
            self.identity = FileIdentity(
                self.identity.device, self.identity.inode, fingerprint
            )
        return chunk

    def split(self, chunk: bytes, max_line_bytes: int, lines: list, ends: list) -> int:
        """Append complete lines of pending+chunk and their end offsets.

        Returns how many oversized lines were skipped.
        """
        buffer = self.pending + chunk
        base = self.read_offset - len(buffer)
        start, skipped = 0, 0
        while (newline := buffer.find(b"\n", start)) >= 0:
            if self.discarding:
                self.discarding = False
            elif newline - start > max_line_bytes:
                skipped += 1
            else:
                lines.append(buffer[start:newline])
                ends.append(base + newline + 1)
            start = newline + 1
        if start:
            self.committed = base + start
        self.pending = buffer[start:]

        # Over the cap with no newline yet: drop it now and drop the rest up to
        # the next newline as it arrives, even across reads. The committed
        # offset stays at the line's start, so a restart skips it again.
        if not self.discarding and len(self.pending) > max_line_bytes:
            self.discarding, skipped = True, skipped + 1
        if self.discarding:
            self.pending = b""
        return skipped


class Follower:
    """Complete lines of ``path`` in order, through rotations, truncations and
    deletions; starts from a checkpointed ``Position`` or at ``start_at``.

    Call ``read_batch`` until it returns no lines, then ``wait``.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        start: Position | None = None,
        start_at: str = "end",
        max_line_bytes: int = 65536,
        poll_interval_s: float = 0.25,
        use_watchdog: bool = True,
        rotate_grace_s: float = 2.0,
    ) -> None:
        if start_at not in ("end", "beginning"):
            raise ValueError(
                f"follow start_at: unknown value (got {start_at!r}); "
                "expected end or beginning"
            )
        self.path = Path(path)
        self.alerts_dir = self.path.parent
        self.max_line_bytes = max_line_bytes
        self.poll_interval_s = poll_interval_s
        self.rotate_grace_s = rotate_grace_s
        self.oversized_count = 0
        self._queue: list[tuple[Path, int]] = []
        self._live: _LineReader | None = None
        self._reader: _LineReader | None = None
        self._rotation_seen_at: float | None = None
        self._missing_logged = False
        self._wake = threading.Event()
        self._observer = self._start_observer() if use_watchdog else None
        self._open_start(start, start_at)

    # -- lifecycle ---------------------------------------------------------

    def close(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
            self._observer = None
        for reader in {id(r): r for r in (self._reader, self._live) if r}.values():
            reader.close()
        self._reader = self._live = None

    def __enter__(self) -> Follower:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _start_observer(self):
        # Watch the directory: the file itself is unlinked and re-linked at
        # every rotation, which a watch on the file would not survive.
        from watchdog.events import FileSystemEventHandler
        from watchdog.observers import Observer

        wake = self._wake

        class _Wake(FileSystemEventHandler):
            def on_any_event(self, event) -> None:
                wake.set()

        observer = Observer()
        try:
            observer.schedule(_Wake(), str(self.alerts_dir), recursive=False)
            observer.start()
        except OSError as err:
            log.warning("watch_failed dir=%s error=%s", self.alerts_dir, err)
            return None
        return observer

    def wait(self, timeout_s: float | None = None) -> bool:
        """Sleep until a directory event or the poll interval; True if woken."""
        limit = self.poll_interval_s
        if timeout_s is not None:
            limit = min(limit, timeout_s)
        woken = self._wake.wait(limit)
        self._wake.clear()
        return woken

    # -- where we start ----------------------------------------------------

    def _open_start(self, start: Position | None, start_at: str) -> None:
        self._live = self._open_live()
        self._reader = self._live
        if start is None:
            if self._live is not None and start_at == "end":
                self._live.seek(_last_line_end(self._live))
            log.info("follow_start path=%s start_at=%s", self.path, start_at)
            return
        if self._live is not None and self._resume_live(start):
            return
        self._resume_archive(start)

    def _resume_live(self, start: Position) -> bool:
        live = self._live
        if not live.identity.same_file(start.identity):
            return False
        size = os.fstat(live.stream.fileno()).st_size
        if size < start.offset:
            log.warning(
                "checkpoint_beyond_end path=%s offset=%d size=%d; reading from 0",
                self.path, start.offset, size,
            )  # fmt: skip
            return True
        live.seek(start.offset)
        log.info("follow_resume path=%s offset=%d", self.path, start.offset)
        return True

    def _resume_archive(self, start: Position) -> None:
        found = find_by_identity(self.alerts_dir, start.identity)
        if found is None:
            log.warning(
                "checkpoint_file_not_found inode=%d path=%s; reading %s from 0",
                start.identity.inode, start.path, self.path,
            )  # fmt: skip
            return
        later = self._pieces_before_live(FileIdentity(*_identity_key(found, start)))
        self._queue = [(found, start.offset)] + [(p.path, 0) for p in later]
        log.info(
            "follow_resume_archive path=%s offset=%d pieces=%d",
            found, start.offset, len(self._queue),
        )  # fmt: skip
        self._open_next_queued()

    def _pieces_before_live(self, identity: FileIdentity) -> list[Piece]:
        # TODO: when alerts.json is missing at a restart, pieces between the
        # checkpointed one and the file that appears later are not read; losing
        # them needs analysisd to be down across a rotation, which is rare.
        if self._live is None:
            return []
        live = self._live.identity
        return pieces_after(self.alerts_dir, identity, (live.device, live.inode))

    def _open_live(self) -> _LineReader | None:
        try:
            reader = _LineReader(self.path)
        except FileNotFoundError:
            self._log_missing()
            return None
        self._missing_logged = False
        return reader

    def _open_next_queued(self) -> None:
        while self._queue:
            path, offset = self._queue.pop(0)
            try:
                self._reader = _LineReader(_plain_or_gzipped(path), offset)
                return
            except (OSError, EOFError) as err:
                log.error("archive_piece_unreadable path=%s error=%s", path, err)
        self._reader = self._live

    # -- reading -----------------------------------------------------------

    def read_batch(self, max_bytes: int = 1 << 20) -> Batch:
        """Complete lines from the current file, at most about ``max_bytes``."""
        self._check_rewritten()
        batch = Batch()
        for _ in range(8):
            batch = self._read_current(max_bytes)
            if batch.lines or not self._advance():
                return batch
        return batch

    def _check_rewritten(self) -> None:
        """Before reading on: a live file emptied and regrown past our offset
        since the last look has a new first line; read it from 0."""
        live = self._live
        if live is None or self._reader is not live or not live.identity.fingerprint:
            return
        head = live.head_fingerprint()
        if head and head != live.identity.fingerprint:
            self._apply(Change.REPLACED_SAME_INODE, None)

    def _read_current(self, max_bytes: int) -> Batch:
        reader = self._reader
        if reader is None:
            return Batch()
        lines: list[bytes] = []
        ends: list[int] = []
        total = skipped = 0
        while not lines and total < max_bytes:
            chunk = reader.read_chunk(max_bytes - total)
            if not chunk:
                break
            total += len(chunk)
            skipped += reader.split(chunk, self.max_line_bytes, lines, ends)
        self._count_oversized(skipped, reader)
        return Batch(lines, ends, reader.position(), skipped)

    def _count_oversized(self, skipped: int, reader: _LineReader) -> None:
        if not skipped:
            return
        self.oversized_count += skipped
        log.warning(
            "oversized_line_skipped path=%s offset=%d max_line_bytes=%d total=%d",
            reader.path, reader.committed, self.max_line_bytes, self.oversized_count,
        )  # fmt: skip

    def _advance(self) -> bool:
        """At EOF of the current file: move on if there is more; True if moved."""
        if self._reader is not None and self._reader is not self._live:
            if self._may_still_grow(self._reader):
                return False
            self._finish(self._reader)
            self._open_next_queued()
            return True
        return self._reconcile()

    def _may_still_grow(self, reader: _LineReader) -> bool:
        """Whether analysisd may still flush into this rotated plain piece.

        A piece found in the archive at a restart may have been rotated just
        before it; its writer's last flush can follow for a moment, as after a
        live rotation. Until the piece has been quiet for the grace period, its
        end is not taken as final.
        """
        if reader.compressed:
            return False
        try:
            modified_s = os.fstat(reader.stream.fileno()).st_mtime
        except OSError:
            return False
        return time.time() - modified_s < self.rotate_grace_s

    def _finish(self, reader: _LineReader) -> None:
        if reader.pending:
            log.warning(
                "partial_line_dropped path=%s offset=%d bytes=%d",
                reader.path, reader.committed, len(reader.pending),
            )  # fmt: skip
        reader.close()

    # -- reconcile: one step from stat, whatever woke us ---------------------

    def _reconcile(self) -> bool:
        observed = _stat_or_none(self.path)
        live = self._live
        fingerprint = ""
        if live is not None and observed is not None:
            if (observed.st_dev, observed.st_ino) == (
                live.identity.device,
                live.identity.inode,
            ):
                fingerprint = live.head_fingerprint()
        change = classify(
            live.state() if live else None, observed, observed_fingerprint=fingerprint
        )
        return self._apply(change, observed)

    def _apply(self, change: Change, observed: os.stat_result | None) -> bool:
        if change is Change.MISSING:
            self._log_missing()
            return False
        self._missing_logged = False
        if change is Change.GREW:
            return True
        if change is Change.ROTATED:
            return self._on_rotated(observed)
        if change in (Change.TRUNCATED, Change.REPLACED_SAME_INODE):
            event = "truncation_detected"
            if change is Change.REPLACED_SAME_INODE:
                event = "file_replaced"
            log.warning(
                "%s path=%s offset=%d; reading from 0",
                event, self.path, self._live.read_offset,
            )  # fmt: skip
            self._live.restart()
            return True
        return False

    def _on_rotated(self, observed: os.stat_result) -> bool:
        if self._live is None:
            self._live = self._reader = self._open_live()
            return self._live is not None
        now = time.monotonic()
        if self._rotation_seen_at is None:
            self._rotation_seen_at = now
            log.info(
                "rotation_detected path=%s old_inode=%d new_inode=%d",
                self.path, self._live.identity.inode, observed.st_ino,
            )  # fmt: skip

        # analysisd may still flush its last second into the old descriptor.
        if now - self._rotation_seen_at < self.rotate_grace_s:
            return False
        return self._switch_to_new_file()

    def _switch_to_new_file(self) -> bool:
        new_live = self._open_live()
        if new_live is None:
            return False
        old, self._rotation_seen_at = self._live, None
        self._live = new_live
        later = self._pieces_before_live(old.identity)
        self._finish(old)
        self._queue = [(p.path, 0) for p in later]
        self._open_next_queued()
        log.info(
            "rotation_switched path=%s inode=%d skipped_over_pieces=%d",
            self.path, new_live.identity.inode, len(later),
        )  # fmt: skip
        return True

    def _log_missing(self) -> None:
        if not self._missing_logged:
            log.warning("path_missing path=%s; waiting for it to reappear", self.path)
            self._missing_logged = True

    def position(self) -> Position | None:
        """Where reading resumes now (after the last complete line returned)."""
        return None if self._reader is None else self._reader.position()


def _identity_key(found: Path, start: Position) -> tuple[int, int, str]:
    """Identity to locate ``found`` again among the pieces (its own inode)."""
    stat = os.stat(found)
    return stat.st_dev, stat.st_ino, start.identity.fingerprint


def _plain_or_gzipped(path: Path) -> Path:
    """The plain piece, or its .gz once monitord has compressed it meanwhile."""
    if path.exists() or path.name.endswith(".gz"):
        return path
    return path.with_name(path.name + ".gz")


def _last_line_end(reader: _LineReader) -> int:
    """Offset just after the last newline of the open plain file (0 if none)."""
    fd = reader.stream.fileno()
    end = os.fstat(fd).st_size
    while end > 0:
        start = max(0, end - _TAIL_SCAN_BYTES)
        newline = os.pread(fd, end - start, start).rfind(b"\n")
        if newline >= 0:
            return start + newline + 1
        end = start
    return 0
