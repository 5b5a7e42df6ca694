"""Sync runs against the MISP emulator on loopback, into real SQLite stores."""

from __future__ import annotations

import json
import random
import sqlite3
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from sync.config import load_config
from sync.engine import run_server_sync, server_source
from sync.store import STORE_KINDS
from tests.misp_emulator import DEFAULT_API_KEY, MispEmulator

DATA = Path(__file__).parent / "data"
SEDNIT = DATA / "restsearch" / "sednit_9747"
WARNINGLISTS = DATA / "warninglists"
DB_FILES = {
    "ip": "ips.db",
    "domain": "domains.db",
    "url": "urls.db",
    "hash": "hashes.db",
}
# The emulator's clock; the sync uses the wall clock for max_age_days.
NOW = int(time.time()) // 100 * 100


def sync_env(tmp_path: Path, url: str, **extra: str) -> dict[str, str]:
    """Environment of a sync whose store, logs and config live in tmp_path."""
    config = tmp_path / "config.yaml"
    if not config.exists():
        config.write_text("sync:\n  overlap_s: 3600\n")
    env = {
        "WAZUH_MISP_IOC_CONFIG": str(config),
        "MISP_URL": url,
        "MISP_API_KEY": DEFAULT_API_KEY,
        "IPS_DB_PATH": str(tmp_path / "store" / "ips.db"),
        "DOMAINS_DB_PATH": str(tmp_path / "store" / "domains.db"),
        "URLS_DB_PATH": str(tmp_path / "store" / "urls.db"),
        "HASHES_DB_PATH": str(tmp_path / "store" / "hashes.db"),
        "IOC_ENRICHMENT_LOG": str(tmp_path / "ioc_enrichment.json"),
        "MISP_SYNC_LOG": str(tmp_path / "misp-sync.log"),
        "MISP_LIMIT": "10",
    }
    return env | extra


def make_cfg(tmp_path: Path, url: str, env: dict | None = None, **overrides):
    """A Config for tmp_path; overrides use dotted keys with `__` for dots."""
    dotted = {k.replace("__", "."): v for k, v in overrides.items()}
    dotted.setdefault("misp.retries", 0)
    base = sync_env(tmp_path, url) | (env or {})
    return load_config(env=base, overrides=dotted)


def dump_store(store_dir: Path) -> dict[str, list]:
    """Every row of every table of the four databases, in a stable order."""
    dump = {}
    for kind, name in DB_FILES.items():
        with sqlite3.connect(store_dir / name) as conn:
            dump[kind] = conn.execute(
                "SELECT * FROM indicator ORDER BY attribute_uuid"
            ).fetchall()
            dump[f"{kind}_meta"] = conn.execute(
                "SELECT * FROM meta ORDER BY key"
            ).fetchall()
    return dump


def stored_values(store_dir: Path, kind: str) -> set[str]:
    with sqlite3.connect(store_dir / DB_FILES[kind]) as conn:
        return {r[0] for r in conn.execute("SELECT value FROM indicator")}


def health_lines(tmp_path: Path) -> list[dict]:
    path = tmp_path / "ioc_enrichment.json"
    return [json.loads(line) for line in path.read_text().splitlines()]


def attribute(value: str, misp_type: str = "ip-dst", **fields) -> dict:
    return {"type": misp_type, "value": value, "to_ids": True, **fields}


@pytest.fixture
def misp():
    with MispEmulator() as emulator:
        emulator.set_clock(NOW)
        yield emulator


def load_sample(misp: MispEmulator, *, tags=("tlp:white",)) -> dict[str, str]:
    """Load one event of 7 attributes (6 stored kinds + text); value -> uuid."""
    event_id = misp.add_event(info="Sample", Tag=list(tags), timestamp=NOW - 500)
    rows = [
        attribute("198.51.100.7", timestamp=NOW - 400),
        attribute("203.0.113.9", "ip-src", timestamp=NOW - 300),
        attribute("evil.example", "domain", timestamp=NOW - 200),
        attribute("bad.example|192.0.2.44", "domain|ip", timestamp=NOW - 100),
        attribute("http://evil.example/x", "url", timestamp=NOW - 90),
        attribute("a" * 64, "sha256", timestamp=NOW - 80),
        attribute("note", "text", timestamp=NOW - 70),
    ]
    uuids = misp.load_attributes(rows, event=event_id)
    return {"event_id": event_id} | {
        r["value"]: u for r, u in zip(rows, uuids, strict=True)
    }


