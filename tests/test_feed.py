"""The feed reader turns a real MISP feed (directory or HTTP) into rows."""

import functools
import http.server
import json
import shutil
import sqlite3
import threading
from collections import Counter
from pathlib import Path

import pytest

from sync.feed import (
    FeedError,
    FeedReader,
    feed_name_from_location,
    rows_from_feed_event,
    run_feed_sync,
)
from tests.test_sync_engine import make_cfg, stored_values

INFOBLOX = Path(__file__).parent / "data" / "feeds" / "infoblox"


def source_type_counts(feed_dir: Path) -> Counter:
    """Count attribute types straight from the feed files, without the reader."""
    counts = Counter()
    for path in feed_dir.glob("*-*.json"):
        event = json.loads(path.read_text())["Event"]
        counts.update(a["type"] for a in event["Attribute"])
        for misp_object in event.get("Object", []):
            counts.update(a["type"] for a in misp_object["Attribute"])
    return counts


@pytest.fixture
def feed_http():
    handler = functools.partial(_QuietHandler, directory=str(INFOBLOX))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/infoblox/"
    server.shutdown()
    server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def translate_path(self, path):
        return super().translate_path(path.replace("/infoblox", "", 1))

    def log_message(self, *args):
        pass


def test_manifest_lists_every_event_with_its_timestamp():
    manifest = FeedReader(str(INFOBLOX)).fetch_manifest()

    assert len(manifest) == 8
    assert manifest["dad88707-beb8-4a14-94e2-5ffecf5a5f85"] == 1715767121


def test_rows_of_all_events_match_source_type_counts():
    reader = FeedReader(str(INFOBLOX))

    rows = [
        row
        for uuid in reader.fetch_manifest()
        for row in rows_from_feed_event(reader.fetch_event(uuid))
    ]

    assert Counter(r["type"] for r in rows) == source_type_counts(INFOBLOX)
    assert sum(source_type_counts(INFOBLOX).values()) == 348


def test_rows_carry_event_context_and_inherited_event_tags():
    reader = FeedReader(str(INFOBLOX))
    event = reader.fetch_event("0dbb179a-1c8c-4e7c-a264-2440414dbac8")

    row = next(rows_from_feed_event(event))

    assert row["Event"]["uuid"] == "0dbb179a-1c8c-4e7c-a264-2440414dbac8"
    assert row["Event"]["info"] == "volta_stealer_20260629_iocs"
    assert {"name": "tlp:clear", "inherited": 1}.items() <= row["Tag"][0].items()
    assert "id" not in row


def test_object_members_are_flattened_and_a_deleted_object_deletes_them():
    event = {
        "uuid": "11111111-2222-3333-4444-555555555555",
        "Attribute": [],
        "Object": [
            {
                "uuid": "o1",
                "name": "domain-ip",
                "deleted": True,
                "Attribute": [{"type": "domain", "value": "a.test", "uuid": "x"}],
            }
        ],
    }

    rows = list(rows_from_feed_event(event))

    assert rows[0]["Object"]["name"] == "domain-ip"
    assert rows[0]["deleted"] is True


def test_http_feed_reads_the_same_manifest_and_events(feed_http):
    reader = FeedReader(feed_http)

    manifest = reader.fetch_manifest()
    event = reader.fetch_event("dad88707-beb8-4a14-94e2-5ffecf5a5f85")

    assert manifest == FeedReader(str(INFOBLOX)).fetch_manifest()
    assert len(event["Attribute"]) == 6


def test_http_feed_missing_event_names_url_and_status(feed_http):
    reader = FeedReader(feed_http)

    with pytest.raises(FeedError, match=r"00000000-0000-0000-0000-000000000000.json"):
        reader.fetch_event("00000000-0000-0000-0000-000000000000")


def test_event_name_that_is_not_a_uuid_is_refused():
    with pytest.raises(FeedError, match="not a uuid"):
        FeedReader(str(INFOBLOX)).fetch_event("../../etc/passwd")


def test_directory_with_broken_manifest_names_the_file(tmp_path):
    (tmp_path / "manifest.json").write_text("{not json")

    with pytest.raises(FeedError, match=r"manifest.json: invalid JSON"):
        FeedReader(str(tmp_path)).fetch_manifest()


def test_feed_name_is_the_last_path_segment():
    assert feed_name_from_location("https://x.test/indicators/misp/") == "misp"
    assert feed_name_from_location(str(INFOBLOX)) == "infoblox"
    assert feed_name_from_location("https://feeds.test") == "feeds.test"


# ---------------------------------------------------------------- feed sync

