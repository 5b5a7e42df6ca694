"""Canonical forms of indicator and observable values.

The same functions run when the sync stores an indicator and when the tailer
looks an observable up, so two spellings of one value always meet. Everything
here is pure: no I/O, no logging.

Rules in short:

* Addresses: ``ipaddress`` canonical text (IPv6 compressed, lower case),
  IPv4-mapped IPv6 unwrapped to IPv4, a zone id (``%eth0``) dropped, brackets
  (``[2001:db8::1]``) and refanged dots (``1[.]2[.]3[.]4``) accepted.
* Networks: host prefixes (/32, /128) collapse to the address. A network with
  host bits set (``10.1.1.1/24``, which MISP accepts) is normalised to its
  network (``10.1.1.0/24``): that is what analysts mean by it.
* Domains: lower case, refanged, one trailing dot removed, Unicode labels to
  punycode with the stdlib ``idna`` codec (IDNA 2003: a few names that IDNA 2008
  maps differently, such as ones with ``ß``, get the 2003 form on both sides).
* URLs: refanged, scheme and host lower case, default port and fragment removed,
  percent-encoding normalised, empty path ``/``; path and query keep their case.
* Hashes: lower-case hex of the algorithm's length; hashes of empty content are
  rejected because every empty file on every host carries them.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from urllib.parse import quote, urlsplit

__all__ = [
    "CONVERTERS",
    "HASH_LENGTHS",
    "IndicatorValue",
    "InvalidValue",
    "hash_algorithm",
    "indicators_from_misp",
    "is_skipped_address",
    "normalize_domain",
    "normalize_hash",
    "normalize_ip",
    "normalize_network",
    "normalize_url",
    "parse_port",
    "url_host",
]

_MAX_SHOWN_CHARS = 80
# "00080" is a port; a longer run of digits is not.
_PORT_MAX_CHARS = 5


class InvalidValue(ValueError):
    """A value that fails the check of its type; ``reason`` is snake_case."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class IndicatorValue:
    """One normalised value taken from a MISP attribute."""

    kind: str
    value: str
    subtype: str
    port: int | None = None


def _invalid(reason: str, where: str, got: object, expected: str) -> InvalidValue:
    try:
        shown = repr(got)
    except ValueError:  # an int past the digit limit of int-to-text
        shown = f"<{type(got).__name__}>"
    if len(shown) > _MAX_SHOWN_CHARS:
        shown = shown[:_MAX_SHOWN_CHARS] + "..."
    what = reason.replace("_", " ")
    return InvalidValue(reason, f"{where}: {what} (got {shown}); expected {expected}")


# Refanging: defanged dots and schemes as analysts write them in reports.
_DEFANGED_DOT = re.compile(r"\[\.\]|\(\.\)|\{\.\}|\[dot\]|\(dot\)|\{dot\}", re.I)
_DEFANGED_SCHEME = re.compile(r"^(?:hxxp|hxtp|htxp|h\[tt\]p|meow)(s?)(?=\W)", re.I)


def _refang_dots(text: str) -> str:
    if "[" in text or "(" in text or "{" in text:
        return _DEFANGED_DOT.sub(".", text)
    return text


# ---------------------------------------------------------------- addresses

_PLAIN_IPV4 = re.compile(
    r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?:\.(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}"
)
_IP_EXPECTED = "an IPv4 or IPv6 address"


def _parse_address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    cleaned = _refang_dots(text.strip())
    if cleaned.startswith("[") and cleaned.endswith("]"):
        cleaned = cleaned[1:-1]
    cleaned = cleaned.partition("%")[0]
    try:
        address = ipaddress.ip_address(cleaned)
    except ValueError as err:
        raise _invalid("bad_ip", "ip", text, _IP_EXPECTED) from err
    if address.version == 6 and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def normalize_ip(text: str) -> str:
    """Return the canonical text of one address; raise ``InvalidValue``."""
    if _PLAIN_IPV4.fullmatch(text):
        return text
    return _normalize_ip_cached(text)


@functools.lru_cache(maxsize=65536)
def _normalize_ip_cached(text: str) -> str:
    # Parsing IPv6 text is slow and alerts repeat the same addresses.
    return _parse_address(text).compressed


