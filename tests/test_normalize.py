"""Tables of spellings and the canonical form each one must take."""

import hashlib

import pytest

from sync.normalize import (
    IndicatorValue,
    InvalidValue,
    indicators_from_misp,
    is_skipped_address,
    normalize_domain,
    normalize_hash,
    normalize_ip,
    normalize_network,
    normalize_url,
    parse_port,
    url_host,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("192.0.2.10", "192.0.2.10"),
        (" 192.0.2.10 ", "192.0.2.10"),
        ("192[.]0[.]2[.]10", "192.0.2.10"),
        ("192(.)0(.)2(.)10", "192.0.2.10"),
        ("::ffff:192.0.2.10", "192.0.2.10"),
        ("::FFFF:c000:020a", "192.0.2.10"),
        ("2001:DB8:DEAD:BEEF::1", "2001:db8:dead:beef::1"),
        ("2001:0db8:dead:beef:0000:0000:0000:0001", "2001:db8:dead:beef::1"),
        ("2001:db8:dead:beef:0:0:0:1", "2001:db8:dead:beef::1"),
        ("[2001:db8::1]", "2001:db8::1"),
        ("fe80::1%eth0", "fe80::1"),
        ("0:0:0:0:0:0:0:1", "::1"),
    ],
)
def test_normalize_ip_gives_canonical_text(text, expected):
    """Every spelling of an address gives the one canonical text."""
    assert normalize_ip(text) == expected


@pytest.mark.parametrize(
    "text", ["192.0.2.256", "192.0.2", "01.2.3.4", "evil.example", "", "1.2.3.4/24"]
)
def test_normalize_ip_rejects_non_addresses_with_bad_ip(text):
    """Text that is not exactly one address is rejected as bad_ip."""
    with pytest.raises(InvalidValue) as caught:
        normalize_ip(text)

    assert caught.value.reason == "bad_ip"
    assert str(caught.value).startswith("ip: bad ip (got ")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("203.0.113.0/25", "203.0.113.0/25"),
        ("10.1.1.1/24", "10.1.1.0/24"),
        ("192.0.2.10/32", "192.0.2.10"),
        ("2001:db8::1/128", "2001:db8::1"),
        ("2001:DB8:0:0::/32", "2001:db8::/32"),
        ("2001:db8::1/32", "2001:db8::/32"),
        ("::ffff:203.0.113.0/121", "203.0.113.0/25"),
        ("192.0.2.10", "192.0.2.10"),
        ("0.0.0.0/0", "0.0.0.0/0"),
    ],
)
def test_normalize_network_clears_host_bits_and_collapses_host_prefixes(text, expected):
    """Networks keep net/len with host bits cleared; /32 and /128 become addresses."""
    assert normalize_network(text) == expected