def test_first_run_is_full_then_next_run_is_incremental(tmp_path, misp):
    load_sample(misp)
    cfg = make_cfg(tmp_path, misp.url)

    first = run_server_sync(cfg)
    second = run_server_sync(cfg)

    assert (first.mode, first.result) == ("full", "ok")
    assert first.stored == {"ip": 3, "domain": 2, "url": 1, "hash": 1}
    assert first.cursor == NOW - 80
    assert (second.mode, second.result) == ("incremental", "ok")
    assert misp.requests[-1].body["timestamp"] == NOW - 80 - 3600
    assert misp.requests[-1].body["deleted"] == [0, 1]
    assert "deleted" not in misp.requests[0].body
    assert stored_values(tmp_path / "store", "ip") == {
        "198.51.100.7",
        "203.0.113.9",
        "192.0.2.44",
    }


def test_query_asks_for_stored_types_and_event_context_once(tmp_path, misp):
    sample = load_sample(misp)

    run_server_sync(make_cfg(tmp_path, misp.url, misp__categories=["Other"]))

    body = misp.requests[0].body
    assert "includeEventTags" not in body and "includeContext" not in body
    events = [r for r in misp.requests if r.path == "/events/restSearch"]
    assert [r.body for r in events] == [
        {"returnFormat": "json", "metadata": 1, "eventid": [str(sample["event_id"])]}
    ]
    assert "text" not in body["type"] and "domain|ip" in body["type"]
    assert body["category"] == ["Other"]
    assert "to_ids" not in body and "tags" not in body and "published" not in body


def test_event_context_is_fetched_once_per_event_across_pages(tmp_path, misp):
    first = load_sample(misp, tags=("tlp:amber", "apt"))
    second = misp.add_event(info="Second", Tag=["tlp:red"], threat_level_id="1")
    misp.load_attributes([attribute("192.0.2.200")], event=second)
    cfg = make_cfg(tmp_path, misp.url, misp__page_size=2)

    report = run_server_sync(cfg)

    events = [r.body["eventid"] for r in misp.requests if "events" in r.path]
    assert events == [[str(first["event_id"])], [str(second)]]
    assert report.pages == 4 and report.result == "ok"
    with sqlite3.connect(tmp_path / "store" / "ips.db") as conn:
        rows = dict(
            conn.execute(
                "SELECT value, tags || event_info || threat_level FROM indicator"
            )
        )
    assert rows["198.51.100.7"] == '["tlp:amber","apt"]Sampleundefined'
    assert rows["192.0.2.200"] == '["tlp:red"]Secondhigh'


def test_rows_of_an_event_missing_from_metadata_are_held_back_as_incomplete(
    tmp_path, misp
):
    sample = load_sample(misp)
    other = misp.add_event(info="Other")
    misp.load_attributes([attribute("192.0.2.201")], event=other)
    misp.withhold_event_metadata(other)

    report = run_server_sync(make_cfg(tmp_path, misp.url))

    assert report.result == "incomplete" and report.cursor is None
    assert report.skipped["event_unavailable"] == 1
    assert report.stored["ip"] == 3
    assert "192.0.2.201" not in stored_values(tmp_path / "store", "ip")
    assert sample["198.51.100.7"]


def test_soft_deleted_attribute_disappears_at_next_incremental_run(tmp_path, misp):
    sample = load_sample(misp)
    cfg = make_cfg(tmp_path, misp.url)
    run_server_sync(cfg)

    misp.set_clock(NOW + 60)
    misp.soft_delete_attribute(sample["evil.example"])
    report = run_server_sync(cfg)

    assert report.mode == "incremental"
    assert stored_values(tmp_path / "store", "domain") == {"bad.example"}
    assert report.removed["domain"] == 1
    assert report.skipped["deleted"] == 1


def test_to_ids_turned_off_removes_the_indicator(tmp_path, misp):
    sample = load_sample(misp)
    cfg = make_cfg(tmp_path, misp.url)
    run_server_sync(cfg)

    misp.set_clock(NOW + 60)
    misp.edit_attribute(sample["a" * 64], to_ids=False)
    report = run_server_sync(cfg)

    assert stored_values(tmp_path / "store", "hash") == set()
    assert report.skipped["not_to_ids"] == 1


