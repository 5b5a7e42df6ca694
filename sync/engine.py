"""One sync run: MISP attributes (server or feed) into the four IOC databases.

A run takes the sync lock, opens one StoreWriter transaction on the four
databases in a child process (ProcessWriter: SQLite work on the second core),
pulls rows page by page and applies each page at once (memory stays at about
one page), then commits every change together with the new cursor. Any
failure - an exception, a MISP error, SIGTERM, or SIGKILL of either process -
leaves the store and the cursor exactly as they were.

Modes of a server run:

* `full`: everything in scope. Rows of this source that the pull did not
  return are removed (reconcile), unless the pull was cut short (`max_pages`)
  or the removal exceeds `sync.max_removal_ratio` of the store without
  `--force`; then nothing is removed and the run is `incomplete`.
* `incremental`: attributes changed since `cursor - sync.overlap_s`, including
  soft-deleted ones.

Filters that an edit can switch off (to_ids, tags, published) are evaluated
here on every returned row, never sent to MISP: a row that no longer passes is
removed from the store by attribute uuid, so the edit propagates.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import queue
import re
import signal
import sqlite3
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson

from sync.config import Config
from sync.health import SyncReport, publish_report
from sync.logs import (
    MASK,
    RateLimited,
    kv,
    mask_secrets,
    redact_url,
    register_url_secrets,
    url_secrets,
)
from sync.normalize import (
    CONVERTERS,
    SUPPORTED_MISP_TYPES,
    InvalidValue,
    indicators_from_misp,
)
from sync.store import STORE_KINDS, StoreWriter, store_paths
from sync.warninglists import WarninglistSet, load_warninglists
from sync.writer_process import ProcessWriter

log = logging.getLogger(__name__)

LOCK_NAME = ".sync.lock"
RESULTS = ("ok", "incomplete", "failed")
THREAT_LEVELS = {"1": "high", "2": "medium", "3": "low", "4": "undefined"}
TAG_TEXT_CACHE_COUNT = 4096
EVENT_CACHE_COUNT = 4096
EVENT_BATCH_COUNT = 500
# MISP stamps attributes with its own clock; beyond this lead a timestamp is
# an error and must not become the cursor (it would freeze incremental pulls).
FUTURE_ALLOWANCE_S = 86400
TIMESTAMP_MAX_CHARS = 12
ERROR_MAX_CHARS = 300
SQLITE_INT_MAX = 2**63 - 1
_TRUE = (True, 1, "1")
_TEXT_TYPES = frozenset((str, type(None)))
_NO_TAGS_JSON = "[]"
# Errors one attribute's content can raise on its way to a store row. Store
# failures (disk full, corruption) are StoreError or OSError and fail the run.
MALFORMED_ERRORS = (
    ValueError,
    TypeError,
    KeyError,
    AttributeError,
    OverflowError,
    sqlite3.InterfaceError,
    sqlite3.ProgrammingError,
)


class SyncError(RuntimeError):
    """A run that cannot start or cannot finish."""


class SyncLocked(SyncError):
    """Another run holds the sync lock."""


class SyncInterrupted(SyncError):
    """SIGTERM arrived during a run; the run is abandoned as failed."""


class MalformedAttribute(ValueError):
    """One attribute field of the wrong type or range; the row is skipped."""

    def __init__(self, field_name: str, got: object, expected: str) -> None:
        shown = _shown(got)
        super().__init__(f"{field_name}: {expected} (got {shown})")
        self.field_name = field_name


# ---------------------------------------------------------------- local filter


@dataclass(frozen=True)
class RowFilter:
    """The filters an edit can switch off, checked on every returned row."""

    to_ids_only: bool = True
    published_only: bool = False
    include_tags: tuple[re.Pattern[str], ...] = ()
    exclude_tags: tuple[re.Pattern[str], ...] = ()
    not_before: int = 0

    def rejection(self, row: dict, tags: list[str]) -> str | None:
        """Why `row` must not be in the store, or None when it passes."""
        if row.get("deleted") in (True, 1, "1"):
            return "deleted"
        if self.to_ids_only and row.get("to_ids") not in (True, 1, "1"):
            return "not_to_ids"
        if self.published_only and not _published(row):
            return "unpublished"
        if self.include_tags and not _any_tag(self.include_tags, tags):
            return "tag_filter"
        if self.exclude_tags and _any_tag(self.exclude_tags, tags):
            return "tag_excluded"
        if self.not_before and _freshest_s(row) < self.not_before:
            return "too_old"
        return None


def row_filter_from_config(cfg: Config, *, now: float) -> RowFilter:
    """Build the local filter from `misp.*` settings."""
    misp = cfg.misp
    include = tuple(_tag_pattern(t) for t in misp.tags if not t.startswith("!"))
    exclude = tuple(_tag_pattern(t[1:]) for t in misp.tags if t.startswith("!"))
    not_before = int(now - misp.max_age_days * 86400) if misp.max_age_days else 0
    return RowFilter(
        misp.to_ids_only, misp.published_only, include, exclude, not_before
    )


def _tag_pattern(name: str) -> re.Pattern[str]:
    # MISP compares tag names with SQL LIKE: case-insensitive, `%` a wildcard.
    parts = (re.escape(p) for p in name.strip().split("%"))
    return re.compile(".*".join(parts), re.IGNORECASE)


def _any_tag(patterns: Iterable[re.Pattern[str]], tags: list[str]) -> bool:
    return any(p.fullmatch(t) for p in patterns for t in tags)


def _published(row: dict) -> bool:
    # Unknown (a row without event context) passes: keep rather than lose.
    return (row.get("Event") or {}).get("published", True) in (True, 1, "1")


def _freshest_s(row: dict) -> int:
    stamp = _int(row.get("timestamp"))
    last_seen = row.get("last_seen")
    if isinstance(last_seen, str) and last_seen:
        with contextlib.suppress(ValueError, OverflowError, OSError):
            stamp = max(stamp, int(datetime.fromisoformat(last_seen).timestamp()))
    return stamp


def _int(value: object) -> int:
    try:
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0


def _shown(value: object) -> str:
    try:
        text = repr(value)
    except ValueError:  # an int past the digit limit of int-to-text
        text = f"<{type(value).__name__}>"
    return text if len(text) <= 60 else text[:57] + "..."


def attribute_timestamp(row: dict) -> int:
    """The attribute's MISP timestamp (0 when absent); raise MalformedAttribute.

    MISP sends it as decimal text; an int is accepted too. A float, a
    negative number or anything past 12 ASCII digits is not a timestamp.
    """
    value = row.get("timestamp")
    if value is None or value == "":
        return 0
    if isinstance(value, int) and not isinstance(value, bool):
        if 0 <= value < 10**TIMESTAMP_MAX_CHARS:
            return value
    elif isinstance(value, str):
        digits = value.strip()
        if len(digits) <= TIMESTAMP_MAX_CHARS and digits.isascii() and digits.isdigit():
            return int(digits)
    raise MalformedAttribute("timestamp", value, "epoch seconds as decimal digits")


_TEXT_FIELDS = ("type", "category", "comment", "first_seen", "last_seen")
_KEY_FIELDS = ("id", "event_id", "event_uuid")
_EVENT_KEY_FIELDS = ("id", "uuid", "info")


def check_attribute_shape(row: dict) -> None:
    """Raise MalformedAttribute naming the first field of the wrong type."""
    check_row_shape(row)
    event = row.get("Event")
    if event is not None:
        check_event_shape(event)


def check_row_shape(row: dict) -> None:
    """Like `check_attribute_shape`, for the attribute's own fields only."""
    get = row.get
    for name in _TEXT_FIELDS:
        value = get(name)
        if value is not None and not isinstance(value, str):
            raise MalformedAttribute(name, value, "text")
    for name in _KEY_FIELDS:
        value = get(name)
        if not isinstance(value, str) and not _is_key(value):
            raise MalformedAttribute(name, value, "an id or uuid")
    tags = get("Tag")
    if tags is not None and not isinstance(tags, list):
        raise MalformedAttribute("Tag", tags, "a list of tags")


