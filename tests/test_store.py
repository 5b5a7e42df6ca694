"""The IOC store on real SQLite files: migrations, writes, reconcile, isolation."""

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from sync.store import (
    SCHEMA_VERSION,
    STORE_KINDS,
    VALUE_COLUMNS,
    StoreReader,
    StoreUnavailable,
    StoreWriter,
    load_cursor,
    open_store,
)

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def paths(tmp_path):
    return {kind: tmp_path / "ioc" / f"{kind}.db" for kind in STORE_KINDS}


def _row(uuid, value, **extra):
    row = {"attribute_uuid": uuid, "value": value, "subtype": "ip", "source": "misp"}
    return row | extra


def _write(paths, rows_by_kind, *, run_id=1, cursor=None):
    with StoreWriter(paths, run_id=run_id) as writer:
        for kind, rows in rows_by_kind.items():
            for row in rows:
                writer.upsert(kind, row)
        if cursor is not None:
            writer.set_meta("cursor", cursor)
        return writer.commit()


def test_open_store_migrates_an_empty_file_to_the_current_schema(tmp_path):
    """A zero-byte file gets every migration and the current user_version."""
    path = tmp_path / "new" / "ip.db"
    path.parent.mkdir()
    path.touch()

    conn = open_store(path)

    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    assert {"indicator", "meta", "indicator_value"} <= tables
    conn.close()


def test_open_store_creates_parent_and_file_readable_by_group_only(tmp_path):
    """A new database file is created 0640 under a created parent directory."""
    path = tmp_path / "a" / "b" / "hash.db"

    open_store(path).close()

    assert os.stat(path).st_mode & 0o777 == 0o640


def test_reopening_a_migrated_store_keeps_its_rows(paths):
    """Migrations run once; a second open leaves the content alone."""
    _write(paths, {"ip": [_row("u1", "192.0.2.10")]})

    open_store(paths["ip"]).close()

    with StoreReader(paths) as reader:
        assert [r["attribute_uuid"] for r in reader.contexts("ip", "192.0.2.10")] == [
            "u1"
        ]


def test_reader_names_the_missing_database_and_creates_nothing(paths):
    """A read-only open of a missing database fails clearly and creates no file."""
    with pytest.raises(StoreUnavailable) as caught:
        StoreReader(paths)

    assert str(paths["ip"]) in str(caught.value)
    assert not paths["ip"].exists()


def test_reader_refuses_a_database_of_another_schema_version(paths):
    """An unmigrated database is reported instead of read with a wrong schema."""
    _write(paths, {})
    conn = sqlite3.connect(paths["url"])
    conn.execute("PRAGMA user_version = 0")
    conn.close()

    with pytest.raises(StoreUnavailable) as caught:
        StoreReader(paths)

    assert "schema version 0" in str(caught.value)


def test_upsert_update_and_delete_change_rows_and_generation(paths):
    """Inserts and real updates bump the generation; an unchanged re-pull does not."""
    _write(paths, {"ip": [_row("u1", "192.0.2.10", tags=["tlp:white"])]})
    with StoreReader(paths) as reader:
        first = reader.generation()

        unchanged = _write(
            paths, {"ip": [_row("u1", "192.0.2.10", tags=["tlp:white"])]}
        )
        after_repull = reader.generation()
        changed = _write(paths, {"ip": [_row("u1", "192.0.2.11")]})
        after_update = reader.generation()
        rows_old = reader.contexts("ip", "192.0.2.10")
        rows_new = reader.contexts("ip", "192.0.2.11")

    assert unchanged["ip"] is False and after_repull == first
    assert changed["ip"] is True and after_update != first
    assert rows_old == [] and rows_new[0]["tags"] == []


def test_contexts_return_every_misp_context_of_a_value(paths):
    """The same value in two events gives two rows with their own context."""
    rows = [
        _row("u1", "192.0.2.10", event_id="1", tags=["a"], to_ids=True),
        _row("u2", "192.0.2.10", event_id="2", tags=["b", "c"], to_ids=0),
    ]
    _write(paths, {"ip": rows})

    with StoreReader(paths) as reader:
        found = reader.contexts("ip", ["192.0.2.10", "192.0.2.99"])

    assert [(r["event_id"], r["tags"], r["to_ids"]) for r in found] == [
        ("1", ["a"], True),
        ("2", ["b", "c"], False),
    ]