def normalize_network(text: str) -> str:
    """Return an address, or ``net/len`` with host bits cleared.

    ``10.1.1.1/24`` becomes ``10.1.1.0/24`` (MISP accepts host bits; the network
    is what users mean). ``/32`` and ``/128`` collapse to the plain address.
    """
    address_text, slash, length_text = text.strip().partition("/")
    if not slash:
        return normalize_ip(text)

    address = _parse_address(address_text)
    length = _parse_prefix_len(text, length_text)
    if address_text.strip().lower().startswith("::ffff:") and address.version == 4:
        length -= 96
    try:
        network = ipaddress.ip_network(f"{address}/{length}", strict=False)
    except ValueError as err:
        raise _invalid("bad_network", "network", text, "address/prefix") from err

    if network.prefixlen == network.max_prefixlen:
        return network.network_address.compressed
    return network.compressed


def _parse_prefix_len(text: str, length_text: str) -> int:
    length = _decimal(length_text, max_chars=3)
    if length is None:
        raise _invalid("bad_network", "network", text, "address/prefix length")
    return length


def _decimal(text: str, *, max_chars: int) -> int | None:
    """The value of ASCII decimal digits, or None.

    ``str.isdigit`` accepts superscripts such as ``²`` that ``int`` refuses, and
    ``int`` refuses texts past 4300 digits: both would escape as plain
    ValueError, so only short ASCII digit runs are numbers here.
    """
    digits = text.strip()
    if not digits or len(digits) > max_chars:
        return None
    if not (digits.isascii() and digits.isdigit()):
        return None
    return int(digits)


def _network_ranges(*cidrs: str) -> tuple[tuple[int, int], ...]:
    networks = [ipaddress.ip_network(cidr) for cidr in cidrs]
    return tuple((int(n.network_address), int(n.netmask)) for n in networks)


# Addresses that never say anything about an attacker. The documentation ranges
# (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32) are left out on
# purpose: they are used in tests and examples, and ``ipaddress`` marks them
# private, which is why this list is explicit.
_SKIPPED_V4 = _network_ranges(
    "0.0.0.0/8",  # "this network", unspecified
    "10.0.0.0/8",
    "100.64.0.0/10",  # carrier-grade NAT
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",  # IETF protocol assignments
    "192.168.0.0/16",
    "198.18.0.0/15",  # benchmarking
    "224.0.0.0/4",  # multicast
    "240.0.0.0/4",  # reserved, includes the broadcast address
)
_SKIPPED_V6 = _network_ranges(
    "::/128",
    "::1/128",
    "100::/64",  # discard-only
    "2001:2::/48",  # benchmarking
    "fc00::/7",  # unique local
    "fe80::/10",  # link-local
    "fec0::/10",  # deprecated site-local
    "ff00::/8",  # multicast
)


@functools.lru_cache(maxsize=65536)
def is_skipped_address(addr: str) -> bool:
    """Tell whether an address is private, loopback, multicast or otherwise local.

    Documentation ranges are *not* skipped. Raises ``InvalidValue`` for text that
    is not an address.
    """
    address = _parse_address(addr)
    ranges = _SKIPPED_V4 if address.version == 4 else _SKIPPED_V6
    number = int(address)
    return any(number & mask == base for base, mask in ranges)


# ---------------------------------------------------------------- domains

_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_PLAIN_DOMAIN = re.compile(rf"{_LABEL}(?:\.{_LABEL})+")
_PLAIN_HOST = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_MAX_DOMAIN_CHARS = 253
_DOMAIN_EXPECTED = "dotted name of letters, digits, '-', '_' (labels <= 63 chars)"


def normalize_domain(text: str) -> str:
    """Return the canonical domain or host name; raise ``InvalidValue``.

    The name must contain a dot and its last label must not be all digits, so an
    IPv4 address is never taken for a domain.
    """
    if _PLAIN_DOMAIN.fullmatch(text) and _is_plausible_name(text):
        return text
    name = _clean_name(text, where="domain")
    if not (_PLAIN_DOMAIN.fullmatch(name) and _is_plausible_name(name)):
        raise _invalid("bad_domain", "domain", text, _DOMAIN_EXPECTED)
    return name


def _is_plausible_name(name: str) -> bool:
    return len(name) <= _MAX_DOMAIN_CHARS and not name.rpartition(".")[2].isdigit()


def _clean_name(text: str, *, where: str) -> str:
    name = _refang_dots(text.strip()).lower()
    if name.endswith("."):
        name = name[:-1]
    if name.isascii():
        return name
    try:
        return name.encode("idna").decode("ascii")
    except UnicodeError as err:
        raise _invalid(
            "bad_idn", where, text, "a valid internationalised name"
        ) from err


