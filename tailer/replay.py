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
import multiprocessing
import os
import re
import sys
import time
import zlib
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO

from sync.logs import kv
from sync.store import StoreError, StoreReader, store_paths
from tailer.match import IndicatorIndex
from tailer.output import EnrichmentWriter
from tailer.pipeline import build_pipeline, match_lines
from tailer.stats import Counts, Progress, format_summary

log = logging.getLogger(__name__)

MONTHS = ("Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec").split()
PIECE_NAME = re.compile(r"^ossec-alerts-(\d{2})(?:-(\d{3}))?\.json(\.gz)?$")
# Read from a directory that holds no analysisd piece (exports, copies).
PLAIN_NAME = re.compile(r"^.+\.jsonl?(\.gz)?$")
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
    """Alert files below `root`: analysisd's pieces, else any JSON-lines file.

    A tree analysisd wrote keeps only its own names, so copies such as
    `alerts.json.bak` are not read twice; a directory of exports
    (`*.json`, `*.jsonl`, `*.json.gz`, `*.jsonl.gz`) is read whole.
    """
    files = sorted(path for path in root.rglob("*") if path.is_file())
    pieces = [path for path in files if is_alert_file(path)]
    return pieces or [path for path in files if PLAIN_NAME.match(path.name)]


def find_pieces(paths: Iterable[str | Path]) -> list[Piece]:
    """Return every piece named by files, directories and globs, oldest first.

    Each file is read once: pieces are deduplicated by (device, inode), and an
    `alerts.json` found by a walk is dropped when it holds the newest piece.
    `.sum` files never count.
    """
    return find_pieces_reporting(paths)[0]


def find_pieces_reporting(
    paths: Iterable[str | Path],
) -> tuple[list[Piece], list[Path]]:
    """find_pieces, and the directories that held no alert file (warned)."""
    files, dirs = expand_paths(paths)
    walks = {root: walk_directory(root) for root in dirs}
    empty = [root for root, found in walks.items() if not found]
    for root in empty:
        log.warning(kv("replay_no_alert_files", path=root))
    walked = [path for found in walks.values() for path in found]
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
    return drop_current_copies(pieces, set(walked)), empty


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
    for lines, _ in read_batches(path):
        yield from lines


def read_batches(path: Path) -> Iterator[tuple[list[bytes], int]]:
    """Yield (complete lines, bytes they took) per chunk; see read_lines."""
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
            lines, rest = split_complete(pending + chunk)
            line_count += len(lines)
            yield lines, len(pending) + len(chunk) - len(rest)
            pending = rest
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


# -- options ----------------------------------------------------------------------

RELATIVE_TIME = re.compile(r"^([0-9]{1,9})([smhd])$")
UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class ReplayError(Exception):
    """A replay option or the archive cannot be used."""


@dataclass(frozen=True)
class ReplayOptions:
    """What to replay and how; built from the command line or by retrohunt."""

    since: datetime | None = None
    until: datetime | None = None
    indicators_since: int | None = None
    emit: bool = False
    output: str = "-"
    jobs: int = 0


def parse_time(text: str, *, now: datetime | None = None) -> datetime:
    """Parse `2026-12-01`, an ISO 8601 time, or a relative `7d`/`12h`/`30m`."""
    now = now or datetime.now().astimezone()
    try:
        relative = RELATIVE_TIME.match(text.strip())
        if relative:
            amount, unit = relative.groups()
            return now - timedelta(seconds=int(amount) * UNIT_S[unit])
        moment = datetime.fromisoformat(text.strip())
        return moment if moment.tzinfo else moment.astimezone()
    except (ValueError, OverflowError) as err:
        raise ReplayError(
            f"replay time: not a time (got {text!r}); expected 2026-12-01, "
            "2026-12-01T10:00:00+00:00 or a relative 7d, 12h, 30m, from year 2 on"
        ) from err


TIME_FORMS = "2026-12-01, 2026-12-01T10:00:00+00:00, or 7d/12h/30m ago"


def add_replay_arguments(parser) -> None:
    parser.add_argument(
        "paths",
        nargs="+",
        metavar="PATH",
        help="alert files (plain or .gz), directories (analysisd's YYYY/Mon tree, "
        "else every *.json[l][.gz]) or globs",
    )
    parser.add_argument(
        "--since", metavar="TIME", help=f"skip alerts before TIME ({TIME_FORMS})"
    )
    parser.add_argument(
        "--until", metavar="TIME", help=f"skip alerts after TIME ({TIME_FORMS})"
    )
    levels = parser.add_mutually_exclusive_group()
    levels.add_argument(
        "--min-level",
        type=int,
        metavar="N",
        help="lowest rule.level to match (default tailer.min_level)",
    )
    levels.add_argument(
        "--all-levels", action="store_true", help="match alerts of every level"
    )
    parser.add_argument(
        "--output",
        default="-",
        metavar="FILE|-",
        help="write hits to FILE, replacing it (default -: stdout); "
        "never the live enrichment log",
    )
    parser.add_argument(
        "--emit",
        action="store_true",
        help="append hits to the live enrichment log (output.path) instead, "
        "skipping those already there",
    )
    parser.add_argument(
        "--indicators-since",
        metavar="TIME|last-sync",
        help="match only indicators stored since TIME, or since the last sync run",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=0,
        metavar="N",
        help="worker processes (default 0: one per CPU, at most one per file); "
        "output is the same for any N",
    )