def check_event_shape(event: object) -> None:
    """Like `check_attribute_shape`, for the event context under `Event`."""
    if not isinstance(event, dict):
        raise MalformedAttribute("Event", event, "an event object")
    for name in _EVENT_KEY_FIELDS:
        if not _is_key(event.get(name)):
            raise MalformedAttribute(f"Event.{name}", event.get(name), "text")
    if not isinstance(event.get("Tag"), list | None):
        raise MalformedAttribute("Event.Tag", event.get("Tag"), "a list of tags")


def _is_key(value: object) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return -SQLITE_INT_MAX <= value <= SQLITE_INT_MAX
    return value is None or isinstance(value, str)


def row_tags(row: dict) -> list[str]:
    """Names of attribute tags and event tags (inherited or in the context)."""
    names: list[str] = []
    event = row.get("Event")
    event_tags = event.get("Tag") if isinstance(event, dict) else None
    for tags in (row.get("Tag"), event_tags):
        for tag in tags or ():
            name = tag.get("name") if isinstance(tag, dict) else None
            if isinstance(name, str):
                names.append(name)
    # An event tag comes twice (inherited and in the context): keep the first.
    return names if len(names) < 2 else list(dict.fromkeys(names))


# ---------------------------------------------------------------- applying rows


@dataclass
class RunCounts:
    """What one run did so far (mutable while the run goes on)."""

    pulled: int = 0
    pages: int = 0
    max_timestamp: int = 0
    stored: Counter = field(default_factory=Counter)
    removed: Counter = field(default_factory=Counter)
    skipped: Counter = field(default_factory=Counter)
    future_timestamps: int = 0