def _normalize_url_host(text: str, url: str) -> str:
    """Return a URL host: an address, or a name (a single label is allowed)."""
    if text.startswith("["):
        if not text.endswith("]"):
            raise _invalid("bad_url", "url", url, "a closing ']' after an IPv6 host")
        return _parse_address(text).compressed
    if _PLAIN_IPV4.fullmatch(text):
        return text
    name = _clean_name(text, where="url")
    if not _PLAIN_HOST.fullmatch(name) or len(name) > _MAX_DOMAIN_CHARS:
        raise _invalid("bad_url", "url", url, "a host name or address")
    return name


# ---------------------------------------------------------------- URLs

_SCHEME = re.compile(r"[a-z][a-z0-9+.-]*")
_DEFAULT_PORTS = {"http": "80", "https": "443"}
_PERCENT_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_UNRESERVED = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"
)
# Everything printable in ASCII stays; spaces, controls and non-ASCII are escaped.
_URL_SAFE_CHARS = "!#$%&'()*+,/:;=?@[]~"
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")


# A URL that is canonical already, but for a missing "/" path: no port, user,
# query, fragment, escape, bracket or upper-case host, so the full rules below
# would return it unchanged (plus "/").
_CANONICAL_URL = re.compile(
    rf"https?://{_LABEL}(?:\.{_LABEL})*(/[A-Za-z0-9\-._~/!$&'*+,;=:@]*)?"
)


def normalize_url(text: str) -> str:
    """Return the canonical URL; raise ``InvalidValue``.

    A URL needs a scheme and a host. ``http://c2.test:80/a%2Ephp#x`` becomes
    ``http://c2.test/a.php``.
    """
    if len(text) <= _MAX_DOMAIN_CHARS:
        canonical = _CANONICAL_URL.fullmatch(text)
        if canonical is not None:
            return text if canonical.group(1) else text + "/"
    return _normalize_url_cached(text)


@functools.lru_cache(maxsize=16384)
def _normalize_url_cached(text: str) -> str:
    cleaned = _refang_url(text.strip())
    if _CONTROL_CHARS.search(cleaned):
        raise _invalid("bad_url", "url", text, "no control characters")
    try:
        parts = urlsplit(cleaned)
    except ValueError as err:
        raise _invalid("bad_url", "url", text, "scheme://host[/path]") from err

    scheme = parts.scheme.lower()
    if not _SCHEME.fullmatch(scheme) or not parts.netloc:
        raise _invalid("bad_url", "url", text, "scheme://host[/path]")
    netloc = _normalize_netloc(parts.netloc, scheme, text)

    path = _normalize_percent(parts.path) or "/"
    query = _normalize_percent(parts.query)
    return f"{scheme}://{netloc}{path}" + (f"?{query}" if query else "")


def _refang_url(text: str) -> str:
    text = _DEFANGED_SCHEME.sub(r"http\1", text)
    return _refang_dots(text.replace("[:]", ":").replace("[://]", "://"))


def _normalize_netloc(netloc: str, scheme: str, url: str) -> str:
    userinfo, at, hostport = netloc.rpartition("@")
    host, port = _split_host_port(hostport, url)
    host = _normalize_url_host(host, url)
    if ":" in host:
        host = f"[{host}]"
    if not port:
        return f"{userinfo}{at}{host}"
    number = _decimal(port, max_chars=_PORT_MAX_CHARS)
    if number is None or number > 65535:
        raise _invalid("bad_url", "url", url, "a port of 0-65535")
    if str(number) != _DEFAULT_PORTS.get(scheme):
        host = f"{host}:{number}"
    return f"{userinfo}{at}{host}"


def _split_host_port(hostport: str, url: str) -> tuple[str, str]:
    if hostport.startswith("["):
        host, bracket, rest = hostport.partition("]")
        return host + bracket, rest.removeprefix(":")
    host, _, port = hostport.partition(":")
    if not host:
        raise _invalid("bad_url", "url", url, "scheme://host[/path]")
    return host, port


def _normalize_percent(text: str) -> str:
    if not text:
        return text
    if not text.isascii() or " " in text:
        text = quote(text, safe=_URL_SAFE_CHARS)
    if "%" not in text:
        return text
    return _PERCENT_ESCAPE.sub(_normalize_escape, text)


def _normalize_escape(escape: re.Match[str]) -> str:
    char = chr(int(escape.group(1), 16))
    if char in _UNRESERVED:
        return char
    return escape.group(0).upper()


