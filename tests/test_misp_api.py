"""The MISP client pages, retries and fails cleanly against a real HTTP server."""

from __future__ import annotations

import logging
import threading
import time
import warnings
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import orjson
import pytest
from urllib3.exceptions import InsecureRequestWarning

from sync.config import Secret
from sync.misp_api import (
    MispAuthError,
    MispClient,
    MispResponseError,
    MispTlsError,
    MispUnavailable,
)
from tests.misp_emulator import DEFAULT_API_KEY, MispEmulator

EVENTS = Path(__file__).parent / "data" / "misp" / "events"
PLANTED = Path(__file__).parent / "data" / "misp" / "planted" / "indicators.json"
WRONG_KEY = "WrongKey" + "9" * 32


def client_for(misp: MispEmulator, **options) -> MispClient:
    settings = {"page_size": 50, "backoff_base_s": 0.01, "read_timeout_s": 5}
    return MispClient(misp.url, Secret(DEFAULT_API_KEY), **{**settings, **options})


def pull(client: MispClient, filters: dict | None = None, **options) -> list[dict]:
    pages = client.iter_attribute_pages(filters or {"deleted": [0, 1]}, **options)
    return [row for page in pages for row in page]


@pytest.fixture
def misp():
    with MispEmulator() as emulator:
        for name in ("existing_event.json", "long_event.json", "to_delete2.json"):
            emulator.load_event_file(EVENTS / name)
        yield emulator


@pytest.fixture
def small():
    with MispEmulator() as emulator:
        emulator.load_event_file(EVENTS / "existing_event.json")
        yield emulator


def restsearch_bodies(misp: MispEmulator) -> list[dict]:
    return [r.body for r in misp.requests if r.path == "/attributes/restSearch"]


def test_paging_returns_every_attribute_once_although_misp_default_is_shuffled(misp):
    with client_for(misp) as client:
        found = pull(client)

    uuids = [row["uuid"] for row in found]
    bodies = restsearch_bodies(misp)
    assert len(uuids) == len(set(uuids)) == 122 + 370 + 128
    assert client.incomplete is None and client.pages_count == 13
    assert all(b["order"] == "Attribute.id asc" for b in bodies)
    assert [b["page"] for b in bodies] == list(range(1, 15))
    assert all(b["returnFormat"] == "json" and b["limit"] == 50 for b in bodies)


def test_short_page_is_not_taken_for_the_end(small):
    first_page = pull(client_for(small), max_pages=1)
    small.set_warninglist(row["value"] for row in first_page[:10])

    with client_for(small) as client:
        found = pull(client, {"enforceWarninglist": 1})

    assert len(found) == 122 - 10
    assert client.skipped_count == 10
    assert len(restsearch_bodies(small)) == 1 + 4


def test_max_pages_stops_early_and_says_the_pull_is_incomplete(small, caplog):
    with client_for(small) as client:
        found = pull(client, max_pages=2)

    assert len(found) == 100
    assert client.incomplete == "max_pages"
    assert "misp_pull_incomplete reason=max_pages pages=2" in caplog.text


@pytest.mark.parametrize(
    "fault", ["status500", "status429", "reset_mid_body", "truncated_json"]
)
def test_each_transient_fault_is_retried_and_nothing_is_lost(small, fault):
    expected = {row["uuid"] for row in pull(client_for(small))}
    small.clear_requests()
    small.inject(fault, count=2, retry_after=0)

    found = pull(client_for(small))

    faults = [r.fault for r in small.requests]
    assert {row["uuid"] for row in found} == expected and len(found) == 122
    assert faults[:3] == [fault, fault, None]
    assert [r.body["page"] for r in small.requests[:3]] == [1, 1, 1]


def test_retry_after_seconds_is_honoured(small):
    small.inject("status429", retry_after=1)
    started = time.monotonic()

    found = pull(client_for(small, backoff_base_s=0))

    waited_s = time.monotonic() - started
    assert len(found) == 122
    assert 1.0 <= waited_s < 3.0


