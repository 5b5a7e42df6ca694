"""The MISP emulator answers restSearch the way MISP 2.5.1 does."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
import requests

from tests.misp_emulator import DEFAULT_API_KEY, MispEmulator

DATA = Path(__file__).parent / "data" / "misp"
EVENTS = DATA / "events"
SEDNIT = DATA / "restsearch" / "sednit_9747"
XORIST = EVENTS / "57c4445b-c548-4654-af0b-4be3950d210f.json"
AUTH = {"Authorization": DEFAULT_API_KEY}


def search(misp: MispEmulator, body: object, **headers: str) -> requests.Response:
    sent = {**AUTH, **headers}
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    return requests.post(
        misp.url + "/attributes/restSearch", data=data, headers=sent, timeout=10
    )


def rows(misp: MispEmulator, **params: object) -> list[dict]:
    response = search(misp, {"returnFormat": "json", **params})
    assert response.status_code == 200, response.text
    return response.json()["response"]["Attribute"]


@pytest.fixture
def sednit():
    with MispEmulator() as misp:
        misp.load_event_file(EVENTS / "existing_event.json")
        yield misp


@pytest.fixture
def several():
    with MispEmulator() as misp:
        for name in ("existing_event.json", "to_delete2.json", XORIST.name):
            misp.load_event_file(EVENTS / name)
        yield misp


def test_id_ordered_search_reproduces_misp_export_byte_for_byte(sednit):
    body = {"returnFormat": "json", "order": "Attribute.id asc"}

    response = search(sednit, body)

    assert response.content == (SEDNIT / "all.json").read_bytes()
    assert response.headers["Content-Type"] == "application/json; charset=UTF-8"
    assert response.headers["X-Result-Count"] == "122"


@pytest.mark.parametrize(
    ("page", "result_count"), [(1, "51"), (2, "51"), (3, "22"), (4, "1")]
)
def test_pages_of_fifty_match_misp_including_the_page_past_the_end(
    sednit, page, result_count
):
    body = {"returnFormat": "json", "order": "Attribute.id asc", "limit": 50}

    response = search(sednit, {**body, "page": page})

    expected = (SEDNIT / f"page{page}_limit50.json").read_bytes()
    assert response.status_code == 200
    assert response.content == expected
    assert response.headers["X-Result-Count"] == result_count


def test_include_event_tags_appends_inherited_tags_like_misp(sednit):
    body = {"returnFormat": "json", "order": "Attribute.id", "includeEventTags": 1}

    response = search(sednit, body)

    assert response.content == (SEDNIT / "all_includeEventTags.json").read_bytes()


def test_records_carry_numbers_as_strings_and_object_block_only_for_members(
    several,
):
    found = rows(several)

    numeric = ("id", "event_id", "object_id", "timestamp", "distribution")
    assert all(
        isinstance(r[k], str) for r in found for k in (*numeric, "sharing_group_id")
    )
    assert all(isinstance(r["to_ids"], bool) and r["deleted"] is False for r in found)
    members = [r for r in found if r["object_id"] != "0"]
    assert members and all(
        set(r["Object"]) == {"id", "distribution", "sharing_group_id"} for r in members
    )
    assert all(
        "Object" not in r and r["object_relation"] is None
        for r in found
        if r["object_id"] == "0"
    )
    assert all(r["Tag"] for r in found if "Tag" in r)
    event_keys = "org_id distribution publish_timestamp id info orgc_id uuid"
    assert set(found[0]["Event"]) == set(event_keys.split())


@pytest.mark.parametrize(
    ("body", "headers", "status", "message_start"),
    [
        (b"", AUTH, 400, "Either specify the search terms"),
        (b"{}", AUTH, 400, "Either specify the search terms"),
        (b'{"returnFormat": "json",', AUTH, 405, "Invalid JSON input."),
        (b'{"returnFormat": "pdf"}', AUTH, 404, "Invalid output format."),
        (b'{"returnFormat": "json"}', {}, 403, "Authentication failed."),
        (
            b'{"returnFormat": "json"}',
            {"Authorization": "short"},
            403,
            "Authentication failed.",
        ),  # fmt: skip
        (
            b'{"returnFormat": "json"}',
            {"Authorization": "Bearer " + DEFAULT_API_KEY},
            403,
            "Authentication",
        ),  # fmt: skip
    ],
)
def test_bad_requests_get_misp_status_and_error_body(
    sednit, body, headers, status, message_start
):
    response = requests.post(
        sednit.url + "/attributes/restSearch", data=body, headers=headers, timeout=10
    )

    assert response.status_code == status
    error = response.json()
    assert error["message"].startswith(message_start)
    assert error["name"] == error["message"]
    assert error["url"] == "/attributes/restSearch"


def test_misp_auth_header_and_json_suffix_and_request_wrapper_are_accepted(sednit):
    body = {"request": {"returnFormat": "json", "type": "ip-dst||domain"}}
    headers = {"X-MISP-AUTH": DEFAULT_API_KEY, "Authorization": "wrong"}

    response = requests.post(
        sednit.url + "/attributes/restSearch.json",
        data=orjson.dumps(body),
        headers=headers,
        timeout=10,
    )

    types = {r["type"] for r in response.json()["response"]["Attribute"]}
    assert response.status_code == 200
    assert types == {"ip-dst", "domain"}


def test_unknown_parameters_are_ignored_and_false_flags_mean_no_filter(sednit):
    everything = rows(sednit)

    filtered = rows(sednit, metadata=1, event_tags=["x"], to_ids=False)

    assert len(filtered) == len(everything) == 122


def test_to_ids_filter_and_value_matches_either_half_of_a_composite(several):
    flagged = rows(several, to_ids=1)
    unflagged = rows(several, to_ids="0")

    assert flagged and all(r["to_ids"] for r in flagged)
    assert unflagged and not any(r["to_ids"] for r in unflagged)
    port_rows = [r for r in flagged if r["type"] == "ip-dst|port"]
    address = port_rows[0]["value"].split("|")[0]
    assert port_rows[0]["uuid"] in {r["uuid"] for r in rows(several, value=address)}


def test_deleted_default_hides_soft_deleted_one_shows_only_them_list_shows_both(
    sednit,
):
    victim = rows(sednit, type="ip-dst")[0]["uuid"]
    sednit.set_clock(1_800_000_000)
    sednit.soft_delete_attribute(victim)

    default = {r["uuid"] for r in rows(sednit)}
    only = rows(sednit, deleted=1)
    both = {r["uuid"] for r in rows(sednit, deleted=[0, 1])}

    assert victim not in default and len(default) == 121
    assert [(r["uuid"], r["deleted"], r["timestamp"]) for r in only] == [
        (victim, True, "1800000000")
    ]
    assert both == default | {victim}


def test_tag_filters_or_not_and_like(several):
    sednit_event = "5a3c2fcd-8328-42bb-a95e-4f4402de0b81"
    blog = 'osint:source-type="blog-post"'

    white = rows(several, tags=["tlp:white"])
    not_lazarus = rows(several, tags=['!misp-galaxy:threat-actor="Lazarus Group"'])
    both = rows(several, tags={"AND": ["tlp:white", blog]})
    like = rows(several, tags=["ms-caro-malware:%"])
    unknown = rows(several, tags=["no-such-tag"])

    assert len(white) == len(rows(several))
    assert not any(r["Event"]["info"].startswith("HIDDEN COBRA") for r in not_lazarus)
    assert len(not_lazarus) == len(white) - 128
    assert len(both) == 2 and all(r["Event"]["uuid"] == sednit_event for r in both)
    assert {r["type"] for r in like} >= {"md5", "sha256"} and len(like) == 9
    assert unknown == []


@pytest.mark.parametrize(
    ("value", "expected_count"),
    [
        (1472541011, 2),
        ("1472541011", 2),
        (["1472480394", "1472480395"], 4),
        (["1472480395", "1472480394"], 4),
        ("1d", 2),
        ("24H", 2),
        ("1500m", 3),
        ("5x", 0),
        (0, 9),
    ],
)
def test_timestamp_filter_forms(value, expected_count):
    with MispEmulator() as misp:
        misp.load_event_file(XORIST)
        misp.set_clock(1472541011 + 86400)

        found = rows(misp, timestamp=value)

    assert len(found) == expected_count


def test_event_time_filters_select_on_the_event(several):
    assert len(rows(several, event_timestamp=[1511183733, 1511183733])) == len(
        rows(several, eventid=rows(several, type="ip-dst|port")[0]["event_id"])
    )
    published = rows(several, publish_timestamp=1)
    recent_days = rows(several, **{"from": "2017-12-01"})
    assert {r["Event"]["uuid"] for r in published} == {XORIST.stem}
    assert {r["Event"]["info"][:6] for r in recent_days} == {"OSINT "}


def test_page_without_limit_returns_everything(sednit):
    found = rows(sednit, page=3)

    assert len(found) == 122


def test_order_is_honoured_and_default_order_is_shuffled_per_request(sednit):
    descending = rows(sednit, order="Attribute.timestamp desc")
    first = [r["id"] for r in rows(sednit)]
    second = [r["id"] for r in rows(sednit)]
    ignored = [r["id"] for r in rows(sednit, order="Attribute.comment asc")]

    stamps = [int(r["timestamp"]) for r in descending]
    assert stamps == sorted(stamps, reverse=True)
    assert sorted(first) == sorted(second) and first != second
    assert ignored != sorted(ignored, key=int)


def test_enforce_warninglist_drops_rows_after_paging_and_counts_them(sednit):
    page = rows(sednit, order="Attribute.id asc", limit=50, page=1)
    sednit.set_warninglist([page[0]["value"], page[1]["value"]])

    response = search(
        sednit,
        {"order": "Attribute.id asc", "limit": 50, "page": 1, "enforceWarninglist": 1},
    )

    assert len(response.json()["response"]["Attribute"]) == 48
    assert response.headers["X-Skipped-Elements-Count"] == "2"


def test_mutations_move_timestamps_and_hard_delete_leaves_no_trace(several):
    several.set_clock(1_900_000_000)
    target = rows(several, type="md5", uuid=XORIST.stem)[0]
    several.edit_attribute(target["uuid"], to_ids=False)
    several.hard_delete_event(int(rows(several, type="ip-dst|port")[0]["event_id"]))

    recent = rows(several, timestamp=1_900_000_000, deleted=[0, 1])

    assert [(r["uuid"], r["to_ids"]) for r in recent] == [(target["uuid"], False)]
    assert rows(several, type="ip-dst|port") == []


def test_request_log_records_bodies_and_headers_but_not_the_key(sednit):
    rows(sednit, limit=5, page=2)

    record = sednit.requests[-1]

    assert record.body == {"returnFormat": "json", "limit": 5, "page": 2}
    assert record.auth_present is True
    assert DEFAULT_API_KEY not in repr(sednit.requests)


def test_reset_mid_body_cuts_the_connection_and_truncated_json_is_invalid(sednit):
    sednit.inject("reset_mid_body")
    sednit.inject("truncated_json")

    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        _ = search(sednit, {"returnFormat": "json"}).content
    truncated = search(sednit, {"returnFormat": "json"})

    assert truncated.status_code == 200
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(truncated.content)
    assert [r.fault for r in sednit.requests] == ["reset_mid_body", "truncated_json"]


def test_synthetic_pages_are_disjoint_and_follow_the_timestamp_filter():
    with MispEmulator.synthetic(10_000, base_timestamp=1_000_000) as misp:
        pages = [
            rows(misp, order="Attribute.id asc", limit=3000, page=page)
            for page in (1, 2, 3, 4, 5)
        ]
        recent = rows(misp, timestamp=1_000_990)
        shuffled = rows(misp, limit=10)

    ids = [int(r["id"]) for page in pages for r in page]
    assert ids == list(range(1, 10_001)) and pages[4] == []
    assert sorted(int(r["id"]) for r in recent) == list(range(9901, 10_001))
    assert {r["type"] for r in pages[0]} == {"ip-dst", "domain", "url", "md5", "sha256"}
    assert [int(r["id"]) for r in shuffled] != list(range(1, 11))


def test_program_prints_its_url_serves_events_and_stops_on_sigterm(tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text(DEFAULT_API_KEY + "\n")
    command = [sys.executable, "-m", "tests.misp_emulator", "--port", "0"]
    command += ["--events", str(EVENTS), "--key-file", str(key_file)]
    root = Path(__file__).parent.parent
    process = subprocess.Popen(command, cwd=root, stdout=subprocess.PIPE, text=True)
    try:
        url = process.stdout.readline().strip()
        response = requests.post(
            url + "/attributes/restSearch",
            json={"returnFormat": "json", "limit": 1},
            headers=AUTH,
            timeout=10,
        )
    finally:
        process.send_signal(signal.SIGTERM)
        returncode = process.wait(timeout=10)

    assert url.startswith("http://127.0.0.1:")
    assert len(response.json()["response"]["Attribute"]) == 1
    assert returncode == 0


def test_synthetic_rows_honour_context_and_event_tag_options_and_refuse_the_rest():
    query = {"includeContext": 1, "includeEventTags": 1, "tags": ["tlp:white"]}
    wide_types = ["domain", "hostname", "ip-dst", "ip-src", "md5", "sha256", "url"]
    with MispEmulator.synthetic(2_500, per_event=1000) as misp:
        found = rows(misp, order="Attribute.id asc", type=wide_types, **query)
        narrow = search(misp, {"type": ["ip-dst"], "limit": 5})
        untagged = rows(misp, tags=["!tlp:white"])

    events = {r["Event"]["id"]: r["Event"] for r in found}
    assert len(found) == 2_500 and sorted(events) == ["1", "2", "3"]
    inherited = {"id": "1", "name": "tlp:white", "colour": "#ffffff"}
    inherited |= {"numerical_value": None, "inherited": 1}
    assert all(e["published"] for e in events.values())
    assert {e["Tag"][0]["name"] for e in events.values()} == {"tlp:white"}
    assert all(r["Tag"] == [inherited] for r in found)
    assert narrow.status_code == 501 and "type filters" in narrow.json()["message"]
    assert untagged == []


def test_include_context_and_event_uuid_describe_the_event(sednit):
    found = rows(sednit, includeContext=1, includeEventUuid=1, limit=1)

    event = found[0]["Event"]
    assert found[0]["event_uuid"] == event["uuid"]
    assert (event["info"], event["threat_level_id"], event["published"]) == (
        "OSINT - Sednit update: How Fancy Bear Spent the Year",
        "3",
        False,
    )
    assert event["Tag"][0] == {
        "local": False,
        "id": "2",
        "name": "tlp:white",
        "colour": "#00d622",
        "numerical_value": None,
    }
    assert event["Orgc"]["name"] == "CIRCL"


def test_legacy_last_filter_and_unemulated_parameters(sednit):
    sednit.set_clock(1_900_000_000)
    event_id = int(rows(sednit, limit=1)[0]["event_id"])
    sednit.publish_event(event_id)

    published = rows(sednit, last="1h", published=1)
    refused = search(sednit, {"returnFormat": "json", "includeSightings": 1})

    assert len(published) == 122
    assert refused.status_code == 501
    assert "includeSightings" in refused.json()["message"]


def test_paging_without_order_repeats_and_misses_rows_as_misp_may(sednit):
    pages = [rows(sednit, limit=50, page=page) for page in (1, 2, 3)]

    uuids = [r["uuid"] for page in pages for r in page]
    assert len(uuids) == 122
    assert len(set(uuids)) < 122


def event_search(misp: MispEmulator, body: dict) -> requests.Response:
    return requests.post(
        misp.url + "/events/restSearch",
        data=orjson.dumps(body),
        headers=AUTH,
        timeout=10,
    )


def test_event_metadata_search_returns_a_list_of_events_without_attributes(several):
    first_id, _, third_id = sorted(str(i) for i in several._store.events)
    wanted = {"returnFormat": "json", "metadata": 1, "eventid": [first_id, third_id]}

    response = event_search(several, wanted)
    everything = event_search(several, {"metadata": 1, "limit": 2, "page": 2})
    with_attributes = event_search(several, {"eventid": [first_id]})

    events = [entry["Event"] for entry in response.json()["response"]]
    assert [e["id"] for e in events] == [first_id, third_id]
    assert all("Attribute" not in e and "Object" not in e for e in events)
    first = events[0]
    stored = several._store.events[int(first_id)]
    assert first["info"] == stored["info"]
    assert isinstance(first["published"], bool)
    assert isinstance(first["threat_level_id"], str) and first["timestamp"].isdigit()
    assert {t["name"] for t in first["Tag"]} == {t["name"] for t in stored["Tag"]}
    assert [e["Event"]["id"] for e in everything.json()["response"]] == [third_id]
    assert with_attributes.status_code == 501


def test_synthetic_event_metadata_matches_the_context_of_its_rows():
    with MispEmulator.synthetic(2_500, per_event=1000) as misp:
        context = rows(misp, includeContext=1, order="Attribute.id asc", limit=1)
        response = event_search(misp, {"metadata": 1, "eventid": ["1", "3", "9"]})

    events = [entry["Event"] for entry in response.json()["response"]]
    assert [e["id"] for e in events] == ["1", "3"]
    expected = context[0]["Event"]
    assert {
        k: events[0][k] for k in ("uuid", "info", "published", "threat_level_id")
    } == {k: expected[k] for k in ("uuid", "info", "published", "threat_level_id")}
    assert [t["name"] for t in events[0]["Tag"]] == ["tlp:white"]
    assert events[1]["attribute_count"] == "500"