def test_stored_at_is_kept_while_the_row_is_unchanged(paths):
    """A re-pulled unchanged row keeps its first stored_at (replay uses it)."""
    _write(paths, {"hash": [_row("u1", "ab" * 16, stored_at=1000)]})

    _write(paths, {"hash": [_row("u1", "ab" * 16, stored_at=2000)]})
    with StoreReader(paths) as reader:
        kept = reader.contexts("hash", "ab" * 16)[0]["stored_at"]
    _write(paths, {"hash": [_row("u1", "cd" * 16, stored_at=3000)]})
    with StoreReader(paths) as reader:
        moved = reader.contexts("hash", "cd" * 16)[0]["stored_at"]

    assert (kept, moved) == (1000, 3000)


def test_reconcile_deletes_only_unseen_rows_of_the_same_source(paths):
    """Rows a run did not see go; rows seen, or of another source, stay."""
    _write(
        paths,
        {
            "domain": [
                _row("u1", "evil.example", subtype="domain"),
                _row("u2", "c2.bad.test", subtype="hostname"),
                _row("u3", "other.example", subtype="domain", source="feed:x"),
            ]
        },
        run_id=1,
    )

    with StoreWriter(paths, run_id=2) as writer:
        writer.upsert("domain", _row("u1", "evil.example", subtype="domain"))
        not_seen = writer.count_not_seen("domain", 2, "misp")
        deleted = writer.delete_not_seen("domain", 2, "misp")
        writer.commit()
    with StoreReader(paths) as reader:
        counts = reader.counts()

    assert (not_seen, deleted) == (1, 1)
    assert counts["domain"] == {"misp": 1, "feed:x": 1}


def test_mark_seen_and_delete_uuids_work_without_rewriting_rows(paths):
    """mark_seen protects a row from reconcile; delete_uuids removes by uuid."""
    _write(paths, {"url": [_row("u1", "http://a.test/", subtype="url")]}, run_id=1)
    _write(paths, {"url": [_row("u2", "http://b.test/", subtype="url")]}, run_id=1)

    with StoreWriter(paths, run_id=5) as writer:
        writer.mark_seen("url", ["u1"])
        removed = writer.delete_uuids("url", ["u2", "missing"])
        left_unseen = writer.count_not_seen("url", 5, "misp")
        writer.commit()

    assert (removed, left_unseen) == (1, 0)


def test_effective_cursor_is_the_minimum_over_the_four_databases(paths):
    """A crash between commits leaves one database behind; the minimum re-pulls."""
    _write(paths, {}, cursor=2000)
    conn = sqlite3.connect(paths["hash"])
    conn.execute("UPDATE meta SET value = '1500' WHERE key = 'cursor'")
    conn.commit()
    conn.close()

    with StoreReader(paths) as reader:
        cursor = reader.meta("cursor")

    with StoreWriter(paths, run_id=2) as writer:
        in_writer = writer.get_meta("cursor")

    assert cursor == in_writer == 1500
    assert load_cursor(paths) == 1500


def test_load_cursor_is_none_for_a_fresh_or_partial_store(paths):
    """No databases, or one missing, means no cursor: a full pull."""
    fresh = load_cursor(paths)
    _write(paths, {}, cursor=2000)
    paths["url"].unlink()

    assert fresh is None
    assert load_cursor(paths) is None


def test_exception_inside_writer_rolls_every_database_back(paths):
    """An error mid-run leaves the previous content of all four databases."""
    _write(paths, {"ip": [_row("u1", "192.0.2.10")]}, cursor=100)

    with pytest.raises(RuntimeError), StoreWriter(paths, run_id=2) as writer:
        writer.upsert("ip", _row("u9", "192.0.2.99"))
        writer.set_meta("cursor", 200)
        raise RuntimeError("broken page")

    with StoreReader(paths) as reader:
        assert reader.contexts("ip", "192.0.2.99") == []
        assert reader.meta("cursor") == 100


