"""Logging for both programs: one line per occurrence on stderr, secrets masked.

journald adds timestamps, so records carry only level, logger name and a
``snake_event key=value`` message built by :func:`kv`. A filter on the stderr
handler replaces every registered secret (the MISP API key) before a record is
written, whatever logger produced it.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from urllib.parse import unquote, urlsplit

LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
MASK = "********"

# Shorter strings would mask ordinary words; a MISP key is 40 characters.
_MIN_SECRET_CHARS = 8
_secrets: tuple[str, ...] = ()
_secrets_lock = threading.Lock()
_handler: logging.Handler | None = None


def register_secret(text: str | None) -> None:
    """Mask ``text`` in every record written by the handler of setup_logging."""
    if not text or len(text) < _MIN_SECRET_CHARS:
        return
    global _secrets
    with _secrets_lock:
        # A new tuple, longest first: readers iterate without the lock.
        if text not in _secrets:
            _secrets = tuple(sorted({*_secrets, text}, key=len, reverse=True))


def redact_url(url: str) -> str:
    """``url`` fit to print: no ``user:password@``, every query value masked.

    A MISP URL may carry a password or an API key (``?key=...``); the host,
    port and path are what an operator needs to see.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return MASK
    host = parts.netloc.rpartition("@")[2]
    query = "&".join(_masked_pair(pair) for pair in parts.query.split("&") if pair)
    shown = f"{parts.scheme}://{host}" if parts.scheme else host
    shown += parts.path
    return f"{shown}?{query}" if query else shown


def _masked_pair(pair: str) -> str:
    name, equals, _ = pair.partition("=")
    return f"{name}={MASK}" if equals else MASK


def url_secrets(url: str) -> list[str]:
    """The parts of ``url`` that must never be printed: password, query values."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return [url]
    found = [parts.password or ""]
    for pair in parts.query.split("&"):
        name, equals, value = pair.partition("=")
        found.append(value if equals else name)
    return [text for text in found if text]


def register_url_secrets(url: str) -> None:
    """Register the password and query values of ``url`` (see register_secret)."""
    for text in url_secrets(url):
        register_secret(text)
        register_secret(unquote(text))


def mask_secrets(text: str) -> str:
    """Return ``text`` with every registered secret replaced by the mask."""
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


class SecretFilter(logging.Filter):
    """Rewrite a record so that no registered secret reaches the output."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not _secrets:
            return True

        # Render once, then drop the args: a secret may hide in either. A
        # record whose args do not fit its format is left to the handler's
        # own error report rather than raised into the caller.
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            return True
        record.msg = mask_secrets(message)
        record.args = None

        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask_secrets(record.exc_text)
        if record.stack_info:
            record.stack_info = mask_secrets(record.stack_info)
        return True


def setup_logging(level: str = "INFO") -> None:
    """Send all records at ``level`` and above to stderr, secrets masked.

    Calling it again replaces the handler installed by the previous call.
    """
    name = str(level).upper()
    if name not in LOG_LEVELS:
        raise ValueError(
            f"log level: unknown level (got {level!r}); expected one of "
            f"{', '.join(LOG_LEVELS)}"
        )

    global _handler
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)

    _handler = logging.StreamHandler(sys.stderr)
    _handler.setFormatter(logging.Formatter(LOG_FORMAT))
    _handler.addFilter(SecretFilter())
    root.addHandler(_handler)
    root.setLevel(name)


def kv(event: str, **fields: object) -> str:
    """Render ``event key=value ...`` as one line.

    Values with spaces, quotes, ``=`` or control characters are double-quoted
    with backslash escapes, so one occurrence always stays on one line.
    """
    parts = [event]
    for key, value in fields.items():
        parts.append(f"{key}={_render_value(value)}")
    return " ".join(parts)


def _render_value(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"

    text = str(value)
    if text and not any(_needs_quoting(char) for char in text):
        return text
    return '"' + "".join(_escape_char(char) for char in text) + '"'


def _needs_quoting(char: str) -> bool:
    return char.isspace() or char in "\"'=\\" or not char.isprintable()


_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(char: str) -> str:
    if char in _ESCAPES:
        return _ESCAPES[char]
    if char == " " or char.isprintable():
        return char
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


class RateLimited:
    """Log each event name at most once per interval; count the rest.

    The first occurrence after a quiet interval is logged with
    ``suppressed=N``, the number held back since the previous line.
    """

    def __init__(
        self,
        logger: logging.Logger,
        interval_s: float = 60,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._interval_s = interval_s
        self._clock = clock
        self._last_logged: dict[str, float] = {}
        self._pending: dict[str, int] = {}
        self._suppressed: dict[str, int] = {}
        self._lock = threading.Lock()

    def warning(self, event: str, **fields: object) -> bool:
        """Log a warning unless ``event`` was logged within the interval."""
        return self.log(logging.WARNING, event, **fields)

    def error(self, event: str, **fields: object) -> bool:
        """Log an error unless ``event`` was logged within the interval."""
        return self.log(logging.ERROR, event, **fields)

    def log(self, level: int, event: str, **fields: object) -> bool:
        """Log ``event`` at ``level``; return False when it was suppressed."""
        with self._lock:
            now = self._clock()
            last = self._last_logged.get(event)
            if last is not None and now - last < self._interval_s:
                self._pending[event] = self._pending.get(event, 0) + 1
                self._suppressed[event] = self._suppressed.get(event, 0) + 1
                return False

            self._last_logged[event] = now
            held_back = self._pending.pop(event, 0)

        if held_back:
            fields = {**fields, "suppressed": held_back}
        self._logger.log(level, kv(event, **fields))
        return True

    def suppressed_count(self, event: str | None = None) -> int:
        """Occurrences held back so far, for one event or for all of them."""
        with self._lock:
            if event is None:
                return sum(self._suppressed.values())
            return self._suppressed.get(event, 0)