def test_retry_after_http_date_is_honoured():
    later = datetime.now(UTC) + timedelta(seconds=2)
    with MispEmulator() as emulator:
        emulator.load_event_file(EVENTS / "existing_event.json")
        emulator.inject("status429", retry_after=format_datetime(later, usegmt=True))
        started = time.monotonic()

        found = pull(client_for(emulator, backoff_base_s=0))

    waited_s = time.monotonic() - started
    assert len(found) == 122
    assert 0.9 <= waited_s < 3.5


def test_stalled_answer_hits_the_read_timeout_then_succeeds_on_retry(small):
    small.inject("stall", seconds=1.5)
    started = time.monotonic()

    found = pull(client_for(small, read_timeout_s=0.3))

    assert len(found) == 122
    assert time.monotonic() - started < 1.4
    assert [r.fault for r in small.requests[:2]] == ["stall", None]


def test_gives_up_after_the_retries_naming_path_page_attempts_and_cause(small):
    small.inject("status500", count=3)

    with pytest.raises(MispUnavailable) as caught:
        pull(client_for(small, retries=2))

    message = str(caught.value)
    assert "/attributes/restSearch page 1" in message
    assert "after 3 attempts" in message
    assert "HTTP 500: An Internal Error Has Occurred." in message
    assert len(small.requests) == 3


@pytest.mark.parametrize("fault", [None, "status401"])
def test_refused_key_raises_auth_error_and_the_key_never_shows(fault, caplog):
    caplog.set_level(logging.DEBUG)
    with MispEmulator(api_key=DEFAULT_API_KEY) as emulator:
        emulator.load_event_file(EVENTS / "existing_event.json")
        key = DEFAULT_API_KEY if fault else WRONG_KEY
        if fault:
            emulator.inject(fault)
        client = MispClient(emulator.url, Secret(key), page_size=50)

        with pytest.raises(MispAuthError) as caught:
            pull(client)

    status = "401" if fault else "403"
    assert str(caught.value).startswith(f"MISP refused the API key (HTTP {status}): ")
    assert len(emulator.requests) == 1 and emulator.requests[0].auth_present
    assert "misp_request page=1 attempt=1 status=" + status in caplog.text
    for text in (str(caught.value), repr(caught.value), repr(client), caplog.text):
        assert key not in text


def test_key_goes_only_into_the_authorization_header(small):
    with client_for(small) as client:
        pull(client, max_pages=1)

    record = small.requests[0]
    assert record.auth_present
    assert DEFAULT_API_KEY not in repr(record.body)
    assert record.headers["User-Agent"].startswith("wazuh-misp-ioc/")
    assert record.headers["Accept"] == "application/json"


def test_a_value_that_cannot_be_a_key_is_refused_without_echoing_it():
    with pytest.raises(MispAuthError) as caught:
        MispClient("http://127.0.0.1:9", Secret("secret with spaces\n"))

    assert "got 19 characters" in str(caught.value)
    assert "with spaces" not in str(caught.value)


def test_client_owned_parameters_are_refused_in_filters(small):
    with pytest.raises(ValueError, match="'page' is set by the client"):
        pull(client_for(small), {"page": 3})


def test_planted_indicators_come_back_with_their_misp_fields():
    with MispEmulator() as emulator:
        planted = orjson.loads(PLANTED.read_bytes())
        emulator.load_attributes(planted)

        found = pull(client_for(emulator, page_size=5), {"to_ids": 1})

    expected = {p["uuid"]: p["value"] for p in planted if p["to_ids"]}
    assert {row["uuid"]: row["value"] for row in found} == expected
    assert all(row["Event"]["id"] == "4242" for row in found)


def test_https_verifies_with_the_trustme_ca():
    with MispEmulator(tls=True) as emulator:
        emulator.load_event_file(EVENTS / "existing_event.json")

        url = emulator.url
        found = pull(client_for(emulator, ca_bundle=str(emulator.ca_path)))

    assert url.startswith("https://")
    assert len(found) == 122


def test_https_without_the_ca_fails_at_once_with_a_clear_error():
    with MispEmulator(tls=True) as emulator:
        client = client_for(emulator)
        started = time.monotonic()

        with pytest.raises(MispTlsError) as caught:
            pull(client)

    assert "TLS certificate verification failed" in str(caught.value)
    assert "misp.ca_bundle" in str(caught.value)
    assert time.monotonic() - started < 2.0