def test_reader_sees_old_state_during_a_write_and_waits_under_100_ms(paths):
    """A reader is neither blocked nor shown uncommitted rows by an open writer."""
    _write(paths, {"ip": [_row("u1", "192.0.2.10")]})
    writer = StoreWriter(paths, run_id=2)
    for n in range(5000):
        writer.upsert("ip", _row(f"n{n}", f"198.51.100.{n % 250}"))
    writer.delete_uuids("ip", ["u1"])

    started = time.monotonic()
    with StoreReader(paths) as reader:
        rows = reader.contexts("ip", "192.0.2.10")
        counts = reader.counts()
        generation = reader.generation()
    waited_ms = (time.monotonic() - started) * 1000
    writer.rollback()

    assert [r["attribute_uuid"] for r in rows] == ["u1"]
    assert counts["ip"] == {"misp": 1} and generation[0] == 1
    assert waited_ms < 100


_KILLED_WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from sync.store import STORE_KINDS, StoreWriter

    paths = {k: Path(sys.argv[1]) / f"{k}.db" for k in STORE_KINDS}
    writer = StoreWriter(paths, run_id=9)
    for n in range(20000):
        writer.upsert("hash", {"attribute_uuid": f"k{n}", "value": f"{n:032x}",
                               "subtype": "md5", "source": "misp"})
    writer.set_meta("cursor", 999)
    writer._flush("hash")
    print("ready", flush=True)
    sys.stdin.read()
    """
)


def test_writer_killed_mid_transaction_leaves_the_previous_content(paths):
    """SIGKILL during a write keeps the old rows and cursor; the next writer works."""
    _write(paths, {"hash": [_row("h1", "ab" * 16, subtype="md5")]}, cursor=100)
    child = subprocess.Popen(
        [sys.executable, "-c", _KILLED_WRITER, str(paths["ip"].parent)],
        cwd=REPO_ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout.readline().strip() == "ready"

    child.send_signal(signal.SIGKILL)
    child.wait(10)
    with StoreReader(paths) as reader:
        counts, cursor = reader.counts(), reader.meta("cursor")
    _write(paths, {"hash": [_row("h2", "cd" * 16, subtype="md5")]}, run_id=10)

    assert child.returncode == -signal.SIGKILL
    assert counts["hash"] == {"misp": 1} and cursor == 100
    assert load_cursor(paths) == 100


def _values(uuid, value, *, comment=None):
    """A VALUE_COLUMNS tuple of one ip row, as the sync builds it."""
    context = ("ip-dst", "Network activity", 1, "7", "3", "ev-3", "Event 3", "low")
    tail = ('["tlp:white"]', comment, None, None, 1_700_000_000, "misp")
    return (uuid, value, value, "cidr", None, *context, *tail)


def test_upsert_values_stores_the_same_row_as_upsert(paths):
    """The tuple path yields the row, ip columns included, that the dict path does."""
    with StoreWriter(paths, run_id=5) as writer:
        writer.upsert_values("ip", _values("t1", "203.0.113.0/24"))
        values = _values("d1", "203.0.113.0/24")
        writer.upsert("ip", dict(zip(VALUE_COLUMNS, values, strict=True)))
        writer.commit()

    conn = open_store(paths["ip"], readonly=True)
    rows = conn.execute("SELECT * FROM indicator ORDER BY attribute_uuid").fetchall()
    conn.close()
    assert rows[0][1:] == rows[1][1:]
    assert rows[0][-3:] == (5, 4, 24)


def test_upsert_values_keeps_stored_at_and_generation_while_unchanged(paths):
    """A re-pull of the same tuple moves seen_run only; an edit bumps both."""

    def write(run_id, comment):
        with StoreWriter(paths, run_id=run_id) as writer:
            writer.upsert_values("ip", _values("t1", "198.51.100.7", comment=comment))
            changed = writer.commit()
        with StoreReader(paths) as reader:
            row = reader.contexts("ip", "198.51.100.7")[0]
            return changed["ip"], reader.generation(), row

    first = write(1, None)
    time.sleep(1.1)
    same = write(2, None)
    edited = write(3, "edited")

    assert first[0] and not same[0] and edited[0]
    assert same[1] == first[1] and edited[1] != same[1]
    assert same[2]["stored_at"] == first[2]["stored_at"]
    assert same[2]["seen_run"] == 2
    assert edited[2]["stored_at"] > first[2]["stored_at"]


def test_process_writer_commits_only_when_asked(tmp_path):
    from sync.writer_process import ProcessWriter

    paths = {kind: tmp_path / f"{kind}.db" for kind in STORE_KINDS}
    values = ("u-1", "192.0.2.1", "192.0.2.1", "ip", None, "ip-dst", "Network")
    values += (1, "1", "2", "ev", "Event", "low", "[]", None, None, None, 1, "misp")
    with ProcessWriter(paths, run_id=3) as writer:
        writer.upsert_values("ip", values)
        assert writer.count("ip") == 1
    with ProcessWriter(paths, run_id=4) as writer:
        rolled_back = writer.count("ip")
        writer.upsert_values("ip", values)
        writer.delete_uuids("domain", ["u-1"])
        writer.set_meta("cursor", 7)
        changed = writer.commit()

    assert rolled_back == 0
    assert changed == {"ip": True, "domain": False, "url": False, "hash": False}
    with StoreReader(paths) as reader:
        assert reader.counts()["ip"] == {"misp": 1}
        assert reader.meta("cursor") == 7


def test_process_writer_reports_a_failed_write_and_a_lost_child(tmp_path):
    from sync.store import StoreError
    from sync.writer_process import ProcessWriter

    paths = {kind: tmp_path / f"{kind}.db" for kind in STORE_KINDS}
    with ProcessWriter(paths, run_id=3) as writer:
        writer.upsert_values("ip", ("too", "short"))
        with pytest.raises(StoreError, match="store writer: .*Error"):
            writer.count("ip")
    writer = ProcessWriter(paths, run_id=5)
    writer._child.send_signal(signal.SIGKILL)
    writer._child.wait()

    with pytest.raises(StoreError, match="store writer process: lost"):
        writer.count("ip")
    writer.rollback()


def test_contexts_come_back_most_precise_then_newest_then_by_uuid(paths):
    """Hostname before domain, newest edit first, uuid breaks ties, always."""
    rows = [
        _row("u-a", "evil.example", subtype="domain", attribute_timestamp=300),
        _row("u-c", "evil.example", subtype="hostname", attribute_timestamp=100),
        _row("u-d", "evil.example", subtype="hostname", attribute_timestamp=200),
        _row("u-b", "evil.example", subtype="hostname", attribute_timestamp=200),
        _row("u-e", "evil.example", subtype="hostname"),
    ]
    _write(paths, {"domain": rows})

    with StoreReader(paths) as reader:
        found = reader.contexts("domain", "evil.example")

    order = [r["attribute_uuid"] for r in found]
    assert order == ["u-b", "u-d", "u-c", "u-e", "u-a"]


def _index_names(path):
    conn = sqlite3.connect(path)
    sql = "SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
    names = {r[0] for r in conn.execute(sql)}
    conn.close()
    return names


def test_first_write_into_an_empty_store_leaves_indexes_that_answer_lookups(paths):
    """Rows written without the value index come back through the rebuilt one."""
    rows = [_row(f"u{n}", f"198.51.100.{n}") for n in range(1, 200)]
    rows.append(_row("net", "203.0.113.0/24", subtype="cidr"))
    _write(paths, {"ip": rows, "hash": [_row("h1", "a" * 32, subtype="md5")]})

    for path in paths.values():
        assert _index_names(path) == {"indicator_value", "indicator_network"}
    conn = sqlite3.connect(paths["ip"])
    plan = conn.execute(
        "EXPLAIN QUERY PLAN SELECT * FROM indicator WHERE value = '198.51.100.7'"
    ).fetchall()
    conn.close()
    assert "indicator_value" in str(plan)
    with StoreReader(paths) as reader:
        assert [r["attribute_uuid"] for r in reader.contexts("ip", "198.51.100.7")] == [
            "u7"
        ]
        assert reader.contexts("ip", "203.0.113.0/24")[0]["prefix_len"] == 24


def test_rolled_back_first_write_keeps_the_indexes_of_the_empty_store(paths):
    """Dropping the indexes for a bulk write is undone with the transaction."""
    with StoreWriter(paths, run_id=1) as writer:
        writer.upsert("ip", _row("u1", "198.51.100.1"))
        writer.count("ip")
        writer.rollback()

    assert _index_names(paths["ip"]) == {"indicator_value", "indicator_network"}


def test_duplicate_uuid_in_a_first_write_keeps_the_last_row(paths):
    """Without the value index a repeated attribute still updates its one row."""
    rows = [_row("u1", "198.51.100.1"), _row("u1", "198.51.100.2")]

    _write(paths, {"ip": rows})

    with StoreReader(paths) as reader:
        assert reader.contexts("ip", "198.51.100.1") == []
        assert reader.counts()["ip"] == {"misp": 1}