def url_host(url: str) -> str | None:
    """Return the normalised host (name or address) of a URL, or None."""
    try:
        netloc = normalize_url(url).split("://", 1)[1].split("/", 1)[0]
    except InvalidValue:
        return None
    hostport = netloc.rpartition("@")[2]
    if hostport.startswith("["):
        return hostport[1:].partition("]")[0]
    return hostport.partition(":")[0]


# ---------------------------------------------------------------- hashes

HASH_LENGTHS = {
    "md5": 32,
    "sha1": 40,
    "sha224": 56,
    "sha256": 64,
    "sha384": 96,
    "sha512": 128,
    "sha512/224": 56,
    "sha512/256": 64,
    "sha3-224": 56,
    "sha3-256": 64,
    "sha3-384": 96,
    "sha3-512": 128,
}
_ALGORITHM_BY_LENGTH = {32: "md5", 40: "sha1", 56: "sha224", 64: "sha256"}
_ALGORITHM_BY_LENGTH |= {96: "sha384", 128: "sha512"}
_HASHLIB_NAMES = {"sha512/224": "sha512_224", "sha512/256": "sha512_256"}
_HASHLIB_NAMES |= {f"sha3-{n}": f"sha3_{n}" for n in (224, 256, 384, 512)}
_LOWER_HEX = re.compile(r"[0-9a-f]+")


def _empty_content_hashes() -> frozenset[str]:
    names = [_HASHLIB_NAMES.get(name, name) for name in HASH_LENGTHS]
    return frozenset(hashlib.new(name, b"").hexdigest() for name in names)


_EMPTY_HASHES = _empty_content_hashes()


def hash_algorithm(value: str) -> str | None:
    """Return the usual algorithm for a hex digest of this length, or None."""
    return _ALGORITHM_BY_LENGTH.get(len(value))


def normalize_hash(text: str, algorithm: str | None = None) -> str:
    """Return a lower-case hex digest; raise ``InvalidValue``.

    Without an algorithm the length must be one of md5 to sha512. The digests of
    empty content are rejected with reason ``empty_hash``.
    """
    return _normalize_hash_cached(text, algorithm)


@functools.lru_cache(maxsize=16384)
def _normalize_hash_cached(text: str, algorithm: str | None) -> str:
    # Alerts repeat the same digests (a file checked on many hosts); a failing
    # value raises and is not cached.
    expected_len = _expected_hash_len(text, algorithm)
    value = text
    if not _LOWER_HEX.fullmatch(value):
        value = text.strip().lower()
        if not _LOWER_HEX.fullmatch(value):
            raise _invalid("bad_hash", "hash", text, "hexadecimal digits")

    if expected_len:
        length_ok = len(value) == expected_len
    else:
        length_ok = hash_algorithm(value) is not None
    if not length_ok:
        raise _invalid("bad_hash_length", "hash", text, _length_rule(algorithm))
    if value in _EMPTY_HASHES:
        raise _invalid("empty_hash", "hash", text, "the digest of non-empty content")
    return value


def _expected_hash_len(text: str, algorithm: str | None) -> int:
    if algorithm is None:
        return 0
    length = HASH_LENGTHS.get(algorithm.lower())
    if length is None:
        expected = "one of " + ", ".join(HASH_LENGTHS)
        raise _invalid("unknown_hash_type", "hash", algorithm, expected)
    return length


def _length_rule(algorithm: str | None) -> str:
    if algorithm is None:
        return "32, 40, 56, 64, 96 or 128 hex digits"
    return f"{HASH_LENGTHS[algorithm.lower()]} hex digits for {algorithm}"


# ---------------------------------------------------------------- MISP types


def parse_port(text: object, where: str = "port") -> int:
    """A port of 1-65535 from its ASCII decimal text; raise ``InvalidValue``."""
    number = None
    if isinstance(text, str):
        number = _decimal(text, max_chars=_PORT_MAX_CHARS)
    elif isinstance(text, int) and not isinstance(text, bool):
        number = text
    if number is None or not 1 <= number <= 65535:
        raise _invalid("bad_port", where, text, "a port of 1-65535")
    return number


def _port(text: str, value: str) -> int:
    try:
        return parse_port(text)
    except InvalidValue:
        raise _invalid("bad_port", "port", value, "a port of 1-65535") from None


