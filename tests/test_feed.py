"""The feed reader turns a real MISP feed (directory or HTTP) into rows."""

import functools
import http.server
import json
import threading
from collections import Counter
from pathlib import Path

import pytest

from sync.feed import (
    FeedError,
    FeedReader,
    feed_name_from_location,
    rows_from_feed_event,
)

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