def replay_overrides(args) -> dict[str, object]:
    if args.all_levels:
        return {"tailer.min_level": 0}
    if args.min_level is not None:
        return {"tailer.min_level": args.min_level}
    return {}


def options_from_args(cfg: Any, args) -> ReplayOptions:
    return ReplayOptions(
        since=parse_time(args.since) if args.since else None,
        until=parse_time(args.until) if args.until else None,
        indicators_since=indicators_since(cfg, args.indicators_since),
        emit=args.emit,
        output=args.output,
        jobs=args.jobs,
    )


def indicators_since(cfg: Any, text: str | None) -> int | None:
    """Epoch second from `--indicators-since` (`last-sync`: the last sync run)."""
    if text is None:
        return None
    if text != "last-sync":
        return int(parse_time(text).timestamp())
    with StoreReader(store_paths(cfg)) as reader:
        last_run = reader.meta("last_run")
    started = last_run.get("time") if isinstance(last_run, dict) else None
    if not isinstance(started, int | float):
        raise ReplayError(
            "replay --indicators-since last-sync: the store records no sync run "
            f"(got {last_run!r}); expected a store written by misp-ioc-sync"
        )
    return int(started)


def in_days(pieces: list[Piece], options: ReplayOptions) -> list[Piece]:
    """Drop dated pieces outside [since, until] by their day; keep undated ones."""
    first = options.since.date() if options.since else date.min
    last = options.until.date() if options.until else date.max
    return [p for p in pieces if p.day is None or first <= p.day <= last]


def time_filter(options: ReplayOptions):
    """A filter on alert timestamps, or None when no window was asked for."""
    if options.since is None and options.until is None:
        return None
    since, until = options.since, options.until

    def within(alert: dict) -> bool:
        moment = alert_time(alert.get("timestamp"))
        if moment is None:
            return True
        return (since is None or moment >= since) and (until is None or moment <= until)

    return within


def alert_time(text: Any) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        moment = datetime.fromisoformat(text)
        # An alert time without an offset is taken as the manager's local time.
        return moment if moment.tzinfo else moment.astimezone()
    except (ValueError, OverflowError):
        return None


# -- running ----------------------------------------------------------------------


@dataclass
class PieceResult:
    """What one worker found in one piece."""

    path: str
    matches: list
    counts: Counts
    error: str | None = None


_worker: dict[str, Any] = {}


def start_worker(cfg: Any, options: ReplayOptions) -> None:
    """Open this process's own read-only index and pipeline (once per process)."""
    reader = StoreReader(store_paths(cfg))
    index = IndicatorIndex(reader, since=options.indicators_since)
    _worker["pipeline"] = build_pipeline(cfg, index, alert_filter=time_filter(options))


def replay_piece(path_text: str) -> PieceResult:
    """Run every complete line of one piece through the pipeline."""
    ctx = _worker["pipeline"]
    ctx.counts = Counts()
    matches: list = []
    error = None
    try:
        for lines, size_bytes in read_batches(Path(path_text)):
            first = ctx.counts.lines + 1
            numbers = range(first, first + len(lines))
            matches += match_lines(lines, ctx, path=path_text, numbers=numbers)
            ctx.counts.bytes_read += size_bytes
    except (ArchiveError, OSError) as err:
        error = str(err) if isinstance(err, ArchiveError) else f"{path_text}: {err}"
    return PieceResult(path_text, matches, ctx.counts, error)


def iter_results(cfg: Any, options: ReplayOptions, pieces: list[Piece]):
    """Results per piece, in piece order; several processes when it pays."""
    paths = [str(piece.path) for piece in pieces]
    jobs = options.jobs or min(os.cpu_count() or 1, len(paths))
    if jobs <= 1 or len(paths) <= 1:
        start_worker(cfg, options)
        yield from map(replay_piece, paths)
        return
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(
        jobs, mp_context=context, initializer=start_worker, initargs=(cfg, options)
    ) as pool:
        yield from pool.map(replay_piece, paths)


class StreamWriter(EnrichmentWriter):
    """The live writer's dedup and flood control, writing to a stream instead.

    Replay output goes through the same decisions as the live log, so a replay
    of an archive writes the lines the tailer wrote when the alerts were new.
    """

    def __init__(self, stream: BinaryIO, **options: Any) -> None:
        super().__init__(getattr(stream, "name", "-"), **options)
        self.stream = stream

    def write_line(self, line: bytes) -> None:
        self.stream.write(line)