def test_attribute_tag_removed_removes_indicator_under_tag_filter(tmp_path, misp):
    event_id = misp.add_event(info="Tagged", timestamp=NOW - 500)
    tagged, _ = misp.load_attributes(
        [
            attribute("198.51.100.1", Tag=["kill-chain:c2"], timestamp=NOW - 10),
            attribute("198.51.100.2", timestamp=NOW - 10),
        ],
        event=event_id,
    )
    cfg = make_cfg(tmp_path, misp.url, misp__tags=["kill-chain:c2"])
    first = run_server_sync(cfg)

    misp.set_clock(NOW + 60)
    misp.remove_tag("kill-chain:c2", attribute_uuid=tagged)
    second = run_server_sync(cfg)

    assert first.stored == {"ip": 1}
    assert first.skipped["tag_filter"] == 1
    assert second.mode == "incremental"
    assert stored_values(tmp_path / "store", "ip") == set()


def test_excluded_tag_on_the_event_keeps_its_attributes_out(tmp_path, misp):
    load_sample(misp, tags=("tlp:red",))

    report = run_server_sync(make_cfg(tmp_path, misp.url, misp__tags=["!TLP:RED"]))

    assert report.stored == {}
    assert report.skipped["tag_excluded"] == 6


def test_hard_deleted_event_disappears_at_next_full_run(tmp_path, misp):
    load_sample(misp)
    doomed = misp.add_event(info="Doomed", timestamp=NOW - 500)
    misp.load_attributes([attribute("198.51.100.99", timestamp=NOW - 5)], event=doomed)
    cfg = make_cfg(tmp_path, misp.url)
    run_server_sync(cfg)

    misp.hard_delete_event(doomed)
    incremental = run_server_sync(cfg)
    full = run_server_sync(cfg, full=True)

    assert incremental.mode == "incremental"
    assert (full.mode, full.result) == ("full", "ok")
    assert full.removed["ip"] == 1
    assert "198.51.100.99" not in stored_values(tmp_path / "store", "ip")
    assert len(stored_values(tmp_path / "store", "ip")) == 3


def test_reconcile_becomes_due_after_the_interval(tmp_path, misp):
    load_sample(misp)
    cfg = make_cfg(tmp_path, misp.url, sync__reconcile_interval_s=0)
    run_server_sync(cfg)

    report = run_server_sync(cfg)

    assert report.mode == "full"


def test_auth_failure_leaves_store_untouched_and_key_out_of_health(tmp_path, misp):
    load_sample(misp)
    cfg = make_cfg(tmp_path, misp.url)
    run_server_sync(cfg)
    before = dump_store(tmp_path / "store")
    wrong_key = "W" * 40

    report = run_server_sync(make_cfg(tmp_path, misp.url, {"MISP_API_KEY": wrong_key}))

    assert report.result == "failed"
    assert "MispAuthError" in report.error
    assert dump_store(tmp_path / "store") == before
    health = health_lines(tmp_path)[-1]["ioc_sync"]
    assert health["status"] == "failed"
    assert health["last_success"] > 0 and health["indicators"] == 7
    text = (tmp_path / "ioc_enrichment.json").read_text()
    assert wrong_key not in text and DEFAULT_API_KEY not in text


def test_server_error_mid_pull_leaves_store_and_cursor_as_they_were(tmp_path, misp):
    sample = load_sample(misp)
    cfg = make_cfg(tmp_path, misp.url, misp__page_size=2)
    run_server_sync(cfg)
    before = dump_store(tmp_path / "store")
    misp.set_clock(NOW + 60)
    for value, uuid in sample.items():
        if value != "event_id":
            misp.soft_delete_attribute(uuid)
    # Page 1 and its event metadata pass; page 2 fails.
    misp.inject("stall", 2, seconds=0)
    misp.inject("status500", 1)

    report = run_server_sync(cfg)

    assert report.result == "failed"
    assert report.pages == 1
    assert dump_store(tmp_path / "store") == before