class RowApplier:
    """Turn rows into upserts and deletes on a StoreWriter, counting all."""

    def __init__(
        self,
        writer: StoreWriter,
        *,
        source: str,
        row_filter: RowFilter,
        warninglists: WarninglistSet,
        prune: bool,
        now: float | None = None,
    ) -> None:
        self.writer = writer
        self.source = source
        self.row_filter = row_filter
        self.warninglists = warninglists
        # A store without rows of this source has nothing to delete: skip it.
        self.prune = prune
        self.counts = RunCounts()
        self._doomed: dict[str, list[str]] = {kind: [] for kind in STORE_KINDS}
        self._tag_texts: dict[tuple, str] = {}
        self._event_checked: dict | None = None
        self._event_columns: tuple = (None, None, None, None)
        self._event_tags: tuple[list[str], str] = ([], _NO_TAGS_JSON)
        # The default filter (deleted, to_ids) is checked inline per row.
        self._to_ids_only = row_filter.to_ids_only
        self._plain_filter = not (
            row_filter.published_only
            or row_filter.include_tags
            or row_filter.exclude_tags
            or row_filter.not_before
        )
        now = time.time() if now is None else now
        self.latest_timestamp = int(now) + FUTURE_ALLOWANCE_S
        self._warn = RateLimited(log)

    def apply_page(self, rows: Iterable[dict]) -> None:
        """Apply one page, then its deletes; count the page."""
        counts = self.counts
        counts.pages += 1
        apply, skip = self._apply, self._skip_malformed
        for row in rows:
            counts.pulled += 1
            try:
                apply(row)
            except MalformedAttribute as err:
                skip(row, err.field_name, err)
            except MALFORMED_ERRORS as err:
                skip(row, "unknown", err)
        self.flush_deletes()

    def apply(self, row: dict) -> None:
        """Apply one row; a malformed row is skipped, counted and warned about."""
        self.counts.pulled += 1
        try:
            self._apply(row)
        except MalformedAttribute as err:
            self._skip_malformed(row, err.field_name, err)
        except MALFORMED_ERRORS as err:
            self._skip_malformed(row, "unknown", err)

    def _skip_malformed(self, row: object, field_name: str, err: Exception) -> None:
        uuid = row.get("uuid") if isinstance(row, dict) else None
        uuid = uuid if isinstance(uuid, str) and uuid else None
        self.counts.skipped["malformed"] += 1
        # Every row at DEBUG; the operator's WARNING line is rate-limited.
        log.debug(kv("attribute_malformed", uuid=uuid, field=field_name))
        self._warn.warning(
            "attribute_malformed",
            uuid=uuid,
            field=field_name,
            error=_clean_error(err, limit=200),
        )
        if uuid is not None:
            self._doom(uuid, STORE_KINDS)

    def _apply(self, row: dict) -> None:
        # The hot path of a sync: one call per row, fields read once into
        # locals. Anything unusual falls back to the checking helpers above,
        # which raise the same errors in the same order.
        if not isinstance(row, dict):
            raise MalformedAttribute("attribute", row, "an object")
        get = row.get
        uuid = get("uuid")
        if not isinstance(uuid, str) or not uuid:
            self.counts.skipped["no_uuid"] += 1
            return
        misp_type, category, comment = get("type"), get("category"), get("comment")
        first_seen, last_seen = get("first_seen"), get("last_seen")
        key, event_id, event_uuid = get("id"), get("event_id"), get("event_uuid")
        row_tag_list = get("Tag")
        text = _TEXT_TYPES
        if not (
            type(misp_type) in text
            and type(category) in text
            and type(comment) in text
            and type(first_seen) in text
            and type(last_seen) in text
            and type(key) in text
            and type(event_id) in text
            and type(event_uuid) in text
            and (row_tag_list is None or type(row_tag_list) is list)
        ):
            check_row_shape(row)  # the exact check, raising on the first bad field
        event, stamp = get("Event"), get("timestamp")
        if event is not None and event is not self._event_checked:
            self._check_event(event)
        if (
            type(stamp) is str
            and len(stamp) <= TIMESTAMP_MAX_CHARS
            and (stamp.isdigit() and stamp.isascii())
        ):
            timestamp = int(stamp)
        else:
            timestamp = attribute_timestamp(row)
        counts = self.counts
        if timestamp > counts.max_timestamp:
            self._advance(uuid, timestamp)
        if misp_type not in SUPPORTED_MISP_TYPES:
            counts.skipped["unsupported_type"] += 1
            return

        if row_tag_list:
            tags = row_tags(row)
            tags_json = self._tags_json(tags)
        elif event is not None:
            tags, tags_json = self._event_tags
        else:
            tags, tags_json = [], _NO_TAGS_JSON
        to_ids = get("to_ids")
        if self._plain_filter:
            if get("deleted") in _TRUE:
                reason = "deleted"
            elif self._to_ids_only and to_ids not in _TRUE:
                reason = "not_to_ids"
            else:
                reason = None
        else:
            reason = self.row_filter.rejection(row, tags)
        if reason is None:
            value = get("value")
            try:
                if isinstance(value, str):
                    indicators = CONVERTERS[misp_type](value)
                else:
                    indicators = indicators_from_misp(misp_type, value)
            except InvalidValue as err:
                if log.isEnabledFor(logging.DEBUG):
                    log.debug(kv("attribute_invalid", uuid=uuid, error=str(err)))
                reason = err.reason
            else:
                if self.warninglists.lists:
                    listed = self.warninglists.match(misp_type, value)
                    if listed is not None:
                        reason = f"warninglist_{listed}"
        if reason is not None:
            counts.skipped[reason] += 1
            self._doom(uuid, STORE_KINDS)
            return

        if event:
            ev_id, ev_uuid, info, threat_level = self._event_columns
        else:
            ev_id = ev_uuid = info = threat_level = None
        # One tuple per indicator, in the store's VALUE_COLUMNS order.
        upsert, stored = self.writer.upsert_values, counts.stored
        for found in indicators:
            kind = found.kind
            upsert(
                kind,
                (
                    uuid,
                    found.value,
                    value,
                    found.subtype,
                    found.port,
                    misp_type,
                    category,
                    1 if to_ids in _TRUE else 0,
                    key,
                    event_id or ev_id,
                    ev_uuid or event_uuid,
                    info,
                    threat_level,
                    tags_json,
                    comment or None,
                    first_seen,
                    last_seen,
                    timestamp or None,
                    self.source,
                ),
            )
            stored[kind] += 1
        if self.prune:
            kinds = {i.kind for i in indicators}
            self._doom(uuid, [k for k in STORE_KINDS if k not in kinds])

    def _check_event(self, event: object) -> None:
        # Rows of one event share its dict: check (and read) it once.
        check_event_shape(event)
        self._event_checked, self._event_columns = event, _event_columns(event)
        names = row_tags({"Event": event})
        self._event_tags = (names, self._tags_json(names))

    def _advance(self, uuid: str, timestamp: int) -> int:
        """Move the run's newest timestamp, unless `timestamp` is in the future."""
        counts = self.counts
        if timestamp > self.latest_timestamp:
            counts.future_timestamps += 1
            self._warn.warning(
                "attribute_timestamp_in_future", uuid=uuid, timestamp=timestamp
            )
        elif timestamp > counts.max_timestamp:
            counts.max_timestamp = timestamp
        return timestamp

    def _tags_json(self, tags: list) -> str:
        # Most rows of a pull share a handful of tag lists: encode each once.
        key = tuple(tags)
        text = self._tag_texts.get(key)
        if text is None:
            if len(self._tag_texts) >= TAG_TEXT_CACHE_COUNT:
                self._tag_texts.clear()
            text = self._tag_texts[key] = orjson.dumps(tags).decode()
        return text

    def _doom(self, uuid: str, kinds: Iterable[str]) -> None:
        if self.prune:
            for kind in kinds:
                self._doomed[kind].append(uuid)

    def flush_deletes(self) -> None:
        # The writer counts what went (see StoreWriter.removed_counts).
        for kind, uuids in self._doomed.items():
            if uuids:
                self.writer.delete_uuids(kind, list(uuids))
                uuids.clear()

    def delete_uuids(self, uuids: Iterable[str]) -> None:
        """Remove attributes by uuid from every kind (events gone from a feed)."""
        uuids = list(uuids)
        for kind in STORE_KINDS:
            self.writer.delete_uuids(kind, uuids)


