"""Replay archived alerts through the live matching pipeline (and retro-hunt).

Three parts: which archive pieces exist and in what order (`find_pieces`), how
one piece is read, plain or gzip, complete lines only (`read_lines`), and the
run over all pieces, in parallel, with output in piece order (`replay`).

analysisd's layout is `<alerts dir>/YYYY/Mon/ossec-alerts-DD[-NNN].json[.gz]`;
`alerts.json` is a hard link to the newest piece and `.sum` files sign pieces.
"""

from __future__ import annotations

import filecmp
import glob
import gzip
import logging
import os
import re
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path

log = logging.getLogger(__name__)

MONTHS = ("Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec").split()
PIECE_NAME = re.compile(r"^ossec-alerts-(\d{2})(?:-(\d{3}))?\.json(\.gz)?$")
READ_CHUNK_BYTES = 1 << 20


class ArchiveError(Exception):
    """A piece could not be read to its end; complete lines before it were kept."""


@dataclass(frozen=True)
class Piece:
    """One archive file with its place in time: day (from the path) and piece."""

    path: Path
    day: date | None
    number: int

    @property
    def sort_key(self) -> tuple:
        # Undated files (alerts.json, user files) go last: alerts.json is newest.
        return (self.day is None, self.day or date.min, self.number, str(self.path))


def parse_piece(path: Path) -> Piece:
    """Place a path in time from analysisd's naming; undated when it does not fit."""
    found = PIECE_NAME.match(path.name)
    if found is None:
        return Piece(path, None, 0)
    day_text, number_text, _ = found.groups()
    month_dir, year_dir = path.parent.name, path.parent.parent.name
    try:
        day = date(int(year_dir), MONTHS.index(month_dir) + 1, int(day_text))
    except ValueError:
        day = None
    return Piece(path, day, int(number_text or 0))


def is_alert_file(path: Path) -> bool:
    return path.name == "alerts.json" or PIECE_NAME.match(path.name) is not None


def expand_paths(paths: Iterable[str | Path]) -> tuple[list[Path], list[Path]]:
    """Expand arguments into (files given or matched, directories to walk)."""
    files: list[Path] = []
    dirs: list[Path] = []
    for text in map(str, paths):
        matches = [text] if os.path.exists(text) else sorted(glob.glob(text))
        if not matches:
            raise ArchiveError(f"replay {text}: no such file, directory or match")
        for match in map(Path, matches):
            (dirs if match.is_dir() else files).append(match)
    return files, dirs


def walk_directory(root: Path) -> list[Path]:
    return sorted(
        path for path in root.rglob("*") if path.is_file() and is_alert_file(path)
    )


def find_pieces(paths: Iterable[str | Path]) -> list[Piece]:
    """Return every piece named by files, directories and globs, oldest first.

    Each file is read once: pieces are deduplicated by (device, inode), and an
    `alerts.json` found by a walk is dropped when it holds the newest piece.
    `.sum` files never count.
    """
    files, dirs = expand_paths(paths)
    walked = [path for root in dirs for path in walk_directory(root)]
    candidates = [p for p in files if not p.name.endswith(".sum")] + walked

    seen: set[tuple[int, int]] = set()
    pieces: list[Piece] = []
    for path in candidates:
        stat = path.stat()
        if (stat.st_dev, stat.st_ino) in seen:
            continue
        seen.add((stat.st_dev, stat.st_ino))
        pieces.append(parse_piece(path))

    pieces.sort(key=lambda piece: piece.sort_key)
    return drop_current_copies(pieces, set(walked))


def drop_current_copies(pieces: list[Piece], walked: set[Path]) -> list[Piece]:
    """Drop a walked `alerts.json` whose bytes equal the newest dated piece."""
    dated = [piece for piece in pieces if piece.day is not None]
    if not dated or dated[-1].path.name.endswith(".gz"):
        return pieces
    newest = dated[-1].path
    return [
        piece
        for piece in pieces
        if not (
            piece.path in walked
            and piece.path.name == "alerts.json"
            and filecmp.cmp(piece.path, newest, shallow=False)
        )
    ]


def read_lines(path: Path) -> Iterator[bytes]:
    """Yield each complete line of a plain or gzip piece, without its newline.

    A trailing fragment without newline is not an alert yet and is dropped. A
    truncated or corrupt gzip yields its complete lines, then raises
    ArchiveError naming the uncompressed offset and the line where it broke.
    """
    opener = gzip.open if path.name.endswith(".gz") else open
    offset = 0
    line_count = 0
    pending = b""
    with opener(path, "rb") as stream:
        while True:
            try:
                chunk = stream.read1(READ_CHUNK_BYTES)
            except (EOFError, OSError, zlib.error) as err:
                raise ArchiveError(
                    f"{path}: {describe_gzip_error(err)} at uncompressed offset "
                    f"{offset} (line {line_count + 1}); expected a complete gzip "
                    "stream; later lines of this file are lost"
                ) from err
            if not chunk:
                break
            offset += len(chunk)
            lines, pending = split_complete(pending + chunk)
            line_count += len(lines)
            yield from lines
    if pending:
        log.warning("partial_last_line path=%s bytes=%d", path, len(pending))


def split_complete(buffer: bytes) -> tuple[list[bytes], bytes]:
    """Split a buffer into complete lines and the trailing fragment."""
    lines = buffer.split(b"\n")
    return lines[:-1], lines[-1]


def describe_gzip_error(err: BaseException) -> str:
    if isinstance(err, EOFError):
        return "truncated gzip"
    return f"corrupt gzip ({err})"
