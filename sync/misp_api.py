"""The MISP REST client: pages of ``POST /attributes/restSearch``, retried.

MISP applies no ORDER BY unless asked, so LIMIT/OFFSET pages of an unordered
search may overlap or skip rows. The client therefore always sends
``order: "Attribute.id asc"`` and pages until MISP answers an *empty* page: a
short page is not the end, because ``enforceWarninglist`` drops rows after the
page was cut.

Transient failures (connection errors, timeouts, cut or invalid bodies, HTTP 429
and 5xx) are retried with exponential back-off and full jitter, honouring
``Retry-After``. The API key goes only into the ``Authorization`` header; it is
masked in ``repr`` and scrubbed from every message this module builds.
"""

from __future__ import annotations

import contextlib
import logging
import random
import re
import time
import warnings
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import orjson
import requests
from urllib3.exceptions import InsecureRequestWarning

from sync import __version__
from sync.config import Secret
from sync.logs import MASK, redact_url, register_url_secrets, url_secrets

logger = logging.getLogger(__name__)

RESTSEARCH_PATH = "/attributes/restSearch"
EVENTS_PATH = "/events/restSearch"
DEFAULT_USER_AGENT = f"wazuh-misp-ioc/{__version__}"
PAGE_ORDER = "Attribute.id asc"
CLIENT_PARAMS = ("returnFormat", "order", "limit", "page")
KEY_PATTERN = re.compile(r"[A-Za-z0-9]{40}")
READ_CHUNK_BYTES = 1 << 20
CAUSE_MAX_CHARS = 300
# Longer header numbers are garbage (a day of Retry-After has 5 digits).
HEADER_NUMBER_MAX_CHARS = 12
NOT_RETRYABLE = (
    requests.exceptions.InvalidURL,
    requests.exceptions.InvalidSchema,
    requests.exceptions.MissingSchema,
    requests.exceptions.InvalidHeader,
)


class MispError(Exception):
    """Base of the errors this client raises."""


class MispAuthError(MispError):
    """MISP refused the API key (HTTP 401/403) or the key cannot be one."""


class MispResponseError(MispError):
    """MISP answered, but not with what a restSearch page must look like."""


class MispUnavailable(MispError):
    """MISP could not be reached or kept failing after every retry."""


class MispTlsError(MispUnavailable):
    """The server certificate did not verify; retrying would not help."""


class _Retryable(Exception):
    def __init__(self, cause: str, retry_after_s: float | None = None) -> None:
        super().__init__(cause)
        self.cause = cause
        self.retry_after_s = retry_after_s


class _KeyAuth(requests.auth.AuthBase):
    """Puts the key into ``Authorization``; also stops requests reading .netrc."""

    def __init__(self, secret: Secret) -> None:
        self._secret = secret

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = self._secret.reveal()
        return request

    def __repr__(self) -> str:
        return f"_KeyAuth({MASK})"