@pytest.mark.parametrize("text", ["10.0.0.0/33", "10.0.0.0/x", "2001:db8::/129"])
def test_normalize_network_rejects_bad_prefix(text):
    """A prefix length beyond the address size is rejected as bad_network."""
    with pytest.raises(InvalidValue) as caught:
        normalize_network(text)

    assert caught.value.reason == "bad_network"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("evil.example", "evil.example"),
        ("Evil.EXAMPLE", "evil.example"),
        ("EVIL.Example.", "evil.example"),
        ("  evil.example  ", "evil.example"),
        ("evil[.]example", "evil.example"),
        ("evil(.)example", "evil.example"),
        ("evil[dot]example", "evil.example"),
        ("evil{.}example", "evil.example"),
        ("_dmarc.evil.example", "_dmarc.evil.example"),
        ("bücher.example", "xn--bcher-kva.example"),
        ("BÜCHER.example", "xn--bcher-kva.example"),
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("a-b.c2.bad.test", "a-b.c2.bad.test"),
    ],
)
def test_normalize_domain_gives_canonical_name(text, expected):
    """Case, trailing dot, defanged dots and Unicode all reduce to one name."""
    assert normalize_domain(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "localhost",
        "192.0.2.10",
        "1.2.3.4.5",
        "evil..example",
        ".evil.example",
        "evil.example..",
        "-evil.example",
        "evil-.example",
        "ev il.example",
        "evil.example/path",
        "*.evil.example",
        "a" * 64 + ".example",
        ".".join(["abcdefgh"] * 29) + ".example",
        "",
    ],
)
def test_normalize_domain_rejects_malformed_names_with_bad_domain(text):
    """Single labels, IPs, empty or long labels and odd characters are bad_domain."""
    with pytest.raises(InvalidValue) as caught:
        normalize_domain(text)

    assert caught.value.reason == "bad_domain"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("http://c2.bad.test/gate.php", "http://c2.bad.test/gate.php"),
        ("HTTP://C2.BAD.TEST:80/gate.php", "http://c2.bad.test/gate.php"),
        ("https://DL.EXAMPLE.NET:443/files/", "https://dl.example.net/files/"),
        ("http://c2.bad.test:443/x", "http://c2.bad.test:443/x"),
        ("https://c2.bad.test:8443/x", "https://c2.bad.test:8443/x"),
        ("http://c2.bad.test/gate%2Ephp", "http://c2.bad.test/gate.php"),
        ("http://c2.bad.test/a%2fb%7E?q=%3d", "http://c2.bad.test/a%2Fb~?q=%3D"),
        ("http://c2.bad.test/Gate.PHP?Q=Ab", "http://c2.bad.test/Gate.PHP?Q=Ab"),
        ("http://c2.bad.test", "http://c2.bad.test/"),
        ("http://c2.bad.test/x#frag", "http://c2.bad.test/x"),
        ("hxxp://c2[.]bad[.]test/gate.php", "http://c2.bad.test/gate.php"),
        ("hxxps[:]//dl[.]example[.]net/files/", "https://dl.example.net/files/"),
        ("http://[2001:DB8::1]:8080/x", "http://[2001:db8::1]:8080/x"),
        ("http://[::ffff:192.0.2.10]/x", "http://192.0.2.10/x"),
        ("http://bücher.example/ä b", "http://xn--bcher-kva.example/%C3%A4%20b"),
        ("http://user:pw@c2.bad.test/", "http://user:pw@c2.bad.test/"),
        ("ftp://files.example.net/a", "ftp://files.example.net/a"),
        ("http://intranet/login", "http://intranet/login"),
    ],
)
def test_normalize_url_gives_canonical_url(text, expected):
    """Scheme/host case, default ports, fragments, escapes and refanging are unified."""
    assert normalize_url(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "/gate.php",
        "c2.bad.test/gate.php",
        "http://",
        "http:///x",
        "http://c2.bad.test:99999/",
        "http://c2.bad.test:8a/",
        "http://c2.bad.test/a\nb",
        "http://[2001:db8::1/x",
        "http://bad host/x",
    ],
)
def test_normalize_url_rejects_urls_without_scheme_or_host(text):
    """A URL without a scheme and a valid host and port is bad_url."""
    with pytest.raises(InvalidValue) as caught:
        normalize_url(text)

    assert caught.value.reason in ("bad_url", "bad_ip")


@pytest.mark.parametrize(
    ("url", "host"),
    [
        ("HTTP://C2.BAD.TEST:80/gate.php", "c2.bad.test"),
        ("http://user@[2001:DB8::1]:81/x", "2001:db8::1"),
        ("https://192.0.2.10:8443/", "192.0.2.10"),
        ("hxxp://evil[.]example./x", "evil.example"),
        ("not a url", None),
    ],
)
def test_url_host_returns_the_normalised_host(url, host):
    """The host of a URL is normalised like any domain or address."""
    assert url_host(url) == host


MD5 = "44d88612fea8a8f36de82e1278abb02f"
SHA256 = "275a021bbfb6489e54d471899f7db9d1663fc695ec2fe2a2c4538aabf651fd0f"


@pytest.mark.parametrize(
    ("text", "algorithm", "expected"),
    [
        (MD5, None, MD5),
        (MD5.upper(), None, MD5),
        (f" {MD5} ", "md5", MD5),
        (SHA256.upper(), "sha256", SHA256),
        ("ab" * 20, "sha1", "ab" * 20),
        ("ab" * 28, "sha224", "ab" * 28),
        ("ab" * 48, "sha384", "ab" * 48),
        ("ab" * 64, "sha512", "ab" * 64),
        ("ab" * 32, "SHA256", "ab" * 32),
    ],
)
def test_normalize_hash_lowercases_and_checks_length(text, algorithm, expected):
    """Hex digests come out lower case when their length fits the algorithm."""
    assert normalize_hash(text, algorithm) == expected