def _event_columns(event: dict) -> tuple:
    """event id, uuid, info and threat level of an event context."""
    threat_level = THREAT_LEVELS.get(str(event.get("threat_level_id")))
    return event.get("id"), event.get("uuid"), event.get("info"), threat_level


# ---------------------------------------------------------------- lock, signals


def lock_path(cfg: Config) -> Path:
    """The lock file: `.sync.lock` beside the IP database."""
    return Path(cfg.store.ips_db).parent / LOCK_NAME


@contextlib.contextmanager
def sync_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on `path`; raise SyncLocked when taken."""
    path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o640)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            raise SyncLocked(f"another sync is running (lock {path} held)") from err
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def sigterm_as_failure() -> Iterator[None]:
    """Turn SIGTERM and SIGINT into SyncInterrupted while the block runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise SyncInterrupted(f"terminated by {signal.Signals(signum).name}")

    previous = {
        signum: signal.signal(signum, interrupt)
        for signum in (signal.SIGTERM, signal.SIGINT)
    }
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


# ---------------------------------------------------------------- one run


@dataclass(frozen=True)
class PullOutcome:
    """What a pull tells the run: its mode, completeness, and what to commit."""

    complete: bool
    reconcile: bool = False
    cursor: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunState:
    """Shared between the runner and a pull while the run goes on."""

    cfg: Config
    source: str
    started_at: int
    force: bool
    warninglists: WarninglistSet
    mode: str = "unknown"
    applier: RowApplier | None = None


