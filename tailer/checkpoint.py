"""The checkpoint: where the tailer resumes, in ``<state_dir>/state.db`` (SQLite).

Three tables, one small database, every write committed with
``synchronous=FULL`` so a power cut never leaves a position ahead of the output:

* ``position``: one row, the ``Position`` of the next unread alert line
  (``load`` / ``save``; call ``save`` once per batch, after the output holds the
  batch's enrichments).
* ``emitted``: keys of enrichments already written, so a restart that re-reads
  alerts does not write them twice. The output side builds the keys (any text,
  e.g. ``"<alert id>|<indicator>|<field path>"``) and calls ``remember`` after
  writing, ``seen`` before; ``prune`` drops keys older than a window.
* ``meta``: a ``counters`` JSON blob for the status command
  (``save_counters`` / ``load_counters``).

The store is safe to share between threads of one process (one lock).
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from tailer.follow import FileIdentity, Position

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS position (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    device INTEGER NOT NULL,
    inode INTEGER NOT NULL,
    fingerprint TEXT NOT NULL,
    offset INTEGER NOT NULL,
    path TEXT NOT NULL,
    saved_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS emitted (
    key TEXT PRIMARY KEY,
    emitted_at REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS emitted_by_time ON emitted (emitted_at);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""


class CheckpointError(RuntimeError):
    """The state database cannot be opened, read or written."""


class CheckpointStore:
    """Tail position, emitted-enrichment keys and counters in ``state.db``."""

    def __init__(self, state_dir: str | os.PathLike) -> None:
        self.path = Path(state_dir) / "state.db"
        self._lock = threading.Lock()
        try:
            _make_private_dir(Path(state_dir))
            self._db = _open_db(self.path)
        except (OSError, sqlite3.Error) as err:
            raise CheckpointError(
                f"checkpoint {self.path}: cannot open ({err}); "
                "expected a writable state directory"
            ) from err

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> CheckpointStore:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # -- position ------------------------------------------------------------

    def load(self) -> Position | None:
        """The last saved position, or None on a first start."""
        row = self._fetch_one(
            "SELECT device, inode, fingerprint, offset, path FROM position"
        )
        if row is None:
            return None
        device, inode, fingerprint, offset, path = row
        return Position(FileIdentity(device, inode, fingerprint), offset, path)

    def save(self, position: Position) -> None:
        """Replace the saved position (committed and synced before returning)."""
        ident = position.identity
        self._write(
            "INSERT OR REPLACE INTO position VALUES (1, ?, ?, ?, ?, ?, ?)",
            (ident.device, ident.inode, ident.fingerprint, position.offset,
             position.path, time.time()),
        )  # fmt: skip

    # -- emitted enrichment keys -------------------------------------------------

    def remember(self, keys: Iterable[str], *, now: float | None = None) -> None:
        """Record keys of enrichments just written (one transaction)."""
        stamp = time.time() if now is None else now
        rows = [(key, stamp) for key in keys]
        if rows:
            self._write_many(
                "INSERT OR REPLACE INTO emitted (key, emitted_at) VALUES (?, ?)", rows
            )

    def seen(self, key: str) -> bool:
        """True when an enrichment with this key was remembered (and not pruned)."""
        row = self._fetch_one("SELECT 1 FROM emitted WHERE key = ?", (key,))
        return row is not None

    def prune(self, older_than_s: float, *, now: float | None = None) -> int:
        """Forget keys remembered more than ``older_than_s`` ago; return how many."""
        cutoff = (time.time() if now is None else now) - older_than_s
        return self._write("DELETE FROM emitted WHERE emitted_at < ?", (cutoff,))

    # -- counters --------------------------------------------------------------

    def save_counters(self, counters: dict) -> None:
        """Store the status counters (any JSON-serialisable dict)."""
        text = json.dumps(counters, sort_keys=True)
        self._write("INSERT OR REPLACE INTO meta VALUES ('counters', ?)", (text,))

    def load_counters(self) -> dict:
        row = self._fetch_one("SELECT value FROM meta WHERE key = 'counters'")
        return {} if row is None else json.loads(row[0])

    # -- plumbing ----------------------------------------------------------------

    def _fetch_one(self, sql: str, params: tuple = ()) -> tuple | None:
        with self._lock:
            try:
                return self._db.execute(sql, params).fetchone()
            except sqlite3.Error as err:
                raise CheckpointError(f"checkpoint {self.path}: {err}") from err

    def _write(self, sql: str, params: tuple) -> int:
        with self._lock:
            try:
                with self._db:
                    return self._db.execute(sql, params).rowcount
            except sqlite3.Error as err:
                raise CheckpointError(f"checkpoint {self.path}: {err}") from err

    def _write_many(self, sql: str, rows: list[tuple]) -> None:
        with self._lock:
            try:
                with self._db:
                    self._db.executemany(sql, rows)
            except sqlite3.Error as err:
                raise CheckpointError(f"checkpoint {self.path}: {err}") from err


def _make_private_dir(state_dir: Path) -> None:
    if not state_dir.exists():
        state_dir.mkdir(mode=0o750, parents=True)
        os.chmod(state_dir, 0o750)


def _open_db(path: Path) -> sqlite3.Connection:
    fresh = not path.exists()
    db = sqlite3.connect(path, timeout=10, check_same_thread=False)
    if fresh:
        os.chmod(path, 0o640)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        db.close()
        raise sqlite3.DatabaseError(
            f"schema version {version} is newer than this program ({SCHEMA_VERSION})"
        )
    with db:
        db.executescript(_SCHEMA)
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    return db