KIND_OF_TYPE = {
    "domain": "domain",
    "ip-dst": "ip",
    "sha256": "hash",
    "url": "url",
    "filename|sha256": "hash",
}


def expected_kind_counts(feed_dir: Path) -> tuple[Counter, int]:
    """Per kind, the to_ids attributes a correct sync must store; and the rest.

    Computed from the files alone: a url needs a scheme and a filename|hash
    needs its `|` - real feed rows that break those rules are counted apart.
    """
    stored, malformed = Counter(), 0
    for path in feed_dir.glob("*-*.json"):
        for attribute in json.loads(path.read_text())["Event"]["Attribute"]:
            misp_type, value = attribute["type"], attribute["value"]
            if not attribute.get("to_ids") or attribute.get("deleted"):
                continue
            if (misp_type == "url" and "://" not in value) or (
                "|" in misp_type and "|" not in value
            ):
                malformed += 1
                continue
            stored[KIND_OF_TYPE[misp_type]] += 1
    return stored, malformed


def copy_feed(tmp_path: Path) -> Path:
    target = tmp_path / "infoblox"
    shutil.copytree(INFOBLOX, target)
    return target


def write_manifest(feed_dir: Path, manifest: dict) -> None:
    (feed_dir / "manifest.json").write_text(json.dumps(manifest))


def test_feed_sync_stores_counts_per_kind_computed_from_the_files(tmp_path):
    cfg = make_cfg(tmp_path, "")
    expected, malformed = expected_kind_counts(INFOBLOX)

    report = run_feed_sync(cfg, str(INFOBLOX))

    assert (report.mode, report.result, report.source) == ("feed", "ok", "infoblox")
    assert report.stored == dict(expected)
    assert expected == {"domain": 255, "ip": 70, "hash": 15, "url": 5}
    assert sum(report.skipped.values()) == malformed == 3
    assert stored_values(tmp_path / "store", "url") >= {"https://t.co/YbupnnMAtX"}


def test_feed_rows_keep_event_uuid_and_info_without_ids(tmp_path):
    run_feed_sync(make_cfg(tmp_path, ""), str(INFOBLOX))

    with sqlite3.connect(tmp_path / "store" / "domains.db") as conn:
        row = conn.execute(
            "SELECT event_uuid, event_info, attribute_id, source, tags"
            " FROM indicator WHERE value = 'comalign.pro'"
        ).fetchone()
    assert row[:4] == (
        "0dbb179a-1c8c-4e7c-a264-2440414dbac8",
        "volta_stealer_20260629_iocs",
        None,
        "infoblox",
    )
    assert "tlp:clear" in json.loads(row[4])


def test_unchanged_feed_is_not_fetched_again(tmp_path):
    cfg = make_cfg(tmp_path, "")
    run_feed_sync(cfg, str(INFOBLOX))

    again = run_feed_sync(cfg, str(INFOBLOX))

    assert (again.result, again.pages, again.pulled) == ("ok", 0, 0)
    assert again.indicators == 345


def test_event_that_left_the_manifest_is_removed(tmp_path):
    feed = copy_feed(tmp_path)
    cfg = make_cfg(tmp_path, "")
    run_feed_sync(cfg, str(feed))
    manifest = json.loads((feed / "manifest.json").read_text())
    del manifest["dad88707-beb8-4a14-94e2-5ffecf5a5f85"]
    write_manifest(feed, manifest)

    report = run_feed_sync(cfg, str(feed))

    assert report.removed["domain"] == 6
    assert report.indicators == 345 - 6


def test_new_event_version_drops_gone_and_deleted_attributes(tmp_path):
    feed = copy_feed(tmp_path)
    cfg = make_cfg(tmp_path, "")
    run_feed_sync(cfg, str(feed))
    uuid = "dad88707-beb8-4a14-94e2-5ffecf5a5f85"
    path = feed / f"{uuid}.json"
    document = json.loads(path.read_text())
    attributes = document["Event"]["Attribute"]
    gone, deleted, untagged = attributes[0], attributes[1], attributes[2]
    deleted["deleted"] = True
    untagged["to_ids"] = False
    document["Event"]["Attribute"] = attributes[1:]
    path.write_text(json.dumps(document))
    manifest = json.loads((feed / "manifest.json").read_text())
    manifest[uuid]["timestamp"] += 10
    write_manifest(feed, manifest)

    report = run_feed_sync(cfg, str(feed))

    with sqlite3.connect(tmp_path / "store" / "domains.db") as conn:
        kept = {r[0] for r in conn.execute("SELECT attribute_uuid FROM indicator")}
    assert report.pages == 1
    assert report.removed["domain"] == 3
    assert not {gone["uuid"], deleted["uuid"], untagged["uuid"]} & kept
    assert attributes[3]["uuid"] in kept