@pytest.mark.parametrize("suppress", [False, True])
def test_verify_off_works_and_warns_unless_suppressed(suppress):
    with MispEmulator(tls=True) as emulator:
        emulator.load_event_file(EVENTS / "existing_event.json")
        client = client_for(emulator, verify_tls=False, suppress_tls_warning=suppress)

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            found = pull(client)

    insecure = [w for w in caught if issubclass(w.category, InsecureRequestWarning)]
    assert len(found) == 122
    assert bool(insecure) is not suppress


class _FixedAnswer(BaseHTTPRequestHandler):
    """Answers every POST with the class's status and body."""

    status = 200
    body = b""
    content_type = "application/json"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(self.status)
        self.send_header("Content-Type", self.content_type)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, format: str, *args) -> None:
        """Quiet."""


@pytest.fixture
def fixed_server():
    servers = []

    def start(status: int, body: bytes, content_type: str = "application/json"):
        handler = type(
            "Answer",
            (_FixedAnswer,),
            {"status": status, "body": body, "content_type": content_type},
        )
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    ("status", "body", "content_type", "expected"),
    [
        (200, b'{"response": []}', "application/json", None),
        (
            200,
            b'{"response": {"Attribute": {}}}',
            "application/json",
            "not a list (got dict)",
        ),  # fmt: skip
        (
            200,
            b'{"response": {"Attribute": [1]}}',
            "application/json",
            "Attribute[0] is not an object",
        ),  # fmt: skip
        (
            200,
            b'{"Attribute": []}',
            "application/json",
            "bad framing (got no 'response')",
        ),  # fmt: skip
        (200, b"<html>login</html>", "text/html", "answer is not JSON"),
        (
            404,
            b'{"name":"Not Found","message":"Not Found"}',
            "application/json",
            "HTTP 404: Not Found",
        ),  # fmt: skip
        (302, b"", "text/html", "redirected (HTTP 302"),
    ],
)
def test_wrong_answers_raise_response_errors_naming_the_page(
    fixed_server, status, body, content_type, expected
):
    url = fixed_server(status, body, content_type)
    client = MispClient(url, Secret(DEFAULT_API_KEY), retries=0)

    if expected is None:
        assert pull(client) == [] and client.incomplete is None
        return
    with pytest.raises(MispResponseError) as caught:
        pull(client)

    assert "MISP /attributes/restSearch page 1" in str(caught.value)
    assert expected in str(caught.value)


def test_connection_refused_is_retried_then_reported(fixed_server):
    url = fixed_server(200, b"")
    closed_port_url = url.rsplit(":", 1)[0] + ":9"
    client = MispClient(closed_port_url, Secret(DEFAULT_API_KEY), retries=1)
    client.backoff_base_s = 0.01

    with pytest.raises(MispUnavailable) as caught:
        pull(client)

    assert "after 2 attempts" in str(caught.value)
    assert "ConnectionError" in str(caught.value)


def test_a_url_without_scheme_fails_at_once_without_retries():
    client = MispClient("misp.example:443", Secret(DEFAULT_API_KEY), retries=3)

    with pytest.raises(MispUnavailable) as caught:
        pull(client)

    assert "cannot send the request" in str(caught.value)
    assert DEFAULT_API_KEY not in str(caught.value)


def test_a_pull_stopped_early_or_failed_is_not_reported_complete(small):
    stopped = client_for(small)
    first_page = next(stopped.iter_attribute_pages({}))
    failed = client_for(small, retries=1)
    small.inject("status500", count=2)

    with pytest.raises(MispUnavailable):
        pull(failed)

    assert len(first_page) == 50
    assert stopped.incomplete == failed.incomplete == "not_finished"


def test_event_metadata_comes_in_one_request_and_faults_are_retried(small):
    known = str(next(iter(small._store.events)))
    small.inject("status500", 1)
    with client_for(small) as client:
        events = client.fetch_event_metadata([known, "77"])

    bodies = [r.body for r in small.requests if r.path == "/events/restSearch"]
    assert [e["id"] for e in events] == [known]
    assert bodies[-1] == {
        "returnFormat": "json",
        "metadata": 1,
        "eventid": [known, "77"],
    }
    assert len(bodies) == 2