class MispClient:
    """Fetches MISP attributes page by page.

    ``incomplete`` is ``None`` only once MISP answered an empty page (every
    attribute was seen). Otherwise it names why the pull is not whole:
    ``"max_pages"`` when the page limit cut it, ``"not_finished"`` while pages
    are still coming or when the caller stopped early or an error ended it. A
    caller must not treat an incomplete pull as the full set (for example to
    delete what it did not see).
    ``pages_count``, ``rows_count`` and ``skipped_count`` (rows MISP dropped on
    warninglists, from ``X-Skipped-Elements-Count``) describe the last pull.
    """

    def __init__(
        self,
        url: str,
        api_key: Secret | str,
        *,
        verify_tls: bool = True,
        ca_bundle: str | None = None,
        suppress_tls_warning: bool = False,
        connect_timeout_s: float = 10,
        read_timeout_s: float = 120,
        retries: int = 5,
        page_size: int = 500,
        user_agent: str = DEFAULT_USER_AGENT,
        backoff_base_s: float = 1.0,
        backoff_max_s: float = 60.0,
        retry_after_max_s: float = 300.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._secret = api_key if isinstance(api_key, Secret) else Secret(api_key)
        _check_key_shape(self._secret)
        self.url = url.rstrip("/")
        # Printed in place of the URL, which may carry a password or a key.
        self.shown_url = redact_url(self.url)
        self._url_secrets = url_secrets(self.url)
        register_url_secrets(self.url)
        self.verify_tls = verify_tls
        self.suppress_tls_warning = suppress_tls_warning
        self.timeout_s = (connect_timeout_s, read_timeout_s)
        self.retries = retries
        self.page_size = page_size
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.retry_after_max_s = retry_after_max_s
        self._sleep = sleep
        self._session = _build_session(self._secret, user_agent)
        # Passed with every request: requests lets REQUESTS_CA_BUNDLE override a
        # session-level setting, which would turn verification back on or swap
        # the configured bundle.
        self._verify: bool | str = (ca_bundle or True) if verify_tls else False
        self._reset_counts()

    @classmethod
    def from_config(cls, misp: Any, **options: Any) -> MispClient:
        """A client for the ``misp`` section of :class:`sync.config.Config`."""
        return cls(
            misp.url,
            misp.api_key,
            verify_tls=misp.verify_tls,
            ca_bundle=misp.ca_bundle,
            suppress_tls_warning=misp.suppress_tls_warning,
            connect_timeout_s=misp.connect_timeout_s,
            read_timeout_s=misp.read_timeout_s,
            retries=misp.retries,
            page_size=misp.page_size,
            **options,
        )

    def __repr__(self) -> str:
        return (
            f"MispClient(url={self.shown_url!r}, api_key={MASK!r}, "
            f"verify_tls={self.verify_tls}, page_size={self.page_size})"
        )

    def __enter__(self) -> MispClient:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def close(self) -> None:
        self._session.close()

    def _reset_counts(self) -> None:
        self.incomplete: str | None = None
        self.pages_count = 0
        self.rows_count = 0
        self.skipped_count = 0

    # -- paging

    def iter_attribute_pages(
        self, filters: dict[str, Any], *, max_pages: int = 0
    ) -> Iterator[list[dict[str, Any]]]:
        """Yield each non-empty page of attributes matching ``filters``.

        Stops at the first empty page (then ``incomplete`` is ``None``), or
        after ``max_pages`` pages (0: no limit) with ``incomplete = "max_pages"``.
        Each page is fetched with up to ``retries`` retries after the first try.
        """
        _check_filters(filters)
        self._reset_counts()
        # Until MISP answers an empty page, the pull is not known to be whole.
        self.incomplete = "not_finished"
        page = 1
        while True:
            if max_pages and page > max_pages:
                self.incomplete = "max_pages"
                logger.warning(
                    "misp_pull_incomplete reason=max_pages pages=%d rows=%d",
                    self.pages_count,
                    self.rows_count,
                )
                return
            rows = self.fetch_attribute_page(filters, page)
            if not rows:
                self.incomplete = None
                return
            self.pages_count += 1
            self.rows_count += len(rows)
            yield rows
            page += 1

    def fetch_attribute_page(
        self, filters: dict[str, Any], page: int
    ) -> list[dict[str, Any]]:
        """One page (1-based) of ``filters`` in id order, with retries."""
        body = {
            **filters,
            "returnFormat": "json",
            "order": PAGE_ORDER,
            "limit": self.page_size,
            "page": page,
        }
        where = f"MISP {RESTSEARCH_PATH} page {page}"
        return self._fetch(
            RESTSEARCH_PATH, body, (where, f"page={page}"), _attributes_of
        )

    def fetch_event_metadata(self, event_ids: list[str]) -> list[dict[str, Any]]:
        """The ``Event`` objects (without attributes) of ``event_ids``, retried.

        An event MISP does not return (deleted, or not visible to this key) is
        simply absent from the list.
        """
        if not event_ids:
            return []
        body = {"returnFormat": "json", "metadata": 1, "eventid": list(event_ids)}
        where = f"MISP {EVENTS_PATH} ({len(event_ids)} events)"
        label = f"path={EVENTS_PATH} events={len(event_ids)}"
        return self._fetch(EVENTS_PATH, body, (where, label), _events_of)

    def _fetch(
        self, path: str, filters: dict[str, Any], names: tuple, extract: Callable
    ) -> list[dict[str, Any]]:
        """POST ``filters`` with retries; ``names`` = (message prefix, log label)."""
        where, label = names
        body = orjson.dumps(filters)
        attempts = self.retries + 1
        cause = ""
        for attempt in range(1, attempts + 1):
            try:
                return self._post(path, body, names, extract, attempt)
            except _Retryable as err:
                cause = self._scrub(err.cause)
                if attempt == attempts:
                    break
                self._wait_before_retry(label, attempt, cause, err.retry_after_s)
        raise MispUnavailable(
            f"{where}: gave up after {attempts} attempts "
            f"(last cause: {cause}); expected an HTTP 200 with a complete JSON body"
        )

    def _wait_before_retry(
        self, label: str, attempt: int, cause: str, retry_after_s: float | None
    ) -> None:
        if retry_after_s is not None:
            wait_s = min(retry_after_s, self.retry_after_max_s)
        else:
            ceiling_s = min(
                self.backoff_max_s, self.backoff_base_s * 2 ** (attempt - 1)
            )
            wait_s = random.uniform(0, ceiling_s)
        logger.warning(
            "misp_retry %s attempt=%d cause=%s wait_s=%.2f",
            label,
            attempt,
            _quote(cause),
            wait_s,
        )
        self._sleep(wait_s)

    # -- one HTTP exchange

    def _post(
        self, path: str, body: bytes, names: tuple, extract: Callable, attempt: int
    ) -> list[dict]:
        where, label = names
        started = time.monotonic()
        status: int | str = "none"
        rows: list[dict] | None = None
        try:
            response = self._send(path, body)
            status = response.status_code
            with contextlib.closing(response):
                self._check_status(response, where)
                content = _read_all(response)
            rows = extract(_parse_body(content, response.headers, where), where)
            self.skipped_count += _skipped_count(response.headers)
            return rows
        finally:
            elapsed_ms = int((time.monotonic() - started) * 1000)
            logger.debug(
                "misp_request %s attempt=%d status=%s rows=%s elapsed_ms=%d",
                label,
                attempt,
                status,
                "none" if rows is None else len(rows),
                elapsed_ms,
            )

    def _send(self, path: str, body: bytes) -> requests.Response:
        try:
            with self._tls_warning_filter():
                return self._session.post(
                    self.url + path,
                    data=body,
                    timeout=self.timeout_s,
                    verify=self._verify,
                    stream=True,
                    allow_redirects=False,
                )
        except requests.exceptions.SSLError as err:
            if "CERTIFICATE_VERIFY_FAILED" in str(err):
                raise MispTlsError(self._scrub(self._tls_message(err))) from None
            raise _Retryable(_describe(err)) from None
        except NOT_RETRYABLE as err:
            raise MispUnavailable(
                f"MISP {self.shown_url}: cannot send the request "
                f"({self._scrub(_describe(err))}); expected an http(s) base URL"
            ) from None
        except requests.RequestException as err:
            raise _Retryable(_describe(err)) from None

    def _tls_message(self, err: Exception) -> str:
        reason = re.search(r"certificate verify failed: ([^()'\"]+)", str(err))
        return (
            f"MISP {self.shown_url}: TLS certificate verification failed "
            f"({reason.group(1).strip() if reason else 'unknown reason'}); expected "
            "a certificate trusted by the system store or misp.ca_bundle"
        )

    @contextlib.contextmanager
    def _tls_warning_filter(self) -> Iterator[None]:
        with warnings.catch_warnings():
            if self._verify is False and self.suppress_tls_warning:
                warnings.simplefilter("ignore", InsecureRequestWarning)
            yield

    def _check_status(self, response: requests.Response, where: str) -> None:
        status = response.status_code
        if 200 <= status < 300:
            return
        message = self._scrub(_error_message(response))
        if status in (401, 403):
            raise MispAuthError(f"MISP refused the API key (HTTP {status}): {message}")
        if status == 429 or status >= 500:
            retry_after_s = _retry_after_s(response.headers.get("Retry-After"))
            raise _Retryable(f"HTTP {status}: {message}", retry_after_s)
        if 300 <= status < 400:
            location = response.headers.get("Location", "")
            raise MispResponseError(
                f"{where}: redirected (HTTP {status} to "
                f"{redact_url(location)}); expected misp.url to be the final address"
            )
        raise MispResponseError(f"{where}: HTTP {status}: {message}; expected HTTP 200")

    def _scrub(self, text: str) -> str:
        """Mask the key and URL credentials, then shorten: never the reverse.

        Shortening first could cut an echoed key and leave a fragment that
        no longer matches the whole key.
        """
        for secret in (self._secret.reveal(), *self._url_secrets):
            if secret:
                text = text.replace(secret, MASK)
        return _shorten(text)


def _check_key_shape(secret: Secret) -> None:
    if not KEY_PATTERN.fullmatch(secret.reveal() or ""):
        length = len(secret.reveal() or "")
        raise MispAuthError(
            f"misp.api_key: not a MISP API key (got {length} characters); "
            "expected 40 letters and digits"
        )


def _check_filters(filters: dict[str, Any]) -> None:
    for name in CLIENT_PARAMS:
        if name in filters:
            raise ValueError(
                f"misp filters: {name!r} is set by the client "
                f"(got {filters[name]!r}); expected it absent"
            )


def _build_session(secret: Secret, user_agent: str) -> requests.Session:
    session = requests.Session()
    session.auth = _KeyAuth(secret)
    session.headers.update(
        {
            "User-Agent": user_agent,
            "Accept": "application/json",
            "Content-Type": "application/json",
        }
    )
    return session


def _read_all(response: requests.Response) -> bytes:
    """The whole body; a cut connection or a read timeout is retryable."""
    try:
        return b"".join(response.iter_content(chunk_size=READ_CHUNK_BYTES))
    except requests.RequestException as err:
        raise _Retryable(_describe(err)) from None


def _parse_body(content: bytes, headers: Any, where: str) -> Any:
    content_type = headers.get("Content-Type", "")
    if content[:1] == b"<" and "json" not in content_type:
        raise MispResponseError(
            f"{where}: answer is not JSON (got Content-Type {content_type!r}); "
            "expected application/json from the MISP base URL"
        )
    try:
        return orjson.loads(content)
    except orjson.JSONDecodeError as err:
        raise _Retryable(f"invalid JSON body of {len(content)} bytes ({err})") from None


def _attributes_of(document: Any, where: str) -> list[dict]:
    expected = 'expected {"response": {"Attribute": [...]}}'
    response = document.get("response") if isinstance(document, dict) else None
    if response == []:
        # Some MISP stand-ins answer the page past the end this way.
        return []
    if not isinstance(response, dict):
        got = type(response).__name__ if response is not None else "no 'response'"
        raise MispResponseError(f"{where}: bad framing (got {got}); {expected}")
    attributes = response.get("Attribute")
    if not isinstance(attributes, list):
        got = type(attributes).__name__
        raise MispResponseError(
            f"{where}: response.Attribute is not a list (got {got}); {expected}"
        )
    for position, attribute in enumerate(attributes):
        if not isinstance(attribute, dict):
            got = type(attribute).__name__
            raise MispResponseError(
                f"{where}: response.Attribute[{position}] is not an object "
                f"(got {got}); {expected}"
            )
    return attributes


def _events_of(document: Any, where: str) -> list[dict]:
    expected = 'expected {"response": [{"Event": {...}}, ...]}'
    response = document.get("response") if isinstance(document, dict) else None
    if not isinstance(response, list):
        got = type(response).__name__ if response is not None else "no 'response'"
        raise MispResponseError(f"{where}: bad framing (got {got}); {expected}")
    events = []
    for position, entry in enumerate(response):
        event = entry.get("Event") if isinstance(entry, dict) else None
        if not isinstance(event, dict):
            raise MispResponseError(
                f"{where}: response[{position}].Event is not an object "
                f"(got {type(event).__name__}); {expected}"
            )
        events.append(event)
    return events


def _error_message(response: requests.Response) -> str:
    """MISP's ``message`` from an error body, else the start of the text."""
    try:
        text = response.content.decode("utf-8", "replace")
    except requests.RequestException as err:
        return f"unreadable body ({type(err).__name__})"
    try:
        document = orjson.loads(text)
    except orjson.JSONDecodeError:
        return " ".join(text.split()) or "empty body"
    if isinstance(document, dict):
        message = document.get("message") or document.get("name")
        if message:
            return str(message)
    return text


def _retry_after_s(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (seconds or HTTP date)."""
    if not value:
        return None
    value = value.strip()
    seconds = _header_number(value)
    if seconds is not None:
        return float(seconds)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        logger.debug("retry_after_ignored value=%s", _quote(value[:40]))
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _skipped_count(headers: Any) -> int:
    value = str(headers.get("X-Skipped-Elements-Count", "0"))
    count = _header_number(value)
    if count is None:
        logger.debug("skipped_count_ignored value=%s", _quote(value[:40]))
        return 0
    return count


def _header_number(value: str) -> int | None:
    """A short run of ASCII digits as an int (``"²".isdigit()`` is True)."""
    value = value.strip()
    if not value or len(value) > HEADER_NUMBER_MAX_CHARS:
        return None
    return int(value) if value.isascii() and value.isdigit() else None


def _describe(err: BaseException) -> str:
    # Shortened later, by MispClient._scrub, once secrets are masked.
    return f"{type(err).__name__}: {err}"


def _shorten(text: str) -> str:
    if len(text) <= CAUSE_MAX_CHARS:
        return text
    return text[: CAUSE_MAX_CHARS - 3] + "..."


def _quote(text: str) -> str:
    return '"' + text.replace('"', "'") + '"'