def open_output(path: str) -> BinaryIO:
    """Open `--output` for writing, or say why not."""
    try:
        return open(path, "wb")  # noqa: SIM115 - closed by HitSink.close
    except OSError as err:
        raise ReplayError(
            f"replay --output: cannot write {path} ({err.strerror}); expected a "
            "writable file path, or - for stdout"
        ) from err


class HitSink:
    """Where replayed hits go: a file or stdout, or the live enrichment log.

    Hits arrive in piece order whatever the number of jobs, and flood control
    runs here, after that merge, so its result does not depend on --jobs.
    """

    def __init__(self, cfg: Any, options: ReplayOptions) -> None:
        writer_options = {
            "flood_window_s": cfg.output.flood_window_s,
            "max_line_bytes": cfg.output.max_line_bytes,
        }
        self.stream: BinaryIO | None = None
        if options.emit:
            self.writer = EnrichmentWriter(cfg.output.path, **writer_options)
            self.writer.recover_tail(0)
        elif options.output == "-":
            self.writer = StreamWriter(sys.stdout.buffer, **writer_options)
        else:
            refuse_live_log(cfg, options.output)
            self.stream = open_output(options.output)
            self.writer = StreamWriter(self.stream, **writer_options)

    @property
    def written(self) -> int:
        return self.writer.counts["written"]

    @property
    def suppressed(self) -> int:
        return self.writer.counts["suppressed"]

    def write(self, matches: list) -> None:
        for alert, hit in matches:
            self.writer.write_hit(alert, hit, replay=True)

    def close(self) -> None:
        if isinstance(self.writer, StreamWriter):
            self.writer.stream.flush()
        else:
            self.writer.flush(fsync=True)
        self.writer.close()
        if self.stream is not None:
            self.stream.close()


def refuse_live_log(cfg: Any, output: str) -> None:
    """--output overwrites its file: never let it be the live enrichment log."""
    live = Path(cfg.output.path)
    target = Path(output)
    same = target.resolve() == live.resolve()
    if not same and target.exists() and live.exists():
        same = os.path.samefile(target, live)
    if same:
        raise ReplayError(
            f"replay --output: is the live enrichment log (got {output}); "
            "expected another file, or --emit to append to it"
        )


def replay(cfg: Any, options: ReplayOptions, paths: Iterable[str | Path]) -> tuple:
    """Replay archive paths; return (counts, pieces, errors, hits written)."""
    found, empty = find_pieces_reporting(paths)
    pieces = in_days(found, options)
    total = Counts()
    errors = [
        f"replay {root}: no alert files (got none); expected analysisd's "
        "ossec-alerts-*.json[.gz] or *.json, *.jsonl, *.json.gz, *.jsonl.gz"
        for root in empty
    ]
    sink = HitSink(cfg, options)
    progress = Progress(
        sys.stderr, enabled=sys.stderr.isatty(), total_files=len(pieces)
    )
    try:
        for done, result in enumerate(iter_results(cfg, options, pieces), start=1):
            sink.write(result.matches)
            total.add(result.counts)
            if result.error:
                errors.append(result.error)
                log.error(kv("replay_piece_incomplete", error=result.error))
            progress.update(total, files_done=done)
    finally:
        progress.close()
        sink.close()
    total.written, total.suppressed = sink.written, sink.suppressed
    return total, pieces, errors, sink.written


def run_replay(cfg: Any, args) -> int:
    """The `replay` subcommand: 0 when every piece was read to its end, else 1."""
    started = time.monotonic()
    try:
        options = options_from_args(cfg, args)
        total, pieces, errors, _ = replay(cfg, options, args.paths)
    except (ReplayError, ArchiveError, StoreError) as err:
        print(err, file=sys.stderr)
        return 2 if isinstance(err, ReplayError | ArchiveError) else 1

    elapsed_s = time.monotonic() - started
    summary = format_summary(
        total, files=len(pieces), errors=len(errors), elapsed_s=elapsed_s
    )
    print(summary, file=sys.stderr)
    for error in errors:
        print(f"error: {error}", file=sys.stderr)
    return 1 if errors else 0


def retrohunt(cfg: Any, since: int) -> int:
    """Replay the last `sync.retrohunt_days` days against indicators stored since
    `since` (epoch s), appending hits (marked replayed) to the enrichment log.

    Returns the number of enrichments written.
    """
    days = cfg.sync.retrohunt_days
    if days <= 0:
        return 0
    alerts_dir = Path(cfg.tailer.alerts_path).parent
    first = datetime.now().astimezone() - timedelta(days=days)
    options = ReplayOptions(
        since=first.replace(hour=0, minute=0, second=0, microsecond=0),
        indicators_since=since,
        emit=True,
    )
    total, pieces, errors, written = replay(cfg, options, [alerts_dir])
    log.info(
        "retrohunt_done days=%d pieces=%d lines=%d hits=%d written=%d errors=%d",
        days, len(pieces), total.lines, total.hits, written, len(errors),
    )  # fmt: skip
    return written