Pull = Callable[[StoreWriter, RunState], PullOutcome]


def execute_run(
    cfg: Config,
    *,
    source: str,
    pull: Pull,
    force: bool = False,
    warninglists: WarninglistSet | None = None,
) -> SyncReport:
    """Run `pull` under the lock in one store transaction; report the outcome.

    Raises SyncLocked when another run holds the lock; every other failure is
    reported (result `failed`) and leaves the store as it was.
    """
    if warninglists is None:
        warninglists = load_warninglists(
            cfg.sync.warninglists_dir, cfg.sync.warninglists
        )
    state = RunState(cfg, source, int(time.time()), force, warninglists)
    clock_start = time.monotonic()
    with sync_lock(lock_path(cfg)):
        try:
            with sigterm_as_failure():
                report = _run_locked(state, pull, clock_start)
        except Exception as err:  # the run boundary: report, never crash
            report = _failed_report(state, err, clock_start)

    publish_report(cfg, report, now=time.time())
    if report.changed and sum(report.stored.values()):
        _retrohunt(cfg, since=state.started_at)
    return report


def _run_locked(state: RunState, pull: Pull, clock_start: float) -> SyncReport:
    cfg = state.cfg
    run_id = time.time_ns() // 1000
    # A child process owns the transaction; this one fetches and normalises.
    with ProcessWriter(store_paths(cfg), run_id=run_id) as writer:
        before = {k: writer.count(k, state.source) for k in STORE_KINDS}
        state.applier = RowApplier(
            writer,
            source=state.source,
            row_filter=row_filter_from_config(cfg, now=state.started_at),
            warninglists=state.warninglists,
            prune=sum(before.values()) > 0,
            now=state.started_at,
        )
        outcome = pull(writer, state)
        state.applier.flush_deletes()

        complete = outcome.complete
        if complete and outcome.reconcile:
            complete = _reconcile(writer, state, before)
            if complete:
                writer.set_meta("last_reconcile", state.started_at)
        result = "ok" if complete else "incomplete"
        return _commit(writer, state, outcome, result, clock_start)