def test_emptied_manifest_is_refused_unless_forced(tmp_path):
    feed = copy_feed(tmp_path)
    cfg = make_cfg(tmp_path, "")
    run_feed_sync(cfg, str(feed))
    write_manifest(feed, {})

    refused = run_feed_sync(cfg, str(feed))
    forced = run_feed_sync(cfg, str(feed), force=True)

    assert refused.result == "incomplete" and refused.indicators == 345
    assert forced.result == "ok" and forced.indicators == 0


def test_unreadable_event_file_makes_the_run_incomplete_and_is_retried(tmp_path):
    feed = copy_feed(tmp_path)
    broken = feed / "dad88707-beb8-4a14-94e2-5ffecf5a5f85.json"
    saved = broken.read_bytes()
    broken.write_text("{oops")
    cfg = make_cfg(tmp_path, "")

    first = run_feed_sync(cfg, str(feed))
    broken.write_bytes(saved)
    second = run_feed_sync(cfg, str(feed))

    assert first.result == "incomplete" and first.skipped["event_unreadable"] == 1
    assert first.indicators == 345 - 6
    assert (second.result, second.pages, second.indicators) == ("ok", 1, 345)


def test_feed_over_http_syncs_like_the_directory(tmp_path, feed_http):
    report = run_feed_sync(make_cfg(tmp_path, ""), feed_http, name="infoblox-http")

    assert report.source == "infoblox-http"
    assert report.stored == dict(expected_kind_counts(INFOBLOX)[0])


def test_feed_honours_the_tag_filter(tmp_path):
    cfg = make_cfg(tmp_path, "", misp__tags=["tlp:clear"])

    report = run_feed_sync(cfg, str(INFOBLOX))

    clear_hashes = sum(
        1
        for path in INFOBLOX.glob("*-*.json")
        for event in [json.loads(path.read_text())["Event"]]
        if "tlp:clear" in {t["name"] for t in event["Tag"]}
        for attribute in event["Attribute"]
        if attribute["type"] == "sha256"
    )
    assert report.skipped["tag_filter"] > 0
    assert report.stored["hash"] == clear_hashes == 4


def test_full_feed_run_fetches_every_event_again(tmp_path):
    cfg = make_cfg(tmp_path, "")
    run_feed_sync(cfg, str(INFOBLOX))

    again = run_feed_sync(cfg, str(INFOBLOX), full=True)

    assert (again.result, again.pages, again.indicators) == ("ok", 8, 345)
    assert sum(again.removed.values()) == 0


GOOD_EVENT = "11111111-1111-4111-8111-111111111111"
ODD_EVENT = "22222222-2222-4222-8222-222222222222"


def feed_attribute(number: int, misp_type: object, value: str, **extra) -> dict:
    uuid = f"aaaaaaaa-0000-4000-8000-{number:012d}"
    return {"uuid": uuid, "type": misp_type, "value": value, "to_ids": True} | extra


def test_malformed_feed_attributes_are_skipped_and_counted(tmp_path, caplog):
    """Odd types in a feed cost their own rows only; the run stays ok."""
    feed = tmp_path / "odd"
    feed.mkdir()
    good = [
        feed_attribute(1, "ip-dst", "198.51.100.40", timestamp="1700000000"),
        feed_attribute(2, ["ip-dst"], "198.51.100.41"),
        feed_attribute(3, "ip-dst", "198.51.100.42", category=["a"]),
        feed_attribute(4, "ip-dst|port", "198.51.100.43|\u00b2"),
        feed_attribute(5, "ip-dst", "198.51.100.44", timestamp=1e29),
    ]
    odd = [feed_attribute(6, "ip-dst", "198.51.100.45")]
    events = {
        GOOD_EVENT: {"uuid": GOOD_EVENT, "info": "Good", "Attribute": good},
        ODD_EVENT: {"uuid": ODD_EVENT, "info": [1], "Attribute": odd},
    }
    for uuid, event in events.items():
        (feed / f"{uuid}.json").write_text(json.dumps({"Event": event}))
    write_manifest(feed, {u: {"timestamp": 1700000000} for u in events})

    report = run_feed_sync(make_cfg(tmp_path, ""), str(feed))

    assert report.result == "ok"
    assert stored_values(tmp_path / "store", "ip") == {"198.51.100.40"}
    assert report.skipped == {"malformed": 4, "bad_port": 1}
    first = "attribute_malformed uuid=aaaaaaaa-0000-4000-8000-000000000002 field=type"
    assert first in caplog.text
