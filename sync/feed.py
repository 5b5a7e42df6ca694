"""Read a MISP feed (manifest.json + one JSON file per event) from a URL or a
directory, and turn its events into attribute rows shaped like the rows of
`/attributes/restSearch`, so the sync engine treats both sources alike.

A feed row differs from a server row only by what the feed format lacks: no
attribute `id` or `event_id` (rows are keyed by attribute uuid and event uuid).
Event tags are appended to each row's `Tag` list with `inherited: 1`, as
`includeEventTags` does on a server.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import requests

from sync.logs import kv

log = logging.getLogger(__name__)

_UUID = re.compile(
    r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-"
    r"[0-9a-fA-F]{12}$"
)
_EVENT_CONTEXT_KEYS = (
    "uuid",
    "info",
    "date",
    "threat_level_id",
    "analysis",
    "published",
    "timestamp",
    "publish_timestamp",
    "Orgc",
)


class FeedError(RuntimeError):
    """A feed that cannot be read: unreachable, missing file, or bad JSON."""


@dataclass(frozen=True)
class FeedReader:
    """Where a feed lives and how to fetch its files."""

    location: str
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 60.0
    verify: bool | str = True
    session: requests.Session | None = field(default=None, compare=False)

    @property
    def is_remote(self) -> bool:
        return self.location.startswith(("http://", "https://"))

    def fetch_manifest(self) -> dict[str, int]:
        """Return event uuid -> event timestamp from `manifest.json`."""
        manifest = self._fetch_json("manifest.json")
        if not isinstance(manifest, dict):
            raise FeedError(
                f"{self._where('manifest.json')}: top level is "
                f"{type(manifest).__name__}; expected an object of event uuids"
            )
        return {
            uuid.lower(): _lenient_int(entry.get("timestamp"))
            for uuid, entry in manifest.items()
            if _UUID.match(uuid) and isinstance(entry, dict)
        }

    def fetch_event(self, event_uuid: str) -> dict:
        """Return the `Event` object of `<event_uuid>.json`."""
        if not _UUID.match(event_uuid):
            raise FeedError(
                f"feed {self.location}: event name is not a uuid (got {event_uuid!r})"
                "; expected 8-4-4-4-12 hex"
            )
        name = f"{event_uuid}.json"
        doc = self._fetch_json(name)
        event = doc.get("Event") if isinstance(doc, dict) else None
        if not isinstance(event, dict):
            raise FeedError(
                f'{self._where(name)}: no Event object; expected {{"Event": {{...}}}}'
            )
        return event

    def _fetch_json(self, name: str) -> object:
        body = self._fetch_bytes(name)
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as err:
            raise FeedError(
                f"{self._where(name)}: invalid JSON ({err}); expected a MISP feed file"
            ) from err

    def _fetch_bytes(self, name: str) -> bytes:
        if not self.is_remote:
            try:
                return (Path(self.location) / name).read_bytes()
            except OSError as err:
                raise FeedError(f"{self._where(name)}: {err.strerror}") from err
        return self._fetch_remote(name)

    def _fetch_remote(self, name: str) -> bytes:
        url = self._where(name)
        http = self.session or requests
        try:
            reply = http.get(
                url,
                timeout=(self.connect_timeout_s, self.read_timeout_s),
                verify=self.verify,
            )
        except requests.RequestException as err:
            raise FeedError(f"{url}: {type(err).__name__}") from err
        if reply.status_code != 200:
            raise FeedError(
                f"{url}: HTTP {reply.status_code} (got {reply.status_code}); "
                "expected 200"
            )
        return reply.content

    def _where(self, name: str) -> str:
        if self.is_remote:
            return self.location.rstrip("/") + "/" + name
        return str(Path(self.location) / name)


def feed_name_from_location(location: str) -> str:
    """Derive a short source name: the last path segment (or host) of the feed."""
    if location.startswith(("http://", "https://")):
        parts = urlsplit(location)
        segments = [s for s in parts.path.split("/") if s]
        return segments[-1] if segments else parts.hostname or "feed"
    return Path(location).resolve().name or "feed"


def rows_from_feed_event(event: dict) -> Iterator[dict]:
    """Yield every attribute of a feed event (objects flattened) as a row."""
    context = {k: event[k] for k in _EVENT_CONTEXT_KEYS if k in event}
    event_tags = [dict(t, inherited=1) for t in _tags(event)]

    for attribute in _dicts(event.get("Attribute")):
        yield _row(attribute, context, event_tags, None)
    for misp_object in _dicts(event.get("Object")):
        object_context = {
            "uuid": misp_object.get("uuid"),
            "name": misp_object.get("name"),
            "deleted": misp_object.get("deleted", False),
        }
        for attribute in _dicts(misp_object.get("Attribute")):
            yield _row(attribute, context, event_tags, object_context)


def _row(
    attribute: dict, context: dict, event_tags: list, object_context: dict | None
) -> dict:
    row = dict(attribute)
    row["Event"] = context
    row["Tag"] = _tags(attribute) + event_tags
    if object_context is not None:
        row["Object"] = object_context
        # A deleted object deletes its members, as on a server.
        if object_context["deleted"] in (True, 1, "1"):
            row["deleted"] = True
    return row


def _tags(holder: dict) -> list[dict]:
    return list(_dicts(holder.get("Tag")))


def _dicts(value: object) -> Iterator[dict]:
    if isinstance(value, list):
        yield from (v for v in value if isinstance(v, dict))


def _lenient_int(value: object) -> int:
    # Feeds written by MISP carry numbers as strings; PyMISP writes integers.
    try:
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        return 0


# ---------------------------------------------------------------- feed sync


def feed_state_key(name: str) -> str:
    # TODO: the state lists every attribute uuid of the feed (about 40 bytes
    # each) and is written into all four databases on every run; a feed of
    # millions of attributes would want a table of its own.
    return f"feed:{name}"


def run_feed_sync(
    cfg: Any,
    location: str,
    *,
    name: str | None = None,
    full: bool = False,
    force: bool = False,
    warninglists: Any = None,
) -> Any:
    """One run of a feed: fetch new or changed events, drop withdrawn ones.

    Per-feed state (store meta `feed:<name>`) records, for every event, its
    manifest timestamp and the uuids of its attributes, so an event that left
    the manifest, or an attribute that left its event, is removed by uuid.
    `full` fetches every event of the manifest again, whatever its timestamp.
    """
    from sync.engine import PullOutcome, execute_run

    source = name or feed_name_from_location(location)
    misp = cfg.misp
    reader = FeedReader(
        location,
        connect_timeout_s=misp.connect_timeout_s,
        read_timeout_s=misp.read_timeout_s,
        verify=(misp.ca_bundle or True) if misp.verify_tls else False,
    )

    def pull(writer: Any, state: Any) -> Any:
        state.mode = "feed"
        recorded = writer.get_meta(feed_state_key(source)) or {}
        log.info(kv("feed_start", source=source, location=location))
        events, complete = _pull_feed(reader, recorded, state, full=full)
        return PullOutcome(complete, meta={feed_state_key(source): events})

    return execute_run(
        cfg, source=source, pull=pull, force=force, warninglists=warninglists
    )


def _pull_feed(
    reader: FeedReader, recorded: dict, state: Any, *, full: bool
) -> tuple[dict, bool]:
    manifest = reader.fetch_manifest()
    applier = state.applier
    withdrawn = [uuid for uuid in recorded if uuid not in manifest]
    complete = _removal_allowed(withdrawn, recorded, state)
    if complete:
        for uuid in withdrawn:
            applier.delete_uuids(recorded[uuid].get("attributes", ()))
    # A refused removal keeps the withdrawn events recorded, to retry next run.
    events = {u: e for u, e in recorded.items() if u in manifest or not complete}

    for uuid, stamp in manifest.items():
        if not full and recorded.get(uuid, {}).get("timestamp", 0) >= stamp:
            continue
        try:
            event = reader.fetch_event(uuid)
        except FeedError as err:
            log.error(kv("feed_event_failed", source=state.source, error=str(err)))
            applier.counts.skipped["event_unreadable"] += 1
            complete = False
            continue
        events[uuid] = _apply_event(applier, event, stamp, recorded.get(uuid))
    return events, complete


def _apply_event(applier: Any, event: dict, stamp: int, previous: dict | None) -> dict:
    rows = list(rows_from_feed_event(event))
    applier.apply_page(rows)
    uuids = [r["uuid"] for r in rows if isinstance(r.get("uuid"), str)]
    if previous:
        gone = set(previous.get("attributes", ())) - set(uuids)
        applier.delete_uuids(sorted(gone))
    return {"timestamp": stamp, "attributes": uuids}


def _removal_allowed(withdrawn: list, recorded: dict, state: Any) -> bool:
    """Refuse to withdraw more than sync.max_removal_ratio of the feed's events."""
    if not withdrawn or state.force:
        return True
    ratio = len(withdrawn) / len(recorded)
    if ratio <= state.cfg.sync.max_removal_ratio:
        return True
    log.warning(
        kv(
            "feed_removal_refused",
            source=state.source,
            withdrawn_events=len(withdrawn),
            of=len(recorded),
            max_removal_ratio=state.cfg.sync.max_removal_ratio,
            hint="check the feed; rerun with --force to remove",
        )
    )
    return False