def test_paging_stores_every_row_when_ids_and_timestamps_disagree(tmp_path, misp):
    event_id = misp.add_event(info="Many", timestamp=NOW - 5000)
    stamps = list(range(NOW - 4000, NOW - 4000 + 95))
    random.Random(7).shuffle(stamps)
    values = [f"198.51.{i // 200}.{i % 200 + 1}" for i in range(95)]
    misp.load_attributes(
        [attribute(v, timestamp=t) for v, t in zip(values, stamps, strict=True)],
        event=event_id,
    )

    report = run_server_sync(make_cfg(tmp_path, misp.url, misp__page_size=7))

    assert report.pages == 14
    assert stored_values(tmp_path / "store", "ip") == set(values)
    assert report.cursor == max(stamps)


def test_max_pages_cut_removes_nothing_and_keeps_the_cursor(tmp_path, misp):
    sample = load_sample(misp)
    cfg = make_cfg(tmp_path, misp.url, misp__page_size=2)
    first = run_server_sync(cfg)
    misp.hard_delete_attribute(sample["198.51.100.7"])

    cut = run_server_sync(
        make_cfg(tmp_path, misp.url, misp__page_size=2, misp__max_pages=1), full=True
    )

    assert (cut.result, cut.pages) == ("incomplete", 1)
    assert sum(cut.removed.values()) == 0
    assert cut.cursor == first.cursor
    assert "198.51.100.7" in stored_values(tmp_path / "store", "ip")
    assert health_lines(tmp_path)[-1]["ioc_sync"]["status"] == "incomplete"


def test_reconcile_refuses_to_remove_more_than_half_without_force(tmp_path, misp):
    sample = load_sample(misp)
    cfg = make_cfg(tmp_path, misp.url)
    run_server_sync(cfg)
    misp.hard_delete_event(sample["event_id"])
    misp.add_event(info="Other", timestamp=NOW)
    misp.load_attributes([attribute("198.51.100.200", timestamp=NOW)])

    refused = run_server_sync(cfg, full=True)
    kept = stored_values(tmp_path / "store", "ip")
    forced = run_server_sync(cfg, full=True, force=True)

    assert refused.result == "incomplete"
    assert sum(refused.removed.values()) == 0
    assert {"198.51.100.7", "203.0.113.9", "198.51.100.200"} <= kept
    assert forced.result == "ok"
    assert sum(forced.removed.values()) == 7
    assert stored_values(tmp_path / "store", "ip") == {"198.51.100.200"}


def test_invalid_values_are_skipped_and_counted_by_reason(tmp_path, misp):
    event_id = misp.add_event(info="Bad", timestamp=NOW - 10)
    misp.load_attributes(
        [
            attribute("not-an-ip"),
            attribute("abc", "md5"),
            attribute("198.51.100.3"),
            attribute("x", "domain"),
        ],
        event=event_id,
    )

    report = run_server_sync(make_cfg(tmp_path, misp.url))

    assert report.stored == {"ip": 1}
    assert sum(report.skipped.values()) == 3
    assert report.result == "ok"


def test_local_warninglists_drop_values_counted_per_list(tmp_path, misp):
    event_id = misp.add_event(info="Noisy", timestamp=NOW - 10)
    misp.load_attributes(
        [
            attribute("10.1.2.3"),
            attribute("192.168.7.7", "ip-src"),
            attribute("google.com", "domain"),
            attribute("https://bit.ly/abc", "url"),
            attribute("d41d8cd98f00b204e9800998ecf8427e", "md5"),
            attribute("198.51.100.4"),
        ],
        event=event_id,
    )
    cfg = make_cfg(
        tmp_path,
        misp.url,
        sync__warninglists_dir=str(WARNINGLISTS),
        sync__warninglists=["rfc1918", "google", "url-shortener"],
    )

    report = run_server_sync(cfg)

    assert report.stored == {"ip": 1}
    assert report.skipped["warninglist_rfc1918"] == 2
    assert report.skipped["warninglist_google"] == 1
    assert report.skipped["warninglist_url-shortener"] == 1


def test_no_local_warninglist_applies_unless_configured(tmp_path, misp):
    event_id = misp.add_event(info="Private", timestamp=NOW - 10)
    misp.load_attributes([attribute("google.com", "domain")], event=event_id)

    report = run_server_sync(make_cfg(tmp_path, misp.url))

    assert report.stored == {"domain": 1}


