"""Tests for extracting observables, using real alerts written by Wazuh."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from urllib.parse import unquote

import pytest

from sync.normalize import (
    normalize_domain,
    normalize_hash,
    normalize_ip,
    normalize_url,
)
from tailer.extract import CatalogError, build_catalog, extract_observables

ALERTS_DIR = Path(__file__).parent / "data" / "alerts"
CATALOG = build_catalog()
# Occurrences outside decoded fields: free text, and the rule's own description.
NOT_DECODED = {"full_log", "previous_output", "rule.description"}
NOT_DECODED.add("data.win.system.message")  # the rendered event text
NOT_EXTRACTED = {"data.tls.subject"}  # a certificate subject, not a host name


def _load(name: str) -> list[dict]:
    return [json.loads(line) for line in (ALERTS_DIR / name).open(encoding="utf-8")]


INJECTED = {alert["id"]: alert for alert in _load("iocs-injected.jsonl")}
EXPECTED = _load("iocs-injected-EXPECTED.jsonl")
REAL = _load("engine-real.jsonl") + [
    alert
    for path in sorted(ALERTS_DIR.glob("samples-*.jsonl"))
    for alert in _load(path.name)
]


def _decoded_occurrences(*, keep_imphash: bool) -> list[tuple]:
    rows = []
    for expected in EXPECTED:
        for occurrence in expected["occurrences"]:
            path = occurrence["path"]
            if path in NOT_DECODED or path in NOT_EXTRACTED:
                continue
            is_imphash = "IMPHASH" in occurrence["note"]
            if is_imphash == keep_imphash:
                rows.append((expected["id"], path, occurrence["text"]))
    return rows


def _normalised(text: str) -> set[str]:
    """Every normal form the planted text could take, whatever its type."""
    forms = set()
    for normalize in (normalize_ip, normalize_domain, normalize_hash, normalize_url):
        try:
            forms.add(normalize(text))
        except ValueError:
            pass
    return forms or {text}


def _bare_path(path: str) -> str:
    """`data.dns.answers[1].rdata` -> `data.dns.answers.rdata`."""
    return ".".join(part.split("[")[0] for part in path.split("."))


def _paths_of(alert_id: str) -> set[str]:
    expected = next(e for e in EXPECTED if e["id"] == alert_id)
    return {_bare_path(o["path"]) for o in expected["occurrences"]}


def _matches(observable, alert_id: str, path: str, text: str) -> bool:
    """Same value, from this path or (deduplicated) from another planted path."""
    if observable.value not in _normalised(text):
        return False
    return observable.field_path in {_bare_path(path)} | _paths_of(alert_id)


OCCURRENCES = _decoded_occurrences(keep_imphash=False)


def test_expected_file_lists_planted_values_in_decoded_fields():
    assert len(OCCURRENCES) >= 150


@pytest.mark.parametrize(("alert_id", "path", "text"), OCCURRENCES)
def test_planted_value_is_extracted_from_its_field(alert_id, path, text):
    """Each planted value in a decoded field comes out, from that field path."""
    catalog = build_catalog(skip_private=True)

    observables = extract_observables(INJECTED[alert_id], catalog)

    assert any(_matches(o, alert_id, path, text) for o in observables)


@pytest.mark.parametrize(
    ("alert_id", "path", "text"), _decoded_occurrences(keep_imphash=True)
)
def test_imphash_is_never_extracted_as_a_file_hash(alert_id, path, text):
    observables = extract_observables(INJECTED[alert_id], CATALOG)
    hashes = {o.value for o in observables if o.kind == "hash"}

    assert normalize_hash(text) not in hashes
    assert len(hashes) == 3  # the SHA1, MD5 and SHA256 of the same line


def test_free_text_is_not_scanned_by_default():
    """Values only present in free text stay out unless scan_free_text is on."""
    alert = INJECTED["1796315294.0"]  # pfSense burst: the IPs are in previous_output
    scanning = build_catalog(scan_free_text=True)

    default_paths = {o.field_path for o in extract_observables(alert, CATALOG)}
    scanned_paths = {o.field_path for o in extract_observables(alert, scanning)}

    assert default_paths == {"data.srcip", "data.dstip"}
    assert scanned_paths & {"full_log", "previous_output"}


def test_agent_ip_location_and_predecoder_are_never_observables():
    """Over ~2,000 real alerts, no observable comes from identity fields."""
    catalog = build_catalog(skip_private=False, scan_free_text=False)
    paths = Counter()
    for alert in REAL + list(INJECTED.values()):
        paths.update(o.field_path for o in extract_observables(alert, catalog))

    forbidden = ("agent.", "manager.", "predecoder.", "location", "cluster.")
    assert not [path for path in paths if path.startswith(forbidden)]
    assert paths["data.srcip"] > 100


def test_agent_ip_is_ignored_even_when_public():
    alert = {
        "agent": {"id": "001", "ip": "198.51.100.7"},
        "location": "192.0.2.1",
        "predecoder": {"hostname": "192.0.2.2"},
        "data": {"srcip": "192.0.2.3"},
    }

    observables = extract_observables(alert, CATALOG)

    assert [(o.value, o.field_path) for o in observables] == [
        ("192.0.2.3", "data.srcip")
    ]


def test_path_only_data_url_is_never_a_url():
    """Web access logs put the path in data.url; a path without an embedded URL
    (as in `?src=http://...`) yields nothing."""
    alerts = [a for a in REAL if "web-accesslog" in str(a.get("decoder"))]
    plain = [a for a in alerts if "://" not in unquote(a["data"].get("url", ""))]
    observables = [o for a in plain for o in extract_observables(a, CATALOG)]

    assert len(plain) > 100
    assert [o for o in observables if o.field_path == "data.url"] == []


def test_url_embedded_in_a_path_yields_the_url_and_its_host():
    alert = {
        "decoder": {"name": "web-accesslog"},
        "data": {"url": "/r?to=https%3A%2F%2FDL.Example.NET%2Ffiles%2F&x=1"},
    }

    observables = extract_observables(alert, CATALOG)

    assert {(o.kind, o.value) for o in observables} == {
        ("url", "https://dl.example.net/files/"),
        ("domain", "dl.example.net"),
    }


def test_squid_full_url_yields_url_and_host_domain():
    alert = {
        "decoder": {"name": "squid-accesslog"},
        "data": {"url": "HTTP://C2.BAD.TEST:80/gate.php"},
    }

    observables = extract_observables(alert, CATALOG)

    assert ("url", "http://c2.bad.test/gate.php") in {
        (o.kind, o.value) for o in observables
    }
    assert ("domain", "c2.bad.test") in {(o.kind, o.value) for o in observables}


def test_named_query_name_in_data_url_is_a_domain():
    alert = {
        "decoder": {"parent": "named", "name": "named-query"},
        "data": {"srcip": "192.0.2.10", "url": "Evil.Example."},
    }

    observables = extract_observables(alert, CATALOG)

    assert ("domain", "evil.example") in {(o.kind, o.value) for o in observables}


def test_office365_client_ip_port_is_stripped():
    """The O365 ClientIP is written with a port; the port moves to the observable."""
    alert = next(a for a in INJECTED.values() if "office365" in a.get("data", {}))

    observables = extract_observables(alert, CATALOG)
    client = [o for o in observables if o.field_path == "data.office365.ClientIP"]

    assert alert["data"]["office365"]["ClientIP"] == "192.0.2.10:53242"
    assert [(o.value, o.port, o.raw) for o in client] == [
        ("192.0.2.10", 53242, "192.0.2.10:53242")
    ]


@pytest.mark.parametrize(
    ("raw", "value", "port"),
    [
        ("[2001:db8::1]:443", "2001:db8::1", 443),
        ("2001:db8::2", "2001:db8::2", None),
        ("203.0.113.9", "203.0.113.9", None),
    ],
)
def test_office365_client_ip_forms(raw, value, port):
    alert = {"data": {"office365": {"ClientIP": raw}}}

    observables = extract_observables(alert, CATALOG)

    assert [(o.value, o.port) for o in observables] == [(value, port)]


def test_srcport_becomes_the_observable_port():
    alert = {"data": {"srcip": "198.51.100.50", "srcport": "8080"}}

    assert extract_observables(alert, CATALOG)[0].port == 8080


def test_private_and_loopback_addresses_are_skipped_and_counted():
    alert = {
        "data": {
            "win": {
                "eventdata": {
                    "ipAddress": "::1",
                    "sourceIp": "10.0.2.15",
                    "destinationIp": "0:0:0:0:0:0:0:1",
                    "queryResults": "::ffff:127.0.0.1;fe80::1;192.168.1.1;",
                }
            }
        }
    }
    drops = Counter()

    observables = extract_observables(alert, CATALOG, drops=drops)

    assert observables == []
    assert drops["skipped_address"] == 6


def test_documentation_ranges_are_kept():
    alert = {
        "data": {
            "srcip": "192.0.2.1",
            "dstip": "2001:db8::5",
            "src_ip": "198.51.100.1",
            "dest_ip": "203.0.113.1",
        }
    }

    values = {o.value for o in extract_observables(alert, CATALOG)}

    assert values == {"192.0.2.1", "2001:db8::5", "198.51.100.1", "203.0.113.1"}


def test_skip_private_off_keeps_private_addresses():
    alert = {"data": {"srcip": "10.0.2.15"}}

    observables = extract_observables(alert, build_catalog(skip_private=False))

    assert [o.value for o in observables] == ["10.0.2.15"]


def test_invalid_values_are_dropped_and_counted():
    """`-`, hostnames in IP fields and odd hashes never raise."""
    alert = {
        "data": {
            "srcip": "ec2.amazonaws.com",
            "dstip": "AWS Internal",
            "fileinfo": {"md5": "xyz"},
            "tls": {"sni": "not a name"},
        },
        "syscheck": {"md5_after": "d41d8cd98f00b204e9800998ecf8427e"},
    }
    drops = Counter()

    observables = extract_observables(alert, CATALOG, drops=drops)

    assert observables == []
    assert sum(drops.values()) == 5
    assert drops["empty_hash"] == 1


def test_observables_are_deduplicated_per_kind_value_and_port():
    alert = {
        "data": {
            "srcip": "192.0.2.10",
            "src_ip": "::ffff:192.0.2.10",
            "dstip": "192.0.2.10",
            "dstport": "80",
        }
    }

    observables = extract_observables(alert, CATALOG)

    assert {(o.value, o.port) for o in observables} == {
        ("192.0.2.10", None),
        ("192.0.2.10", 80),
    }
    assert len(observables) == 2


def test_sysmon_query_results_yield_cname_and_addresses():
    alert = {
        "data": {
            "win": {
                "eventdata": {
                    "queryResults": "type:  5 cdn.evil.example;"
                    "::ffff:203.0.113.77;198.51.100.23;"
                }
            }
        }
    }

    observables = extract_observables(alert, CATALOG)

    assert [(o.kind, o.value) for o in observables] == [
        ("domain", "cdn.evil.example"),
        ("ip", "203.0.113.77"),
        ("ip", "198.51.100.23"),
    ]


def test_suricata_http_event_joins_hostname_and_path_into_a_url():
    alert = {
        "data": {
            "dest_port": "8080",
            "http": {"hostname": "C2.BAD.TEST", "url": "/gate.php"},
        }
    }

    values = {(o.kind, o.value) for o in extract_observables(alert, CATALOG)}

    assert ("url", "http://c2.bad.test:8080/gate.php") in values
    assert ("domain", "c2.bad.test") in values


def test_aws_single_and_list_values_are_both_read():
    """AWS turns single-element lists into scalars; both shapes work."""
    as_list = {"data": {"aws": {"sourceIPAddress": ["198.51.100.1", "198.51.100.2"]}}}
    as_scalar = {"data": {"aws": {"sourceIPAddress": "198.51.100.3"}}}

    values = [
        o.value for a in (as_list, as_scalar) for o in extract_observables(a, CATALOG)
    ]

    assert values == ["198.51.100.1", "198.51.100.2", "198.51.100.3"]


def test_a_list_along_the_shared_eventdata_path_is_read_element_wise():
    alert = {
        "data": {
            "win": [
                {"eventdata": {"ipAddress": "198.51.100.4", "ipPort": "3389"}},
                {"eventdata": [{"queryName": "Evil.Example"}, {"ipAddress": "-"}]},
            ]
        }
    }

    observables = extract_observables(alert, CATALOG)

    assert [(o.kind, o.value, o.port) for o in observables] == [
        ("ip", "198.51.100.4", 3389),
        ("domain", "evil.example", None),
    ]


def test_the_first_field_in_the_alerts_own_key_order_names_the_observable():
    first_win = {"win": {"eventdata": {"ipAddress": "198.51.100.6"}}}
    alert = {"data": first_win | {"srcip": "198.51.100.6"}}

    observables = extract_observables(alert, CATALOG)

    assert [o.field_path for o in observables] == ["data.win.eventdata.ipAddress"]


@pytest.mark.parametrize("port", ["\u00b2", "0", "65536", "x", True])
def test_an_unusable_port_leaves_the_address_without_a_port(port):
    alert = {"data": {"srcip": "198.51.100.7", "srcport": port}}
    client = {"data": {"office365": {"ClientIP": f"198.51.100.8:{port}"}}}

    observables = [o for a in (alert, client) for o in extract_observables(a, CATALOG)]

    assert [o.value for o in observables] == ["198.51.100.7", "198.51.100.8"]
    assert observables[0].port is None


def test_virustotal_result_hashes_are_extracted_unless_skipped_upstream():
    """VT results carry the file hashes; skipping them is the selector's job."""
    alert = _load("samples-virustotal.jsonl")[3]

    hashes = {o.value for o in extract_observables(alert, CATALOG) if o.kind == "hash"}

    assert "44d88612fea8a8f36de82e1278abb02f" in hashes
    assert "3395856ce81f2b7382dee72602f798b642f14140" in hashes