def _split_ip_port(value: str) -> tuple[str, int]:
    text = value.strip()
    if "|" in text:
        address, _, port = text.rpartition("|")
    elif text.startswith("["):
        address, _, port = text[1:].partition("]:")
    elif text.count(":") == 1:
        address, _, port = text.partition(":")
    else:
        raise _invalid("bad_composite", "ip|port", value, "address|port")
    return normalize_ip(address), _port(port, value)


def _split_composite(value: str, misp_type: str) -> tuple[str, str]:
    left, bar, right = value.partition("|")
    if not bar or "|" in right:
        raise _invalid("bad_composite", misp_type, value, "two parts separated by |")
    return left, right


def _from_ip(value: str) -> list[IndicatorValue]:
    network = normalize_network(value)
    return [IndicatorValue("ip", network, "cidr" if "/" in network else "ip")]


def _from_ip_port(value: str) -> list[IndicatorValue]:
    address, port = _split_ip_port(value)
    return [IndicatorValue("ip", address, "ip", port)]


def _from_domain(value: str) -> list[IndicatorValue]:
    return [IndicatorValue("domain", normalize_domain(value), "domain")]


def _from_hostname(value: str) -> list[IndicatorValue]:
    return [IndicatorValue("domain", normalize_domain(value), "hostname")]


def _from_domain_ip(value: str) -> list[IndicatorValue]:
    domain, address = _split_composite(value, "domain|ip")
    domain_value = IndicatorValue("domain", normalize_domain(domain), "domain")
    return [domain_value, IndicatorValue("ip", normalize_ip(address), "ip")]


def _from_hostname_port(value: str) -> list[IndicatorValue]:
    text = value.strip()
    separator = "|" if "|" in text else ":"
    name, _, port = text.rpartition(separator)
    hostname = normalize_domain(name)
    return [IndicatorValue("domain", hostname, "hostname", _port(port, value))]


def _from_url(value: str) -> list[IndicatorValue]:
    return [IndicatorValue("url", normalize_url(value), "url")]


def _from_hash(algorithm: str) -> Callable[[str], list[IndicatorValue]]:
    length = HASH_LENGTHS[algorithm]

    def convert(value: str) -> list[IndicatorValue]:
        # A digest as MISP usually stores it needs none of the rules.
        if not (
            len(value) == length
            and _LOWER_HEX.fullmatch(value)
            and value not in _EMPTY_HASHES
        ):
            value = normalize_hash(value, algorithm)
        return [IndicatorValue("hash", value, algorithm)]

    return convert


def _from_filename_hash(algorithm: str) -> Callable[[str], list[IndicatorValue]]:
    def convert(value: str) -> list[IndicatorValue]:
        _, bar, digest = value.rpartition("|")
        if not bar:
            expected = f"filename|{algorithm}"
            raise _invalid("bad_composite", f"filename|{algorithm}", value, expected)
        return [IndicatorValue("hash", normalize_hash(digest, algorithm), algorithm)]

    return convert


_CONVERTERS: dict[str, Callable[[str], list[IndicatorValue]]] = {
    "ip-src": _from_ip,
    "ip-dst": _from_ip,
    "ip-src|port": _from_ip_port,
    "ip-dst|port": _from_ip_port,
    "domain": _from_domain,
    "hostname": _from_hostname,
    "domain|ip": _from_domain_ip,
    "hostname|port": _from_hostname_port,
    "url": _from_url,
    "malware-sample": _from_filename_hash("md5"),
}
_CONVERTERS |= {name: _from_hash(name) for name in HASH_LENGTHS}
_CONVERTERS |= {f"filename|{name}": _from_filename_hash(name) for name in HASH_LENGTHS}

SUPPORTED_MISP_TYPES = frozenset(_CONVERTERS)
# MISP type -> converter of a str value, for callers that checked both already.
CONVERTERS: Mapping[str, Callable[[str], list[IndicatorValue]]] = MappingProxyType(
    _CONVERTERS
)


def indicators_from_misp(misp_type: str, value: str) -> list[IndicatorValue]:
    """Split and normalise one MISP attribute value into indicator values.

    Returns ``[]`` for types that are not stored (``uri`` is a bare path and
    ``link`` a reference, neither is an indicator). Raises ``InvalidValue`` when
    the value fails its type's check; never returns a half-normalised value.
    """
    if not isinstance(misp_type, str):
        raise _invalid("bad_type", "type", misp_type, "a MISP type name")
    convert = _CONVERTERS.get(misp_type)
    if convert is None:
        return []
    if not isinstance(value, str):
        raise _invalid("bad_value", misp_type, value, "a string")
    return convert(value)
