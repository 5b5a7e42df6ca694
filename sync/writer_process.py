"""The store transaction of a sync run, held by a child process.

The run's process fetches, parses, filters and normalises; a child process
owns the `StoreWriter` and does the SQLite work, so the two use both cores.
`ProcessWriter` has the `StoreWriter` methods a run uses; requests travel as
pickles over the child's stdin, answers over its stdout.

Upserts, deletes, `mark_seen` and `set_meta` are sent without waiting; a
request with an answer (counts, meta, commit) first gets any error of those.
The child commits only when asked to. End of input, a broken message or a
vanished parent makes it roll back and exit, so a run killed in any way
commits nothing and leaves no process behind holding the store.

    python -m sync.writer_process   (started by ProcessWriter, never by hand)
"""

from __future__ import annotations

import fcntl
import logging
import os
import pickle
import signal
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any, BinaryIO

from sync.logs import kv
from sync.store import STORE_KINDS, StoreError, StoreUnavailable, StoreWriter

log = logging.getLogger(__name__)

# Upserts sent per message: large enough to amortise a pickle, small enough to
# keep both processes busy.
SEND_ROWS = 2000
EXIT_WAIT_S = 30
# About three messages of SEND_ROWS upserts; capped by the system's limit.
PIPE_BYTES = 1 << 20
PIPE_MAX_PATH = "/proc/sys/fs/pipe-max-size"
_PACKAGE_ROOT = Path(__file__).resolve().parent.parent
_ANSWERED = frozenset(
    "count count_not_seen delete_not_seen get_meta removed_counts commit".split()
)


class ProcessWriter:
    """A `StoreWriter` in a child process; same use, same all-or-nothing."""

    def __init__(self, paths: dict[str, Path], *, run_id: int) -> None:
        self.run_id = run_id
        self._pending: list[tuple[str, tuple]] = []
        self._child = _start_child()
        try:
            self._call("open", {k: str(paths[k]) for k in STORE_KINDS}, run_id)
        except BaseException:
            self.rollback()
            raise

    def __enter__(self) -> ProcessWriter:
        return self

    def __exit__(self, *_: object) -> None:
        self.rollback()

    # -- sent without waiting

    def upsert_values(self, kind: str, values: tuple) -> None:
        pending = self._pending
        pending.append((kind, values))
        if len(pending) >= SEND_ROWS:
            self._send_pending()

    def upsert(self, kind: str, row: dict[str, Any]) -> None:
        self._post("upsert", kind, row)

    def delete_uuids(self, kind: str, uuids: Iterable[str]) -> None:
        """Delete rows by attribute uuid; `removed_counts` tells how many went."""
        self._post("delete_uuids", kind, list(uuids))

    def delete_uuid(self, kind: str, uuid: str) -> None:
        self.delete_uuids(kind, [uuid])

    def mark_seen(self, kind: str, uuids: Iterable[str]) -> None:
        self._post("mark_seen", kind, list(uuids))

    def set_meta(self, key: str, value: Any) -> None:
        self._post("set_meta", key, value)

    # -- answered

    def count(self, kind: str, source: str | None = None) -> int:
        return self._call("count", kind, source)

    def count_not_seen(self, kind: str, run_id: int, source: str) -> int:
        return self._call("count_not_seen", kind, run_id, source)

    def delete_not_seen(self, kind: str, run_id: int, source: str) -> int:
        return self._call("delete_not_seen", kind, run_id, source)

    def get_meta(self, key: str) -> Any:
        return self._call("get_meta", key)

    def removed_counts(self) -> dict[str, int]:
        return self._call("removed_counts")

    def commit(self) -> dict[str, bool]:
        """Commit every database in the child; return which kinds changed."""
        changed = self._call("commit")
        self._finish()
        return changed

    def rollback(self) -> None:
        """Abandon the transaction: end of input makes the child roll back."""
        self._finish()

    # -- transport

    def _send_pending(self) -> None:
        if self._pending:
            batch, self._pending = self._pending, []
            self._write(("upsert_values", batch))

    def _post(self, op: str, *args: Any) -> None:
        self._send_pending()
        self._write((op, *args))

    def _call(self, op: str, *args: Any) -> Any:
        self._post(op, *args)
        try:
            self._child.stdin.flush()
            status, value = pickle.load(self._child.stdout)
        except (OSError, EOFError, pickle.UnpicklingError, ValueError) as err:
            raise self._gone(err) from None
        if status == "error":
            error_type, message = value
            if error_type == StoreUnavailable.__name__:
                raise StoreUnavailable(message)
            raise StoreError(message)
        return value

    def _write(self, message: tuple) -> None:
        child = self._child
        if child is None:
            raise StoreError("store writer: used after commit or rollback")
        try:
            pickle.dump(message, child.stdin, protocol=pickle.HIGHEST_PROTOCOL)
        except (OSError, ValueError) as err:
            raise self._gone(err) from None

    def _gone(self, err: BaseException) -> StoreError:
        status = self._child.poll() if self._child else None
        return StoreError(
            f"store writer process: lost ({type(err).__name__}; exit status "
            f"{status}); expected it to run until commit or rollback"
        )

    def _finish(self) -> None:
        child, self._child = self._child, None
        self._pending = []
        if child is None:
            return
        for stream in (child.stdin, child.stdout):
            try:
                stream.close()
            except OSError:
                pass
        try:
            child.wait(timeout=EXIT_WAIT_S)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
            log.error(kv("store_writer_killed", pid=child.pid))


