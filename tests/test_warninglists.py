"""Local warninglists follow MISP's matching semantics for every match type."""

import json
import logging
from collections import Counter
from pathlib import Path

import pytest

from sync.warninglists import WarninglistError, load_warninglist, load_warninglists

LISTS = Path(__file__).parent / "data" / "warninglists"


@pytest.fixture(scope="module")
def lists():
    return load_warninglists(LISTS)


def test_cidr_list_matches_addresses_and_narrower_networks_only(lists):
    assert lists.match("ip-dst", "10.20.30.40") == "rfc1918"
    assert lists.match("ip-src", "192.168.1.0/24") == "rfc1918"
    assert lists.match("ip-dst", "10.0.0.0/7") is None
    assert lists.match("ip-dst", "8.8.8.8") is None


def test_cidr_list_matches_ipv6_case_insensitively(lists):
    assert lists.match("ip-dst", "fe80::1") == "ipv6-linklocal"
    assert lists.match("ip-dst", "2001:db8::1") is None


def test_cidr_list_tests_each_half_of_a_composite_value(lists):
    assert lists.match("domain|ip", "evil.example|192.168.5.5") == "rfc1918"
    assert lists.match("ip-dst|port", "172.16.0.9|443") == "rfc1918"


def test_cidr_list_ignores_types_outside_matching_attributes(lists):
    assert lists.match("url", "http://10.0.0.1/") is None
    assert lists.match("domain", "10.0.0.1") is None


def test_string_list_is_exact_and_case_sensitive(lists):
    assert lists.match("domain", "google.com") == "google"
    assert lists.match("domain", "mail.google.com") is None
    assert lists.match("domain", "Google.com") is None


def test_string_list_entries_with_leading_dot_never_match_a_domain(lists):
    assert lists.match("domain", "google.co.jp") is None


def test_string_list_matches_hash_half_of_filename_hash(lists):
    empty_md5 = "d41d8cd98f00b204e9800998ecf8427e"

    assert lists.match("md5", empty_md5) == "empty-hashes"
    assert lists.match("filename|md5", f"empty.txt|{empty_md5}") == "empty-hashes"
    assert lists.match("x509-fingerprint-md5", empty_md5) is None


def test_substring_list_matches_entry_anywhere_in_the_value(lists):
    assert lists.match("url", "https://app.any.run/tasks/123") == (
        "automated-malware-analysis"
    )
    assert lists.match("domain", "x.capesandbox.com.evil.test") == (
        "automated-malware-analysis"
    )


def test_hostname_list_matches_domain_and_label_aligned_subdomains(lists):
    assert lists.match("domain", "bit.ly") == "url-shortener"
    assert lists.match("hostname", "a.b.bit.ly") == "url-shortener"
    assert lists.match("domain", "notbit.ly") is None


def test_hostname_list_takes_the_host_of_a_url(lists):
    assert lists.match("url", "https://bit.ly/3abc") == "url-shortener"
    assert lists.match("url", "https://evil.test/bit.ly") is None


def test_regex_list_uses_pcre_literals_with_flags(lists):
    assert lists.match("url", "HTTPS://cdn.Example.NET/x") == "test-regex"
    assert lists.match("hostname", "sinkhole42.test") == "test-regex"
    assert lists.match("hostname", "sinkhole.test") is None
    assert lists.match("ip-dst", "sinkhole42.test") is None


def test_regex_entry_that_is_not_a_literal_is_skipped_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING):
        wl = load_warninglist(LISTS / "test-regex" / "list.json")

    assert "warninglist_regex_skipped" in caplog.text
    assert not wl.matches("not a pcre literal")


def test_counts_per_list_over_a_mixed_batch(lists):
    batch = [
        ("ip-dst", "10.1.1.1"),
        ("ip-dst", "192.168.0.1"),
        ("ip-dst", "127.0.0.1"),
        ("ip-dst", "fe80::2"),
        ("domain", "google.com"),
        ("md5", "d41d8cd98f00b204e9800998ecf8427e"),
        ("url", "http://tinyurl.com/x"),
        ("url", "https://www.hybrid-analysis.com/sample/1"),
        ("hostname", "sinkhole7.test"),
        ("ip-dst", "45.77.1.1"),
        ("domain", "evil.example"),
    ]

    counts = Counter(lists.match(t, v) for t, v in batch)

    assert counts == {
        "rfc1918": 2,
        "rfc5735": 1,
        "ipv6-linklocal": 1,
        "google": 1,
        "empty-hashes": 1,
        "url-shortener": 1,
        "automated-malware-analysis": 1,
        "test-regex": 1,
        None: 2,
    }


def test_subset_loads_only_the_named_lists():
    subset = load_warninglists(LISTS, ["google"])

    assert subset.names == ("google",)
    assert subset.match("ip-dst", "10.0.0.1") is None


def test_no_directory_means_no_lists():
    assert load_warninglists(None).names == ()


def test_unknown_list_name_is_a_config_error_naming_it():
    with pytest.raises(WarninglistError, match="unknown list nope"):
        load_warninglists(LISTS, ["nope"])


def test_list_with_unsupported_type_is_rejected_naming_the_file(tmp_path):
    path = tmp_path / "odd" / "list.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"name": "x", "type": "glob", "list": ["a"]}))

    with pytest.raises(WarninglistError, match=r"odd/list.json: type"):
        load_warninglist(path)


def test_list_given_as_object_uses_its_keys(tmp_path):
    path = tmp_path / "obj" / "list.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"type": "string", "list": {"a.test": "why"}}))

    assert load_warninglist(path).matches("a.test")


def test_checkout_layout_with_lists_subdirectory_is_accepted(tmp_path):
    target = tmp_path / "lists" / "rfc1918"
    target.mkdir(parents=True)
    target.joinpath("list.json").write_bytes(
        (LISTS / "rfc1918" / "list.json").read_bytes()
    )

    assert load_warninglists(tmp_path).match("ip-dst", "10.9.9.9") == "rfc1918"
