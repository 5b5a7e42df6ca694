"""One-line key=value logging, secret masking and rate limiting."""

from __future__ import annotations

import logging

import pytest

from sync.logs import (
    RateLimited,
    SecretFilter,
    kv,
    mask_secrets,
    redact_url,
    register_secret,
    register_url_secrets,
    setup_logging,
)

SECRET = "Sx9fK2pLq8Vw3Nz7Rt1Yb5Hc4Jd6Gm0EaUoIiQe"


class FakeClock:
    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


def test_kv_renders_plain_values_unquoted() -> None:
    """Simple values appear as written, booleans lower case, None as a dash."""
    line = kv("rotation_detected", path="/var/a.json", inode=42, ok=True, why=None)

    assert line == "rotation_detected path=/var/a.json inode=42 ok=true why=-"


def test_kv_quotes_spaces_quotes_and_equals() -> None:
    """Values with blanks, quotes or '=' are double-quoted with escapes."""
    line = kv("x", a="two words", b='say "hi"', c="k=v", d="", e="it's")

    assert line == 'x a="two words" b="say \\"hi\\"" c="k=v" d="" e="it\'s"'


def test_kv_keeps_one_occurrence_on_one_line() -> None:
    """Newlines, tabs and control characters are escaped, never written raw."""
    line = kv("bad_line", text="first\nsecond\r\tthird\x00\u2028")

    assert "\n" not in line and "\r" not in line and "\x00" not in line
    assert line == 'bad_line text="first\\nsecond\\r\\tthird\\x00\\u2028"'


def test_setup_logging_writes_level_name_and_message_to_stderr(
    capsys: pytest.CaptureFixture, restore_logging: None
) -> None:
    """The format is 'LEVEL logger: message' without a timestamp."""
    setup_logging("INFO")

    logging.getLogger("sync.probe").info(kv("stats", lines=3))
    logging.getLogger("sync.probe").debug("not shown at INFO")

    assert capsys.readouterr().err == "INFO sync.probe: stats lines=3\n"


def test_setup_logging_twice_does_not_duplicate_lines(
    capsys: pytest.CaptureFixture, restore_logging: None
) -> None:
    """A second call replaces the handler instead of adding one."""
    setup_logging("INFO")
    setup_logging("debug")

    logging.getLogger("sync.probe").debug("once")

    assert capsys.readouterr().err == "DEBUG sync.probe: once\n"


def test_setup_logging_rejects_unknown_level(restore_logging: None) -> None:
    """An unknown level name is an error that lists the valid ones."""
    with pytest.raises(ValueError, match="expected one of DEBUG, INFO"):
        setup_logging("LOUD")


def test_registered_secret_is_masked_in_message_args_and_traceback(
    capsys: pytest.CaptureFixture, restore_logging: None
) -> None:
    """The key never reaches stderr, whether in the text, an arg or an exception."""
    setup_logging("DEBUG")
    register_secret(SECRET)
    probe = logging.getLogger("sync.probe")

    probe.debug(f"header Authorization: {SECRET}")
    probe.info("request_sent key=%s", SECRET)
    try:
        raise RuntimeError(f"server echoed {SECRET}")
    except RuntimeError:
        probe.exception("fetch_failed")

    err = capsys.readouterr().err
    assert SECRET not in err
    assert err.count("********") == 3
    assert "RuntimeError: server echoed ********" in err


def test_filter_leaves_record_with_mismatched_args_to_logging() -> None:
    """A broken log call does not raise from the mask filter into the caller."""
    register_secret(SECRET)
    record = logging.LogRecord(
        "sync.probe", logging.INFO, __file__, 1, "two %s %s", ("one",), None
    )

    kept = SecretFilter().filter(record)

    assert kept is True
    assert record.args == ("one",)


def test_short_strings_are_not_registered_as_secrets() -> None:
    """A very short value would mask ordinary words, so it is ignored."""
    register_secret("abc")
    register_secret("")
    register_secret(None)

    assert mask_secrets("abc is fine") == "abc is fine"


def test_rate_limited_logs_once_per_interval_and_counts_the_rest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Repeats inside the interval are counted; the next line carries the count."""
    clock = FakeClock()
    limited = RateLimited(logging.getLogger("sync.probe"), 60, clock=clock)

    logged = [limited.warning("bad_line", offset=n) for n in range(5)]
    other = limited.warning("other_event")
    clock.now_s += 61
    again = limited.warning("bad_line", offset=99)

    assert logged == [True, False, False, False, False]
    assert other is True
    assert again is True
    assert [record.getMessage() for record in caplog.records] == [
        "bad_line offset=0",
        "other_event",
        "bad_line offset=99 suppressed=4",
    ]
    assert limited.suppressed_count("bad_line") == 4
    assert limited.suppressed_count() == 4


def test_rate_limited_error_logs_at_error_level(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """error() shares the limiter and logs at ERROR."""
    limited = RateLimited(logging.getLogger("sync.probe"), 60, clock=FakeClock())

    limited.error("store_locked", path="/var/ioc/ips.db")
    limited.error("store_locked", path="/var/ioc/ips.db")

    assert [record.levelname for record in caplog.records] == ["ERROR"]
    assert limited.suppressed_count("store_locked") == 1


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://misp.example:8443/", "https://misp.example:8443/"),
        ("https://admin:Pa55-word-x@misp.example/", "https://misp.example/"),
        (
            "https://misp.example/base?key=" + SECRET + "&x",
            "https://misp.example/base?key=********&********",
        ),
        ("https://u:p@[2001:db8::1]:443/m#frag", "https://[2001:db8::1]:443/m"),
    ],
)
def test_redact_url_drops_userinfo_and_masks_query_values(url, shown) -> None:
    """Host, port and path stay readable; credentials never do."""
    assert redact_url(url) == shown


def test_url_password_and_query_key_are_masked_once_registered(
    capsys: pytest.CaptureFixture, restore_logging: None
) -> None:
    """A password or key taken from the MISP URL is masked in any record."""
    setup_logging("DEBUG")
    register_url_secrets("https://admin:Pa55-w%40rd-x@misp.example/?apikey=" + SECRET)
    probe = logging.getLogger("sync.probe")

    probe.warning("echo %s %s %s", "Pa55-w@rd-x", "Pa55-w%40rd-x", SECRET)

    err = capsys.readouterr().err
    assert "Pa55" not in err
    assert SECRET not in err
    assert err.count("********") == 3