@pytest.mark.parametrize(
    ("text", "algorithm", "reason"),
    [
        (MD5, "sha1", "bad_hash_length"),
        (MD5 + "0", None, "bad_hash_length"),
        ("ab" * 10, None, "bad_hash_length"),
        ("zz" * 16, "md5", "bad_hash"),
        (MD5[:-1] + "g", None, "bad_hash"),
        ("", None, "bad_hash"),
        (MD5, "crc32", "unknown_hash_type"),
    ],
)
def test_normalize_hash_rejects_with_a_reason(text, algorithm, reason):
    """Non-hex, wrong lengths and unknown algorithms each get their own reason."""
    with pytest.raises(InvalidValue) as caught:
        normalize_hash(text, algorithm)

    assert caught.value.reason == reason


@pytest.mark.parametrize(
    "name", ["md5", "sha1", "sha224", "sha256", "sha384", "sha512"]
)
def test_normalize_hash_rejects_the_digest_of_empty_content(name):
    """The digest of b"" matches every empty file, so it is never an indicator."""
    digest = hashlib.new(name, b"").hexdigest()

    for spelling in (digest, digest.upper()):
        with pytest.raises(InvalidValue) as caught:
            normalize_hash(spelling)
        assert caught.value.reason == "empty_hash"
        with pytest.raises(InvalidValue):
            normalize_hash(spelling, name)


@pytest.mark.parametrize(
    ("misp_type", "value", "expected"),
    [
        ("ip-src", "192.0.2.10", [("ip", "192.0.2.10", "ip", None)]),
        ("ip-dst", "203.0.113.5/25", [("ip", "203.0.113.0/25", "cidr", None)]),
        ("ip-dst", "2001:DB8::1/128", [("ip", "2001:db8::1", "ip", None)]),
        ("ip-dst|port", "198.51.100.50|8080", [("ip", "198.51.100.50", "ip", 8080)]),
        ("ip-src|port", "198.51.100.50:22", [("ip", "198.51.100.50", "ip", 22)]),
        ("ip-dst|port", "[2001:db8::1]:443", [("ip", "2001:db8::1", "ip", 443)]),
        ("ip-dst|port", "2001:db8::1|443", [("ip", "2001:db8::1", "ip", 443)]),
        ("domain", "Evil.Example", [("domain", "evil.example", "domain", None)]),
        ("hostname", "C2.bad.test", [("domain", "c2.bad.test", "hostname", None)]),
        (
            "domain|ip",
            "evil.example|192.0.2.10",
            [
                ("domain", "evil.example", "domain", None),
                ("ip", "192.0.2.10", "ip", None),
            ],
        ),
        (
            "hostname|port",
            "c2.bad.test|8443",
            [("domain", "c2.bad.test", "hostname", 8443)],
        ),
        (
            "url",
            "HTTP://C2.bad.test:80/a",
            [("url", "http://c2.bad.test/a", "url", None)],
        ),
        ("md5", MD5.upper(), [("hash", MD5, "md5", None)]),
        ("sha256", SHA256, [("hash", SHA256, "sha256", None)]),
        (
            "filename|sha256",
            f"invoice.pdf.exe|{SHA256}",
            [("hash", SHA256, "sha256", None)],
        ),
        ("filename|md5", f"a|b.exe|{MD5}", [("hash", MD5, "md5", None)]),
        ("malware-sample", f"sample.zip|{MD5}", [("hash", MD5, "md5", None)]),
    ],
)
def test_indicators_from_misp_splits_and_normalises(misp_type, value, expected):
    """Each supported MISP type gives its normalised indicator values."""
    found = indicators_from_misp(misp_type, value)

    assert found == [IndicatorValue(*row) for row in expected]


@pytest.mark.parametrize(
    ("misp_type", "value"),
    [
        ("uri", "/gate.php"),
        ("link", "https://blog.example.net/report"),
        ("email-src", "a@evil.example"),
        ("filename", "invoice.pdf.exe"),
        ("ssdeep", "3:abc:def"),
        ("text", "anything"),
    ],
)
def test_indicators_from_misp_returns_nothing_for_unstored_types(misp_type, value):
    """Paths, links and types outside ip/domain/url/hash are not indicators."""
    assert indicators_from_misp(misp_type, value) == []