def test_max_age_drops_attributes_not_seen_recently(tmp_path, misp):
    event_id = misp.add_event(info="Aged", timestamp=NOW - 10)
    seen = datetime.fromtimestamp(NOW - 86400, UTC).isoformat(timespec="microseconds")
    ninety_days_s = 90 * 86400
    misp.load_attributes(
        [
            attribute("198.51.100.5", timestamp=NOW - 40 * 86400),
            attribute("198.51.100.6", timestamp=NOW - 40 * 86400, last_seen=None),
            attribute("198.51.100.8", timestamp=NOW - 1),
            attribute("198.51.100.9", timestamp=NOW - ninety_days_s, last_seen=seen),
        ],
        event=event_id,
    )

    report = run_server_sync(make_cfg(tmp_path, misp.url, misp__max_age_days=30))

    assert report.skipped["too_old"] == 2
    assert stored_values(tmp_path / "store", "ip") == {"198.51.100.8", "198.51.100.9"}


def test_published_only_keeps_unpublished_events_out(tmp_path, misp):
    published = misp.add_event(info="Pub", published=True, timestamp=NOW - 10)
    draft = misp.add_event(info="Draft", published=False, timestamp=NOW - 10)
    misp.load_attributes([attribute("198.51.100.10")], event=published)
    misp.load_attributes([attribute("198.51.100.11")], event=draft)

    report = run_server_sync(make_cfg(tmp_path, misp.url, misp__published_only=True))

    assert stored_values(tmp_path / "store", "ip") == {"198.51.100.10"}
    assert report.skipped["unpublished"] == 1


def test_sync_of_real_restsearch_records_matches_source_type_counts(tmp_path, misp):
    rows = orjson.loads((SEDNIT / "all.json").read_bytes())["response"]["Attribute"]
    misp.load_attributes(rows)
    expected = Counter(r["type"] for r in rows if r["to_ids"] and not r["deleted"])
    kinds = {"ip-dst": "ip", "domain": "domain", "sha1": "hash"}

    report = run_server_sync(make_cfg(tmp_path, misp.url, misp__page_size=50))

    assert expected == {"domain": 19, "sha1": 37, "ip-dst": 12, "filename": 15}
    assert report.stored == {kinds[t]: n for t, n in expected.items() if t in kinds}
    assert report.pages == 2
    with sqlite3.connect(tmp_path / "store" / "hashes.db") as conn:
        types = Counter(r[0] for r in conn.execute("SELECT misp_type FROM indicator"))
    assert types == {"sha1": 37}


def test_health_line_is_one_object_of_scalars_with_mode_0640(tmp_path, misp):
    load_sample(misp)

    run_server_sync(make_cfg(tmp_path, misp.url))

    line = health_lines(tmp_path)[0]
    assert line["integration"] == "ioc_sqlite"
    sync = line["ioc_sync"]
    assert all(not isinstance(v, dict | list) for v in sync.values())
    assert (sync["status"], sync["mode"], sync["stale"]) == ("ok", "full", "false")
    assert sync["indicators"] == 7 and sync["stored"] == 7
    assert (tmp_path / "ioc_enrichment.json").stat().st_mode & 0o777 == 0o640


def test_sync_log_gets_one_json_line_per_run(tmp_path, misp):
    load_sample(misp)
    cfg = make_cfg(tmp_path, misp.url)

    run_server_sync(cfg)
    run_server_sync(cfg)

    lines = (tmp_path / "misp-sync.log").read_text().splitlines()
    assert [json.loads(line)["mode"] for line in lines] == ["full", "incremental"]
    assert json.loads(lines[0])["stored"]["ip"] == 3


def test_run_that_matched_nothing_on_an_empty_store_warns(tmp_path, misp, caplog):
    load_sample(misp)

    with caplog.at_level("WARNING"):
        report = run_server_sync(make_cfg(tmp_path, misp.url, misp__tags=["nope"]))

    assert report.indicators == 0
    assert "sync_matched_nothing" in caplog.text
    assert "MISP_TAG_FILTER" in caplog.text


assert STORE_KINDS == tuple(DB_FILES)