def test_extra_fields_extend_the_catalog():
    catalog = build_catalog(
        [
            {"path": "data.foo.bar", "type": "ip"},
            {"path": "data.c2.link", "type": "url"},
            {"path": "data.nginx.server", "type": "domain"},
        ]
    )
    alert = {
        "data": {
            "foo": {"bar": "198.51.100.9"},
            "c2": {"link": "http://c2.bad.test/x"},
            "nginx": {"server": "Evil.Example"},
        }
    }

    values = {
        (o.kind, o.value, o.field_path) for o in extract_observables(alert, catalog)
    }

    assert ("ip", "198.51.100.9", "data.foo.bar") in values
    assert ("url", "http://c2.bad.test/x", "data.c2.link") in values
    assert ("domain", "c2.bad.test", "data.c2.link") in values
    assert ("domain", "evil.example", "data.nginx.server") in values


def test_extra_fields_errors_name_every_bad_entry():
    bad = [
        {"path": "data.x", "type": "email"},
        {"path": "agent.ip", "type": "ip"},
        "data.y",
        {"path": "", "type": "ip"},
    ]

    with pytest.raises(CatalogError) as caught:
        build_catalog(bad)

    message = str(caught.value)
    for index in range(4):
        assert f"tailer.extra_fields[{index}]" in message
    assert "(got 'email'); expected ip|domain|url|hash" in message


def test_extraction_over_the_real_engine_alerts_is_fast():
    """Pure extraction of 1,867 real alerts stays well under a second."""
    import time

    start = time.perf_counter()
    total = sum(len(extract_observables(a, CATALOG)) for a in REAL)
    elapsed_s = time.perf_counter() - start

    assert total > 500
    assert elapsed_s < 1.0