def _commit(
    writer: StoreWriter,
    state: RunState,
    outcome: PullOutcome,
    result: str,
    clock_start: float,
) -> SyncReport:
    if outcome.cursor is not None:
        writer.set_meta("cursor", outcome.cursor)
    for key, value in outcome.meta.items():
        writer.set_meta(key, value)
    indicators = sum(writer.count(k) for k in STORE_KINDS)
    cursor = writer.get_meta("cursor")
    state.applier.counts.removed.update(writer.removed_counts())
    writer.set_meta("last_success", state.started_at)
    writer.set_meta(
        "last_run",
        {
            "time": state.started_at,
            "result": result,
            "mode": state.mode,
            "source": state.source,
        },
    )
    changed = writer.commit()

    counts = state.applier.counts
    return SyncReport(
        mode=state.mode,
        result=result,
        source=state.source,
        started_at=state.started_at,
        duration_s=time.monotonic() - clock_start,
        pulled=counts.pulled,
        pages=counts.pages,
        stored=dict(counts.stored),
        removed=dict(counts.removed),
        skipped=dict(counts.skipped),
        indicators=indicators,
        cursor=cursor,
        last_success=state.started_at,
        changed=any(changed.values()),
    )


def _reconcile(writer: StoreWriter, state: RunState, before: dict) -> bool:
    """Remove rows of the source the pull did not see; False when refused."""
    run_id = writer.run_id
    unseen = {k: writer.count_not_seen(k, run_id, state.source) for k in STORE_KINDS}
    total_before = sum(before.values())
    ratio = sum(unseen.values()) / total_before if total_before else 0.0
    if ratio > state.cfg.sync.max_removal_ratio and not state.force:
        log.warning(
            kv(
                "reconcile_refused",
                would_remove=sum(unseen.values()),
                of=total_before,
                max_removal_ratio=state.cfg.sync.max_removal_ratio,
                hint="check the MISP filters; rerun with --force to remove",
            )
        )
        return False

    for kind in STORE_KINDS:
        if unseen[kind]:
            writer.delete_not_seen(kind, run_id, state.source)
    return True