@pytest.mark.parametrize(
    ("misp_type", "value", "reason"),
    [
        ("ip-dst", "not-an-ip", "bad_ip"),
        ("ip-dst|port", "198.51.100.50|0", "bad_port"),
        ("ip-dst|port", "198.51.100.50|65536", "bad_port"),
        ("ip-dst|port", "198.51.100.50", "bad_composite"),
        ("domain|ip", "evil.example", "bad_composite"),
        ("domain|ip", "evil.example|999.1.1.1", "bad_ip"),
        ("hostname|port", "c2.bad.test|http", "bad_port"),
        ("domain", "192.0.2.10", "bad_domain"),
        ("url", "gate.php", "bad_url"),
        ("md5", "d41d8cd98f00b204e9800998ecf8427e", "empty_hash"),
        ("sha1", MD5, "bad_hash_length"),
        ("filename|sha256", SHA256, "bad_composite"),
        ("filename|sha256", f"x.exe|{MD5}", "bad_hash_length"),
    ],
)
def test_indicators_from_misp_raises_instead_of_half_normalising(
    misp_type, value, reason
):
    """A value failing its type's check raises with a reason; nothing is returned."""
    with pytest.raises(InvalidValue) as caught:
        indicators_from_misp(misp_type, value)

    assert caught.value.reason == reason
    assert "expected" in str(caught.value)


@pytest.mark.parametrize(
    ("addr", "skipped"),
    [
        ("10.1.2.3", True),
        ("172.16.0.1", True),
        ("192.168.1.1", True),
        ("127.0.0.1", True),
        ("169.254.1.1", True),
        ("100.64.0.1", True),
        ("0.0.0.0", True),
        ("224.0.0.251", True),
        ("240.0.0.1", True),
        ("255.255.255.255", True),
        ("::1", True),
        ("::", True),
        ("fe80::1", True),
        ("fd00::1", True),
        ("ff02::1", True),
        ("::ffff:10.0.0.1", True),
        ("192.0.2.10", False),
        ("198.51.100.23", False),
        ("203.0.113.77", False),
        ("2001:db8:dead:beef::1", False),
        ("8.8.8.8", False),
        ("2606:4700::1111", False),
        ("172.32.0.1", False),
        ("100.128.0.1", False),
    ],
)
def test_is_skipped_address_keeps_documentation_ranges(addr, skipped):
    """Local and reserved addresses are skipped; documentation ranges are not."""
    assert is_skipped_address(addr) is skipped


def test_fast_paths_give_the_same_result_as_the_full_path():
    """Already-canonical inputs come back unchanged and equal to the slow result."""
    samples = [
        (normalize_ip, "198.51.100.23", " 198.51.100.23"),
        (normalize_domain, "c2.bad.test", "C2.Bad.Test."),
        (normalize_hash, MD5, MD5.upper()),
    ]

    for function, canonical, other in samples:
        assert function(canonical) == canonical
        assert function(other) == canonical


LONG_DIGITS = "1" * 5000


@pytest.mark.parametrize(
    ("misp_type", "value", "reason"),
    [
        ("ip-dst|port", "1.2.3.11|\u00b2", "bad_port"),
        ("ip-dst|port", "1.2.3.11|" + LONG_DIGITS, "bad_port"),
        ("ip-dst|port", "1.2.3.11|\u0663", "bad_port"),
        ("hostname|port", "evil.example|\u00b2", "bad_port"),
        ("ip-dst", "1.2.3.0/\u00b2", "bad_network"),
        ("ip-dst", "1.2.3.0/" + LONG_DIGITS, "bad_network"),
        ("url", "http://evil.example:\u00b2/x", "bad_url"),
        ("url", "http://evil.example:" + LONG_DIGITS + "/x", "bad_url"),
        (["ip-dst"], "1.2.3.4", "bad_type"),
    ],
)
def test_odd_digits_and_types_raise_invalid_value_naming_the_reason(
    misp_type, value, reason
):
    """Unicode digits and 5,000-digit numbers are bad values, not crashes."""
    with pytest.raises(InvalidValue) as caught:
        indicators_from_misp(misp_type, value)

    assert caught.value.reason == reason
    assert len(str(caught.value)) < 300


@pytest.mark.parametrize("text", ["\u00b2", LONG_DIGITS, "0", "65536", "-1", "", None])
def test_parse_port_refuses_anything_but_a_short_ascii_port(text):
    """An alert port of '²' or 5,000 digits raises InvalidValue, never ValueError."""
    with pytest.raises(InvalidValue) as caught:
        parse_port(text, "data.srcport")

    assert caught.value.reason == "bad_port"
    assert str(caught.value).startswith("data.srcport: bad port")


def test_parse_port_reads_padded_ascii_decimals_and_ints():
    """'00443', ' 80 ' and 8080 are the ports 443, 80 and 8080."""
    assert [parse_port("00443"), parse_port(" 80 "), parse_port(8080)] == [
        443,
        80,
        8080,
    ]
