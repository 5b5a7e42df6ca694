"""The IOC store: four SQLite databases, one per kind (ip, domain, url, hash).

Every database has the same schema. Table ``indicator`` holds one row per MISP
attribute value, keyed by ``attribute_uuid`` (a ``domain|ip`` attribute gives a
domain row and an ip row, each in its own database)::

    attribute_uuid TEXT PRIMARY KEY   value TEXT (normalised)   raw_value TEXT
    subtype (ip, cidr, domain, hostname, url, md5, sha1, ...)   port INTEGER
    misp_type  category  to_ids  attribute_id  event_id  event_uuid  event_info
    threat_level  tags (JSON array of event and attribute tag names)  comment
    first_seen  last_seen  attribute_timestamp INTEGER  source (MISP host or
    feed name)  stored_at INTEGER (epoch; kept while the row is unchanged)
    seen_run INTEGER (the run that last saw the row, for reconcile)
    ip_version INTEGER, prefix_len INTEGER (ip rows; prefix_len only for cidr)

Table ``meta(key, value)`` holds JSON values: ``cursor`` (the sync cursor),
``last_run``, ``last_reconcile``, ``generation`` (bumped by every commit that
changed rows) and per-feed state ``feed:<name>``.

The sync writes all four databases in one ``StoreWriter``; the cursor is written
into each and the effective cursor is the minimum, so a crash between two of
the four commits causes a re-pull, never a gap.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson

log = logging.getLogger(__name__)

STORE_KINDS = ("ip", "domain", "url", "hash")
_PATH_KEYS = {"ip": "ips_db", "domain": "domains_db", "url": "urls_db"}
_PATH_KEYS["hash"] = "hashes_db"

READER_BUSY_TIMEOUT_MS = 100
WRITER_BUSY_TIMEOUT_MS = 10_000
# Per database; four are open in a sync. Pages past it spill to the WAL file
# (still inside the transaction), which bounds the sync's memory.
WRITER_CACHE_KIB = 12288
_BATCH_ROWS = 2000

_MIGRATIONS: tuple[str, ...] = (
    # 1: the indicator and meta tables.
    """
    CREATE TABLE indicator (
        attribute_uuid TEXT PRIMARY KEY,
        value TEXT NOT NULL,
        raw_value TEXT,
        subtype TEXT NOT NULL,
        port INTEGER,
        misp_type TEXT,
        category TEXT,
        to_ids INTEGER,
        attribute_id TEXT,
        event_id TEXT,
        event_uuid TEXT,
        event_info TEXT,
        threat_level TEXT,
        tags TEXT NOT NULL DEFAULT '[]',
        comment TEXT,
        first_seen TEXT,
        last_seen TEXT,
        attribute_timestamp INTEGER,
        source TEXT NOT NULL DEFAULT '',
        stored_at INTEGER NOT NULL,
        seen_run INTEGER,
        ip_version INTEGER,
        prefix_len INTEGER
    );
    CREATE INDEX indicator_value ON indicator (value);
    CREATE INDEX indicator_network ON indicator (ip_version, prefix_len)
        WHERE prefix_len IS NOT NULL;
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    INSERT INTO meta (key, value) VALUES ('generation', '0');
    """,
)
SCHEMA_VERSION = len(_MIGRATIONS)

COLUMNS = (
    "attribute_uuid",
    "value",
    "raw_value",
    "subtype",
    "port",
    "misp_type",
    "category",
    "to_ids",
    "attribute_id",
    "event_id",
    "event_uuid",
    "event_info",
    "threat_level",
    "tags",
    "comment",
    "first_seen",
    "last_seen",
    "attribute_timestamp",
    "source",
    "stored_at",
    "seen_run",
    "ip_version",
    "prefix_len",
)
# The columns of ``StoreWriter.upsert_values``, in order; the writer adds
# stored_at, seen_run and the ip columns.
VALUE_COLUMNS = COLUMNS[: COLUMNS.index("stored_at")]
# Columns whose change makes a row "changed"; seen_run and stored_at are not.
_CONTENT_COLUMNS = tuple(c for c in COLUMNS if c not in ("stored_at", "seen_run"))


class StoreError(Exception):
    """A store database cannot be used."""


class StoreUnavailable(StoreError):
    """A store database is missing, unreadable or of another schema version."""


def store_paths(cfg: Any) -> dict[str, Path]:
    """Return the database path of each kind from a ``Config``."""
    return {kind: Path(getattr(cfg.store, key)) for kind, key in _PATH_KEYS.items()}


# ---------------------------------------------------------------- opening


def open_store(path: Path | str, *, readonly: bool = False) -> sqlite3.Connection:
    """Open one store database, creating and migrating it unless ``readonly``.

    Readers never create anything and wait at most 100 ms for a lock. A reader
    of a WAL database needs its ``-shm`` file, so the tailer's user must be able
    to write the store directory (or the sync must have left the file there).
    """
    path = Path(path)
    if readonly:
        return _open_reader(path)
    _create_file(path)
    try:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {WRITER_BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute(f"PRAGMA cache_size = -{WRITER_CACHE_KIB}")
        conn.execute("PRAGMA temp_store = FILE")
        _migrate(conn, path)
    except sqlite3.Error as err:
        raise StoreUnavailable(f"store {path}: cannot open ({err})") from err
    return conn


def _create_file(path: Path) -> None:
    path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
    if not path.exists():
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o640))


def _open_reader(path: Path) -> sqlite3.Connection:
    if not path.is_file():
        raise StoreUnavailable(
            f"store {path}: database missing; expected a file written by misp-ioc-sync"
        )
    try:
        conn = sqlite3.connect(
            f"{path.resolve().as_uri()}?mode=ro",
            uri=True,
            isolation_level=None,
            check_same_thread=False,
        )
        conn.execute(f"PRAGMA busy_timeout = {READER_BUSY_TIMEOUT_MS}")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
    except sqlite3.Error as err:
        raise StoreUnavailable(f"store {path}: cannot open ({err})") from err
    if version != SCHEMA_VERSION:
        conn.close()
        raise StoreUnavailable(
            f"store {path}: schema version {version}; expected {SCHEMA_VERSION}"
            " (run misp-ioc-sync to create or upgrade it)"
        )
    return conn


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreUnavailable(
                f"store {path}: schema version {version} is newer than this program;"
                f" expected <= {SCHEMA_VERSION}"
            )
        for number in range(version, SCHEMA_VERSION):
            for statement in _MIGRATIONS[number].split(";"):
                if statement.strip():
                    conn.execute(statement)
            log.info("store_migrated path=%s version=%d", path, number + 1)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


# ---------------------------------------------------------------- values


def _dump(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def _network_columns(value: str) -> tuple[int, int | None]:
    address, slash, length = value.partition("/")
    version = 6 if ":" in address else 4
    return version, int(length) if slash else None


_AT = {column: at for at, column in enumerate(COLUMNS)}


def _row_params(kind: str, row: dict[str, Any], *, run_id: int, now: int) -> tuple:
    get = row.get
    params = [get(column) for column in COLUMNS]
    tags = params[_AT["tags"]]
    if not isinstance(tags, str):
        params[_AT["tags"]] = orjson.dumps(list(tags or ())).decode()
    to_ids = params[_AT["to_ids"]]
    if to_ids is not None:
        params[_AT["to_ids"]] = int(bool(to_ids))
    params[_AT["source"]] = params[_AT["source"]] or ""
    params[_AT["stored_at"]] = params[_AT["stored_at"]] or now
    if params[_AT["seen_run"]] is None:
        params[_AT["seen_run"]] = run_id
    if kind == "ip":
        network = _network_columns(params[_AT["value"]])
        params[_AT["ip_version"]], params[_AT["prefix_len"]] = network
    return tuple(params)


_UPSERT_SQL = (
    f"INSERT INTO indicator ({', '.join(COLUMNS)})"
    f" VALUES ({', '.join('?' * len(COLUMNS))})"
    " ON CONFLICT (attribute_uuid) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in COLUMNS if c != "stored_at")
    + ", stored_at = CASE WHEN "
    + " OR ".join(f"indicator.{c} IS NOT excluded.{c}" for c in _CONTENT_COLUMNS)
    + " THEN excluded.stored_at ELSE indicator.stored_at END"
)
# A re-pull rewrites every row (seen_run must move) but only a content change
# counts as a change; this per-connection trigger counts those.
_CHANGE_COUNTER_SQL = (
    "CREATE TEMP TABLE IF NOT EXISTS content_changes (n INTEGER NOT NULL);"
    "INSERT INTO content_changes (n) VALUES (0);"
    "CREATE TEMP TRIGGER IF NOT EXISTS count_content_changes"
    " AFTER UPDATE ON main.indicator WHEN "
    + " OR ".join(f"old.{c} IS NOT new.{c}" for c in _CONTENT_COLUMNS)
    + " BEGIN UPDATE content_changes SET n = n + 1; END"
)
_SEEN_SQL = "UPDATE indicator SET seen_run = ? WHERE attribute_uuid = ?"
# The secondary indexes, as migration 1 creates them. Into an empty table (a
# first sync) rows go faster without them: random inserts into the value index
# cost more than the rest of a row. They are built once before the commit,
# inside the same transaction, so readers never see a store without them.
_SECONDARY_INDEXES = {
    "indicator_value": "CREATE INDEX indicator_value ON indicator (value)",
    "indicator_network": (
        "CREATE INDEX indicator_network ON indicator (ip_version, prefix_len)"
        " WHERE prefix_len IS NOT NULL"
    ),
}


# ---------------------------------------------------------------- writer


class StoreWriter:
    """One write transaction on each of the four databases, for one sync run.

    Rows are buffered and written in batches. Use as a context manager: an
    exception rolls every database back, leaving the previous content.
    """

    def __init__(self, paths: dict[str, Path], *, run_id: int | None = None) -> None:
        self.paths = {kind: Path(paths[kind]) for kind in STORE_KINDS}
        self.run_id = int(time.time()) if run_id is None else run_id
        self._now = int(time.time())
        self._conns: dict[str, sqlite3.Connection] = {}
        self._pending: dict[str, list[tuple]] = {kind: [] for kind in STORE_KINDS}
        self._changed = dict.fromkeys(STORE_KINDS, False)
        self._removed = dict.fromkeys(STORE_KINDS, 0)
        self._bulk: set[str] = set()
        try:
            for kind, path in self.paths.items():
                self._conns[kind] = open_store(path)
                self._conns[kind].executescript(_CHANGE_COUNTER_SQL)
                self._conns[kind].execute("BEGIN IMMEDIATE")
                self._start_bulk_if_empty(kind)
        except BaseException:
            self._close(rollback=True)
            raise

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, *_: object) -> None:
        if self._conns:
            self.rollback()

    def upsert(self, kind: str, row: dict[str, Any]) -> None:
        """Insert or update one indicator row (``attribute_uuid`` and ``value``)."""
        pending = self._pending[kind]
        pending.append(_row_params(kind, row, run_id=self.run_id, now=self._now))
        if len(pending) >= _BATCH_ROWS:
            self._flush(kind)

    def upsert_values(self, kind: str, values: tuple) -> None:
        """Like ``upsert``, from a tuple in ``VALUE_COLUMNS`` order.

        ``tags`` must be JSON text and ``to_ids`` 0, 1 or None: the sync's fast
        path, which skips building a dict per row.
        """
        pending = self._pending[kind]
        if kind == "ip":
            network = _network_columns(values[1])
            pending.append((*values, self._now, self.run_id, *network))
        else:
            pending.append((*values, self._now, self.run_id, None, None))
        if len(pending) >= _BATCH_ROWS:
            self._flush(kind)

    def mark_seen(self, kind: str, uuids: Iterable[str]) -> None:
        """Record that this run saw these attributes unchanged."""
        self._flush(kind)
        params = [(self.run_id, uuid) for uuid in uuids]
        self._conns[kind].executemany(_SEEN_SQL, params)

    def delete_uuids(self, kind: str, uuids: Iterable[str]) -> int:
        """Delete rows by attribute uuid; return how many went."""
        self._flush(kind)
        sql = "DELETE FROM indicator WHERE attribute_uuid = ?"
        count = self._conns[kind].executemany(sql, [(u,) for u in uuids]).rowcount
        self._changed[kind] |= count > 0
        self._removed[kind] += count
        return count

    def delete_uuid(self, kind: str, uuid: str) -> int:
        return self.delete_uuids(kind, [uuid])

    def count_not_seen(self, kind: str, run_id: int, source: str) -> int:
        """Count rows of ``source`` that run ``run_id`` did not see."""
        self._flush(kind)
        sql = "SELECT count(*) FROM indicator WHERE source = ? AND seen_run IS NOT ?"
        return self._conns[kind].execute(sql, (source, run_id)).fetchone()[0]

    def delete_not_seen(self, kind: str, run_id: int, source: str) -> int:
        """Delete rows of ``source`` that run ``run_id`` did not see."""
        self._flush(kind)
        sql = "DELETE FROM indicator WHERE source = ? AND seen_run IS NOT ?"
        count = self._conns[kind].execute(sql, (source, run_id)).rowcount
        self._changed[kind] |= count > 0
        self._removed[kind] += count
        return count

    def removed_counts(self) -> dict[str, int]:
        """Rows deleted so far in this transaction, per kind."""
        return dict(self._removed)

    def count(self, kind: str, source: str | None = None) -> int:
        """Count rows of a kind, of one source when given."""
        self._flush(kind)
        if source is None:
            sql, params = "SELECT count(*) FROM indicator", ()
        else:
            sql, params = "SELECT count(*) FROM indicator WHERE source = ?", (source,)
        return self._conns[kind].execute(sql, params).fetchone()[0]

    def set_meta(self, key: str, value: Any) -> None:
        """Write a JSON value under ``key`` into every database."""
        sql = "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)"
        for conn in self._conns.values():
            conn.execute(sql, (key, _dump(value)))

    def get_meta(self, key: str) -> Any:
        """Return ``key`` as written in this transaction (``cursor``: minimum)."""
        return _combine_meta(key, [_read_meta(c, key) for c in self._conns.values()])

    def commit(self) -> dict[str, bool]:
        """Commit every database; return which kinds had changed rows."""
        for kind in STORE_KINDS:
            self._flush(kind)
            self._end_bulk(kind)
        for kind, conn in self._conns.items():
            if self._changed[kind]:
                conn.execute(
                    "UPDATE meta SET value = CAST(value AS INTEGER) + 1"
                    " WHERE key = 'generation'"
                )
            conn.execute("COMMIT")
        changed = dict(self._changed)
        self._close(rollback=False)
        log.debug("store_committed run_id=%d changed=%s", self.run_id, changed)
        return changed

    def rollback(self) -> None:
        """Abandon every change of this writer."""
        self._close(rollback=True)

    def _start_bulk_if_empty(self, kind: str) -> None:
        conn = self._conns[kind]
        if conn.execute("SELECT 1 FROM indicator LIMIT 1").fetchone() is None:
            for name in _SECONDARY_INDEXES:
                conn.execute(f"DROP INDEX IF EXISTS {name}")
            self._bulk.add(kind)

    def _end_bulk(self, kind: str) -> None:
        if kind in self._bulk:
            for statement in _SECONDARY_INDEXES.values():
                self._conns[kind].execute(statement)
            self._bulk.discard(kind)

    def _flush(self, kind: str) -> None:
        pending = self._pending[kind]
        if not pending:
            return
        conn = self._conns[kind]
        top_rowid = conn.execute("SELECT max(rowid) FROM indicator").fetchone()[0]
        conn.executemany(_UPSERT_SQL, pending)
        new_top = conn.execute("SELECT max(rowid) FROM indicator").fetchone()[0]
        updated = conn.execute("SELECT n FROM content_changes").fetchone()[0]
        self._changed[kind] |= updated > 0 or new_top != top_rowid
        pending.clear()

    def _close(self, *, rollback: bool) -> None:
        for conn in self._conns.values():
            if rollback and conn.in_transaction:
                conn.execute("ROLLBACK")
            conn.close()
        self._conns = {}
        self._pending = {kind: [] for kind in STORE_KINDS}


# ---------------------------------------------------------------- reader


def _read_meta(conn: sqlite3.Connection, key: str) -> Any:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return None if row is None else json.loads(row[0])


def _combine_meta(key: str, values: list[Any]) -> Any:
    if key == "cursor":
        return None if None in values else min(values)
    return next((v for v in values if v is not None), None)


def _context(columns: list[str], row: tuple) -> dict[str, Any]:
    context = dict(zip(columns, row, strict=True))
    context["tags"] = json.loads(context["tags"] or "[]")
    context["to_ids"] = None if context["to_ids"] is None else bool(context["to_ids"])
    return context


# The most precise indicator first (an address before its network, a hostname
# before the domain that covers it), then the newest MISP edit, then the uuid
# so that equal rows always come back in the same order.
CONTEXT_ORDER = (
    "ORDER BY value, subtype IN ('cidr', 'domain'),"
    " attribute_timestamp IS NULL, attribute_timestamp DESC, attribute_uuid"
)


class StoreReader:
    """Read-only access to the four databases (never blocks more than 100 ms).

    Safe to share between threads: each query holds a lock on the connection.
    """

    def __init__(self, paths: dict[str, Path]) -> None:
        self.paths = {kind: Path(paths[kind]) for kind in STORE_KINDS}
        self._lock = threading.Lock()
        self._conns: dict[str, sqlite3.Connection] = {}
        try:
            for kind, path in self.paths.items():
                self._conns[kind] = open_store(path, readonly=True)
        except BaseException:
            self.close()
            raise
        self._generation: tuple = ()
        self._data_versions: tuple = ()

    def __enter__(self) -> StoreReader:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        for conn in self._conns.values():
            conn.close()
        self._conns = {}

    def generation(self) -> tuple:
        """Return a value that changes whenever committed rows change (cheap)."""
        with self._lock:
            versions = tuple(
                c.execute("PRAGMA data_version").fetchone()[0]
                for c in self._conns.values()
            )
            if versions != self._data_versions:
                self._data_versions = versions
                self._generation = tuple(
                    _read_meta(c, "generation") for c in self._conns.values()
                )
            return self._generation

    def iter_values(
        self, kind: str, *, since: int | None = None
    ) -> Iterator[tuple[str, str, int | None]]:
        """Yield ``(value, subtype, port)`` of every row, streaming.

        With ``since``, only rows stored at or after that epoch second. Use it
        from one thread at a time: the rows are read without the lock.
        """
        sql = "SELECT value, subtype, port FROM indicator"
        params: tuple = ()
        if since is not None:
            sql, params = sql + " WHERE stored_at >= ?", (since,)
        cursor = self._conns[kind].cursor()
        cursor.arraysize = 4096
        cursor.execute(sql, params)
        while rows := cursor.fetchmany():
            yield from rows

    def contexts(self, kind: str, values: str | Iterable[str]) -> list[dict[str, Any]]:
        """Return every row (every MISP context) for one value or several."""
        if isinstance(values, str):
            values = [values]
        values = list(values)
        if not values:
            return []
        marks = ", ".join("?" * len(values))
        sql = f"SELECT * FROM indicator WHERE value IN ({marks}) {CONTEXT_ORDER}"
        try:
            with self._lock:
                cursor = self._conns[kind].execute(sql, values)
                columns = [d[0] for d in cursor.description]
                rows = cursor.fetchall()
        except sqlite3.Error as err:
            path = self.paths[kind]
            raise StoreUnavailable(f"store {path}: read failed ({err})") from err
        return [_context(columns, row) for row in rows]

    def counts(self) -> dict[str, dict[str, int]]:
        """Return the number of rows per kind and source."""
        sql = "SELECT source, count(*) FROM indicator GROUP BY source"
        with self._lock:
            return {
                kind: dict(conn.execute(sql).fetchall())
                for kind, conn in self._conns.items()
            }

    def meta(self, key: str) -> Any:
        """Return a meta value; ``cursor`` is the minimum over the databases."""
        with self._lock:
            values = [_read_meta(c, key) for c in self._conns.values()]
        return _combine_meta(key, values)


def load_cursor(paths: dict[str, Path]) -> int | None:
    """Return the effective sync cursor, or None when any database is missing."""
    if not all(Path(paths[kind]).is_file() for kind in STORE_KINDS):
        return None
    with StoreReader(paths) as reader:
        return reader.meta("cursor")