def write_recent_alert(alerts_dir: Path, srcip: str) -> None:
    """One level-10 alert from the samples, re-addressed and dated an hour ago."""
    sample = (DATA / "alerts" / "samples-sshd_bruteforce.jsonl").read_text()
    alert = json.loads(sample.splitlines()[0])
    alert["data"]["srcip"] = srcip
    stamp = datetime.fromtimestamp(time.time() - 3600, UTC)
    alert["timestamp"] = stamp.strftime("%Y-%m-%dT%H:%M:%S.000+0000")
    alerts_dir.mkdir(parents=True)
    (alerts_dir / "alerts.json").write_text(json.dumps(alert) + "\n")


def test_new_indicators_trigger_a_retro_hunt_over_recent_alerts(tmp_path, misp):
    load_sample(misp)
    write_recent_alert(tmp_path / "alerts", "198.51.100.7")
    cfg = make_cfg(
        tmp_path,
        misp.url,
        {"WAZUH_ALERTS_PATH": str(tmp_path / "alerts" / "alerts.json")},
        sync__retrohunt_days=1,
        tailer__state_dir=str(tmp_path / "state"),
    )

    report = run_server_sync(cfg)
    again = run_server_sync(cfg)

    lines = (tmp_path / "ioc_enrichment.json").read_text().splitlines()
    hits = [json.loads(line) for line in lines if '"ioc"' in line]
    assert report.result == again.result == "ok"
    assert len(hits) == 1
    assert hits[0]["ioc"]["indicator"] == "198.51.100.7"
    assert hits[0]["ioc"]["replay"] == "true"


def test_retro_hunt_that_cannot_load_is_logged_and_the_sync_stays_ok(
    tmp_path, misp, monkeypatch, caplog
):
    load_sample(misp)
    monkeypatch.setitem(sys.modules, "tailer.replay", None)
    cfg = make_cfg(tmp_path, misp.url, sync__retrohunt_days=1)

    with caplog.at_level("ERROR"):
        report = run_server_sync(cfg)

    assert report.result == "ok"
    assert "retrohunt_unavailable" in caplog.text


FUTURE = "99999999999"


def test_future_timestamp_is_stored_but_never_becomes_the_cursor(
    tmp_path, misp, caplog
):
    """An attribute stamped in year 5138 must not freeze incremental pulls."""
    event_id = misp.add_event(info="Clock", timestamp=NOW - 500)
    misp.load_attributes(
        [
            attribute("198.51.100.20", timestamp=NOW - 300),
            attribute("198.51.100.21", raw={"timestamp": FUTURE}),
        ],
        event=event_id,
    )
    cfg = make_cfg(tmp_path, misp.url)

    first = run_server_sync(cfg)
    second = run_server_sync(cfg)

    assert first.result == "ok" and first.cursor == NOW - 300
    assert stored_values(tmp_path / "store", "ip") == {
        "198.51.100.20",
        "198.51.100.21",
    }
    assert "attribute_timestamp_in_future uuid=" in caplog.text
    assert f"timestamp={FUTURE}" in caplog.text
    assert second.mode == "incremental"
    assert misp.requests[-1].body["timestamp"] == NOW - 300 - 3600


def set_cursor(store_dir: Path, cursor: object) -> None:
    for name in DB_FILES.values():
        with sqlite3.connect(store_dir / name) as conn:
            conn.execute(
                "UPDATE meta SET value = ? WHERE key = 'cursor'",
                (json.dumps(cursor),),
            )


def test_a_cursor_left_in_the_future_is_repaired_by_a_full_pull(tmp_path, misp, caplog):
    """A cursor an older version committed from a future timestamp is reset."""
    load_sample(misp)
    cfg = make_cfg(tmp_path, misp.url)
    run_server_sync(cfg)
    set_cursor(tmp_path / "store", int(FUTURE))

    repaired = run_server_sync(cfg)
    after = run_server_sync(cfg)

    assert "sync_cursor_repaired cursor=99999999999" in caplog.text
    assert (repaired.mode, repaired.result) == ("full", "ok")
    assert repaired.cursor == NOW - 80
    assert after.mode == "incremental"
    assert misp.requests[-1].body["timestamp"] == NOW - 80 - 3600