def test_event_metadata_of_the_wrong_shape_names_the_endpoint(fixed_server):
    server = fixed_server(200, b'{"response": {"Event": []}}')
    with MispClient(server, Secret(DEFAULT_API_KEY), retries=0) as client:
        with pytest.raises(MispResponseError) as caught:
            client.fetch_event_metadata(["1"])

    assert str(caught.value).startswith(
        "MISP /events/restSearch (1 events): bad framing"
    )


class _ScriptedAnswer(BaseHTTPRequestHandler):
    """Answers each POST with the next (status, headers, body) of ``script``."""

    script: list = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        status, headers, body = self.script.pop(0) if self.script else (200, {}, b"")
        self.send_response(status)
        for name, value in {"Content-Type": "application/json", **headers}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:
        """Quiet."""


@pytest.fixture
def scripted_server():
    servers = []

    def start(*answers: tuple) -> str:
        handler = type("Script", (_ScriptedAnswer,), {"script": list(answers)})
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


ONE_ROW = b'{"response": {"Attribute": [{"uuid": "u1"}]}}'
NO_ROWS = b'{"response": {"Attribute": []}}'


@pytest.mark.parametrize("retry_after", ["\u00b2", "soon", "9" * 400, "Mon, 99 Foo"])
def test_garbage_retry_after_falls_back_to_the_default_back_off(small, retry_after):
    """Retry-After '²' or garbage is ignored; the pull still completes."""
    small.inject("status429", retry_after=retry_after)
    started = time.monotonic()

    found = pull(client_for(small, backoff_base_s=0.01))

    assert len(found) == 122
    assert time.monotonic() - started < 1.0
    assert [r.fault for r in small.requests[:2]] == ["status429", None]


def test_garbage_skipped_elements_header_counts_zero(scripted_server):
    """X-Skipped-Elements-Count '²' counts as 0 instead of failing the pull."""
    odd = {"X-Skipped-Elements-Count": "\u00b2"}
    address = scripted_server((200, odd, ONE_ROW), (200, {}, NO_ROWS))

    client = MispClient(f"http://{address}", Secret(DEFAULT_API_KEY), retries=0)
    found = pull(client)

    assert [row["uuid"] for row in found] == ["u1"]
    assert client.skipped_count == 0 and client.incomplete is None


def test_a_key_echoed_near_the_cut_is_masked_before_shortening(scripted_server):
    """No fragment of an echoed key survives the 300-character limit."""
    message = "x" * 270 + " key " + DEFAULT_API_KEY + " rest" * 20
    body = orjson.dumps({"message": message})
    address = scripted_server((500, {}, body))
    client = MispClient(f"http://{address}", Secret(DEFAULT_API_KEY), retries=0)

    with pytest.raises(MispUnavailable) as caught:
        pull(client)

    text = str(caught.value)
    assert "key ********" in text
    assert DEFAULT_API_KEY[:8] not in text


def test_credentials_in_the_misp_url_never_show(scripted_server, caplog):
    """user:password@ and ?key= of misp.url stay out of errors, logs and repr."""
    caplog.set_level(logging.DEBUG)
    password, query_key = "S3cret-pass", "QueryKey" + "7" * 32
    address = scripted_server((404, {}, b'{"message": "Not Found"}'))
    secrets = f"admin:{password}@{address}/misp?key={query_key}"
    client = MispClient(f"http://{secrets}", Secret(DEFAULT_API_KEY), retries=0)
    refused = MispClient(
        f"http://admin:{password}@127.0.0.1:9/?key={query_key}",
        Secret(DEFAULT_API_KEY),
        retries=1,
        backoff_base_s=0,
    )

    with pytest.raises(MispResponseError) as answered:
        client.fetch_attribute_page({}, 1)
    with pytest.raises(MispUnavailable) as caught:
        pull(refused)

    ours = [r.getMessage() for r in caplog.records if r.name.startswith("sync")]
    texts = [str(caught.value), str(answered.value), repr(client), *ours]
    assert "Connection refused" in str(caught.value)
    assert "misp_retry" in " ".join(ours)
    for text in texts:
        assert password not in text and query_key not in text
    assert client.shown_url == f"http://{address}/misp?key=********"