def _start_child() -> subprocess.Popen:
    # The child never talks to MISP: it gets no API key.
    env = {k: v for k, v in os.environ.items() if k != "MISP_API_KEY"}
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(_PACKAGE_ROOT) + (os.pathsep + path if path else "")
    level = logging.getLogger().getEffectiveLevel()
    child = subprocess.Popen(
        [sys.executable, "-m", "sync.writer_process", str(level)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        close_fds=True,
        env=env,
    )
    _widen_pipe(child.stdin.fileno())
    return child


def _widen_pipe(fd: int) -> None:
    """Let the pipe hold a few messages, so neither process waits on the other.

    With the default 64 KiB the run's process blocks in every send until the
    child has read most of it. Linux only; elsewhere the pipe stays as it is.
    """
    try:
        limit = int(Path(PIPE_MAX_PATH).read_text())
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, min(PIPE_BYTES, limit))
    except (OSError, ValueError, AttributeError):
        pass


# ---------------------------------------------------------------- the child


def serve(source: BinaryIO, answers: BinaryIO) -> int:
    """Apply requests from `source` to one StoreWriter until commit or EOF."""
    writer: StoreWriter | None = None
    failure: tuple[str, str] | None = None
    value: Any = None
    while True:
        try:
            message = pickle.load(source)
        except (EOFError, OSError, pickle.UnpicklingError, ValueError):
            break
        op, args = message[0], message[1:]
        try:
            if failure is None:
                writer, value = _apply(writer, op, args)
        except Exception as err:  # reported at the next answered request
            failure = (type(err).__name__, _describe(err))
        if op not in _ANSWERED and op != "open":
            continue
        answer = ("error", failure) if failure else ("ok", value)
        if not _answer(answers, answer) or (op == "commit" and not failure):
            return 0
    if writer is not None:
        writer.rollback()
    return 0


def _apply(writer: StoreWriter | None, op: str, args: tuple) -> tuple:
    if op == "open":
        paths, run_id = args
        return StoreWriter({k: Path(p) for k, p in paths.items()}, run_id=run_id), None
    if op == "upsert_values":
        upsert = writer.upsert_values
        for kind, values in args[0]:
            upsert(kind, values)
        return writer, None
    return writer, getattr(writer, op)(*args)


def _answer(answers: BinaryIO, answer: tuple) -> bool:
    try:
        pickle.dump(answer, answers, protocol=pickle.HIGHEST_PROTOCOL)
        answers.flush()
    except OSError:
        return False
    return True


def _describe(err: Exception) -> str:
    if isinstance(err, StoreError):
        return str(err)
    return f"store writer: {type(err).__name__}: {err}"


def main(argv: list[str]) -> int:
    # The parent decides when to stop: its end of input is the signal.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    level = int(argv[0]) if argv and argv[0].isdigit() else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    return serve(sys.stdin.buffer, sys.stdout.buffer)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