def test_full_run_resets_the_cursor_from_what_it_saw(tmp_path, misp):
    """--full sets the cursor to the newest timestamp seen, even when lower."""
    load_sample(misp)
    cfg = make_cfg(tmp_path, misp.url)
    run_server_sync(cfg)
    set_cursor(tmp_path / "store", NOW + 3600)

    report = run_server_sync(cfg, full=True)

    assert report.mode == "full" and report.cursor == NOW - 80


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"type": ["ip-dst"]}, "type"),
        ({"category": ["a"]}, "category"),
        ({"first_seen": 5}, "first_seen"),
        ({"last_seen": ["x"]}, "last_seen"),
        ({"comment": {"a": 1}}, "comment"),
        ({"Tag": "tlp:white"}, "Tag"),
        ({"timestamp": 1e29}, "timestamp"),
        ({"timestamp": "soon"}, "timestamp"),
        ({"timestamp": -5}, "timestamp"),
        ({"timestamp": "\u00b2"}, "timestamp"),
        ({"event_uuid": ["e"]}, "event_uuid"),
        ({"type": "ip-dst|port", "value": "1.2.3.11|\u00b2"}, None),
        ({"value": "1.2.3.0/\u00b2"}, None),
    ],
)
def test_one_malformed_attribute_is_skipped_and_the_run_stays_ok(
    tmp_path, misp, caplog, raw, field
):
    """The bad row is counted and named by uuid and field; the rest is stored."""
    event_id = misp.add_event(info="Mixed", timestamp=NOW - 500)
    uuids = misp.load_attributes(
        [
            attribute("198.51.100.30", timestamp=NOW - 300),
            attribute("198.51.100.31", timestamp=NOW - 200, raw=raw),
        ],
        event=event_id,
    )

    report = run_server_sync(make_cfg(tmp_path, misp.url))

    assert report.result == "ok"
    assert stored_values(tmp_path / "store", "ip") == {"198.51.100.30"}
    assert sum(report.skipped.values()) == 1
    if field is not None:
        assert report.skipped == {"malformed": 1}
        assert f"attribute_malformed uuid={uuids[1]} field={field}" in caplog.text
    else:
        assert set(report.skipped) <= {"bad_port", "bad_network"}


def test_failed_run_error_is_masked_before_it_is_shortened(tmp_path, misp):
    """A key echoed near the 300-character cut leaves no fragment in the report."""
    misp.inject("status500", 1, message="x" * 262 + " " + DEFAULT_API_KEY + " y" * 40)
    cfg = make_cfg(tmp_path, misp.url)

    report = run_server_sync(cfg)

    assert report.result == "failed"
    assert DEFAULT_API_KEY[:6] not in report.error
    assert len(report.error) <= 300


@pytest.mark.parametrize(
    ("url", "source"),
    [
        ("https://admin:Hunter2-secret@misp.example:8443/x", "misp.example:8443"),
        ("https://misp.example/?key=Hunter2-secret", "misp.example"),
        ("misp.example?key=Hunter2-secret", "misp.example?key=********"),
    ],
)
def test_server_source_never_carries_url_credentials(url, source):
    """The printed source name keeps the host, never a password or key."""
    assert server_source(url) == source


def test_rows_of_alternating_events_each_carry_their_own_event_context(tmp_path, misp):
    """Event columns read once per event never leak into another event's rows."""
    first = misp.add_event(info="First", threat_level_id="1", timestamp=NOW - 500)
    second = misp.add_event(info="Second", threat_level_id="3", timestamp=NOW - 500)
    rows = [
        attribute(f"198.51.100.{n}", timestamp=NOW - 400 + n, event_id=event)
        for n, event in enumerate([first, second, first, second, first], start=40)
    ]
    misp.load_attributes(rows)

    report = run_server_sync(make_cfg(tmp_path, misp.url))

    assert report.result == "ok"
    with sqlite3.connect(tmp_path / "store" / "ips.db") as conn:
        stored = conn.execute(
            "SELECT value, event_id, event_info, threat_level FROM indicator"
            " ORDER BY value"
        ).fetchall()
    expected = {str(first): "First", str(second): "Second"}
    assert len(stored) == 5
    for value, event_id, info, threat_level in stored:
        assert info == expected[event_id], value
        assert threat_level == ("high" if info == "First" else "low"), value