def _clean_error(
    err: BaseException, *, secrets: Iterable[str] = (), limit: int = ERROR_MAX_CHARS
) -> str:
    """``Type: message`` with every secret masked first, then shortened.

    The log filter masks registered secrets too, but only whole ones: a key
    cut by the shortening would slip through it.
    """
    text = f"{type(err).__name__}: {err}"
    for secret in secrets:
        text = text.replace(secret, MASK)
    text = mask_secrets(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _failed_report(state: RunState, err: Exception, clock_start: float) -> SyncReport:
    error = _clean_error(err, secrets=_cfg_secrets(state.cfg))
    log.error(kv("sync_failed", source=state.source, mode=state.mode, error=error))
    counts = state.applier.counts if state.applier else RunCounts()
    previous = _committed_meta(state.cfg)
    return SyncReport(
        mode=state.mode,
        result="failed",
        source=state.source,
        started_at=state.started_at,
        duration_s=time.monotonic() - clock_start,
        pulled=counts.pulled,
        pages=counts.pages,
        indicators=previous.get("indicators", 0),
        cursor=previous.get("cursor"),
        last_success=previous.get("last_success") or 0,
        error=error,
    )


def _cfg_secrets(cfg: Config) -> list[str]:
    """The API key and the credentials of misp.url, for masking error text."""
    key = cfg.misp.api_key.reveal() if cfg.misp.api_key else None
    return [text for text in (key, *url_secrets(cfg.misp.url)) if text]


def _committed_meta(cfg: Config) -> dict[str, Any]:
    """Cursor, last success and row count as committed, for a failed report."""
    from sync.store import StoreError, StoreReader, load_cursor

    paths = store_paths(cfg)
    try:
        with StoreReader(paths) as reader:
            counts = reader.counts()
            return {
                "cursor": load_cursor(paths),
                "last_success": reader.meta("last_success"),
                "indicators": sum(sum(c.values()) for c in counts.values()),
            }
    except (StoreError, OSError):
        return {}


def _retrohunt(cfg: Config, *, since: int) -> None:
    if cfg.sync.retrohunt_days <= 0:
        return
    try:
        from tailer.replay import retrohunt
    except ImportError as err:
        log.error(kv("retrohunt_unavailable", error=str(err)))
        return
    try:
        retrohunt(cfg, since=since)
    except Exception as err:  # a failed retro-hunt must not fail the sync
        log.error(kv("retrohunt_failed", error=f"{type(err).__name__}: {err}"))


# ---------------------------------------------------------------- server pull


def server_source(url: str) -> str:
    """The source name of a MISP server: its host (and port when given).

    Never the user, password or query of the URL: the name is printed.
    """
    try:
        host = urlsplit(url).netloc.rpartition("@")[2]
    except ValueError:
        host = ""
    return host or redact_url(url)


def choose_mode(
    *,
    full: bool,
    cursor: int | None,
    last_reconcile: int | None,
    cfg: Config,
    now: float,
) -> str:
    """`full` when asked, on the first run, or when a reconcile is due."""
    if full or cursor is None:
        return "full"
    if last_reconcile is None:
        return "full"
    if now - last_reconcile >= cfg.sync.reconcile_interval_s:
        return "full"
    return "incremental"


def build_query(cfg: Config, *, mode: str, cursor: int | None, now: float) -> dict:
    """The restSearch body of a pull (without `page` and `limit`)."""
    misp = cfg.misp
    # The client adds returnFormat, order (Attribute.id asc), limit and page.
    # Event context (tags, published, threat level) comes from one metadata
    # request per new event (EventContexts), not repeated on every row.
    query: dict[str, Any] = {
        "type": list(misp.types) or sorted(SUPPORTED_MISP_TYPES),
    }
    if misp.categories:
        query["category"] = list(misp.categories)
    if misp.enforce_warninglist:
        query["enforceWarninglist"] = 1

    if mode == "incremental":
        # TODO: changes that leave Attribute.timestamp alone (event tag edits,
        # publishing, ACL changes, hard deletes) reach the store only at the
        # next reconcile; a query on event_timestamp/publish_timestamp would
        # catch the first two sooner at the cost of a second pull.
        query["deleted"] = [0, 1]
        query["timestamp"] = max(1, int(cursor or 0) - cfg.sync.overlap_s)
    elif misp.use_timestamp_filter:
        query["timestamp"] = int(now - misp.last_n_days * 86400)
    return query


class EventContexts:
    """Event metadata for the rows of each page, fetched once per event.

    Rows of `/attributes/restSearch` carry only the event's id, uuid and info;
    `attach` puts the whole event (Tag list, published, threat level) under
    each row's `Event`, as `includeContext` would, from a bounded LRU cache
    filled by one `/events/restSearch` metadata request per page. A row whose
    event MISP does not return is held back and counted in `missing_rows`.
    """

    def __init__(self, client: Any, *, capacity: int = EVENT_CACHE_COUNT) -> None:
        self.client = client
        self.capacity = capacity
        self.missing_rows = 0
        self.missing_events: set[str] = set()
        self._cache: OrderedDict[str, dict] = OrderedDict()

    def attach(self, page: list[dict]) -> list[dict]:
        """The rows of `page` whose event is known, each with its `Event`."""
        events = self._events_of(page)
        kept = []
        for row in page:
            event = events.get(str(row.get("event_id")))
            if event is None:
                self.missing_rows += 1
                continue
            row["Event"] = event
            kept.append(row)
        return kept

    def _events_of(self, page: list[dict]) -> dict[str, dict]:
        wanted = {str(row.get("event_id")) for row in page}
        found = {i: self._cache[i] for i in wanted if i in self._cache}
        missing = sorted(wanted - found.keys(), key=_event_order)
        for start in range(0, len(missing), EVENT_BATCH_COUNT):
            batch = missing[start : start + EVENT_BATCH_COUNT]
            for event in self.client.fetch_event_metadata(batch):
                found[str(event.get("id"))] = event
        for event_id in wanted:
            if event_id in found:
                self._remember(event_id, found[event_id])
            elif event_id not in self.missing_events:
                self.missing_events.add(event_id)
                log.warning(kv("event_context_missing", event_id=event_id))
        return found

    def _remember(self, event_id: str, event: dict) -> None:
        cache = self._cache
        cache[event_id] = event
        cache.move_to_end(event_id)
        if len(cache) > self.capacity:
            cache.popitem(last=False)


def _event_order(event_id: str) -> tuple[int, str]:
    return (int(event_id), "") if event_id.isdigit() else (0, event_id)


def pull_pages(pages: Iterable[list[dict]], applier: RowApplier) -> None:
    """Apply every page as it arrives, fetching the next one meanwhile."""
    for page in prefetched(pages):
        applier.apply_page(page)


def prefetched(pages: Iterable[list[dict]]) -> Iterator[list[dict]]:
    """Yield pages while a thread fetches the next one (at most one waiting).

    Waiting for MISP then overlaps applying the previous page; memory stays
    at about three pages. An error of the fetching thread is raised here.
    """
    handoff: queue.Queue = queue.Queue(maxsize=1)
    stop = threading.Event()

    def fetch_all() -> None:
        try:
            for page in pages:
                if stop.is_set():
                    return
                handoff.put((page, None))
            handoff.put((None, None))
        except BaseException as err:  # handed to the applying thread
            handoff.put((None, err))

    threading.Thread(target=fetch_all, name="misp-fetch", daemon=True).start()
    try:
        while True:
            page, err = handoff.get()
            if err is not None:
                raise err
            if page is None:
                return
            yield page
    finally:
        stop.set()
        with contextlib.suppress(queue.Empty):
            handoff.get_nowait()


def run_server_sync(
    cfg: Config,
    *,
    full: bool = False,
    force: bool = False,
    client: Any = None,
    warninglists: WarninglistSet | None = None,
) -> SyncReport:
    """One run against the MISP server of `cfg.misp`."""

    def pull(writer: StoreWriter, state: RunState) -> PullOutcome:
        cursor = sane_cursor(writer.get_meta("cursor"), now=state.started_at)
        state.mode = choose_mode(
            full=full,
            cursor=cursor,
            last_reconcile=writer.get_meta("last_reconcile"),
            cfg=cfg,
            now=state.started_at,
        )
        query = build_query(cfg, mode=state.mode, cursor=cursor, now=state.started_at)
        log.info(kv("sync_start", source=state.source, mode=state.mode, cursor=cursor))
        misp = client or make_client(cfg)
        contexts = EventContexts(misp)
        try:
            pages = misp.iter_attribute_pages(query, max_pages=cfg.misp.max_pages)
            pull_pages(map(contexts.attach, pages), state.applier)
        finally:
            if client is None:
                misp.close()
        complete = misp.incomplete is None and not _held_back(contexts, state)
        new_cursor = next_cursor(state, cursor) if complete else None
        return PullOutcome(complete, reconcile=state.mode == "full", cursor=new_cursor)

    register_url_secrets(cfg.misp.url)
    source = server_source(cfg.misp.url)
    return execute_run(
        cfg, source=source, pull=pull, force=force, warninglists=warninglists
    )


def sane_cursor(cursor: object, *, now: float) -> int | None:
    """The stored cursor, or None (a full pull) when it cannot be right.

    A cursor beyond now + FUTURE_ALLOWANCE_S (left by an attribute with a
    future timestamp) would ask MISP only for attributes newer than it:
    incremental pulls would find nothing, forever.
    """
    if cursor is None:
        return None
    if isinstance(cursor, int) and not isinstance(cursor, bool):
        if 0 <= cursor <= now + FUTURE_ALLOWANCE_S:
            return cursor
    log.warning(
        kv("sync_cursor_repaired", cursor=_shown(cursor), now=int(now), mode="full")
    )
    return None


def next_cursor(state: RunState, cursor: int | None) -> int:
    """The cursor to commit: a full pull sets it from what it saw."""
    seen = state.applier.counts.max_timestamp
    if state.mode == "full":
        return seen
    return max(cursor or 0, seen)


def _held_back(contexts: EventContexts, state: RunState) -> bool:
    """Count rows held back for want of their event; True when there were any."""
    if not contexts.missing_rows:
        return False
    counts = state.applier.counts
    counts.pulled += contexts.missing_rows
    counts.skipped["event_unavailable"] += contexts.missing_rows
    log.warning(
        kv(
            "sync_incomplete",
            reason="event_unavailable",
            events=len(contexts.missing_events),
            rows=contexts.missing_rows,
        )
    )
    return True


def make_client(cfg: Config) -> Any:
    from sync.misp_api import MispClient

    return MispClient.from_config(cfg.misp)
