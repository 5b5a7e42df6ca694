"""The matching pipeline shared by the live tailer, replay and `lookup`.

One alert line goes through: `AlertSelector.quick_reject` on the raw bytes,
`orjson.loads`, `AlertSelector.accept`, `extract_observables`, and
`IndicatorIndex.match`. The result is the list of (alert, hit) pairs; the
caller writes them (the live writer with dedup and flood control, or replay's
output). Nothing here does I/O except the rate-limited `bad_line` warning.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from sync.logs import RateLimited
from sync.store import StoreError
from tailer.extract import Catalog, build_catalog, extract_observables
from tailer.match import Hit, IndicatorIndex, alert_names_file, file_name_required
from tailer.select import AlertSelector
from tailer.stats import Counts

log = logging.getLogger(__name__)

Match = tuple[dict, Hit]
AlertFilter = Callable[[dict], bool]


@dataclass
class Pipeline:
    """Everything one line needs: selector, field catalog, index, counters."""

    selector: AlertSelector
    catalog: Catalog
    index: IndicatorIndex
    counts: Counts = field(default_factory=Counts)
    alert_filter: AlertFilter | None = None
    warn: RateLimited = field(default_factory=lambda: RateLimited(log))
    drops: Counter = field(default_factory=Counter)


def build_pipeline(
    cfg: Any, index: IndicatorIndex, *, alert_filter: AlertFilter | None = None
) -> Pipeline:
    """Build the pipeline from a Config and an open index."""
    catalog = build_catalog(
        [dict(entry) for entry in cfg.tailer.extra_fields],
        skip_private=cfg.tailer.skip_private,
    )
    selector = AlertSelector.from_config(cfg)
    return Pipeline(selector, catalog, index, alert_filter=alert_filter)


def match_alert_line(
    line: bytes, ctx: Pipeline, *, path: str = "-", line_no: int = 0
) -> list[Match]:
    """Return the hits of one alert line; bad lines are counted and skipped.

    `path` and `line_no` (a line number, or a byte offset for the live file)
    name the line in the `bad_line` warning.
    """
    ctx.counts.lines += 1
    if ctx.selector.quick_reject(line):
        return []
    return match_unrejected(line, ctx, (path, line_no))


def match_lines(
    lines: list[bytes], ctx: Pipeline, *, path: str, numbers: Iterable[int]
) -> list[Match]:
    """`match_alert_line` over a batch, with its steps inlined for speed.

    `numbers` name each line in warnings: line numbers, or the end offsets of
    the lines in the live file.
    """
    ctx.counts.lines += len(lines)
    reject = ctx.selector.quick_reject
    matches: list[Match] = []
    for number, line in zip(numbers, lines, strict=False):
        if reject(line):
            continue
        found = match_unrejected(line, ctx, (path, number))
        if found:
            matches += found
    return matches


def match_unrejected(line: bytes, ctx: Pipeline, where: tuple[str, int]) -> list[Match]:
    """The pipeline after quick_reject, where one line's failure stays its own.

    An unexpected error on one line (an alert shape nobody foresaw) skips and
    counts that line like a malformed one, so it can neither stop the loop nor
    be retried forever; an unavailable store is not the line's fault and
    propagates to the caller, which retries.
    """
    try:
        return match_parsed(line, ctx, where)
    except StoreError:
        raise
    except Exception as err:  # noqa: BLE001 - the per-line boundary
        detail = f"{type(err).__name__}: {err}"[:200]
        note_bad_line(ctx, where, "processing_error", detail=detail)
        return []


def match_parsed(line: bytes, ctx: Pipeline, where: tuple[str, int]) -> list[Match]:
    """Parse, accept, extract and match one line that passed quick_reject."""
    alert = parse_alert(line, ctx, where)
    if alert is None:
        return []
    ctx.counts.alerts += 1
    if not ctx.selector.accept(alert):
        return []
    if ctx.alert_filter is not None and not ctx.alert_filter(alert):
        return []
    ctx.counts.selected += 1
    return match_alert(alert, ctx)


def match_alert(alert: dict, ctx: Pipeline) -> list[Match]:
    """Extract the observables of an accepted alert and match each one."""
    observables = extract_observables(alert, ctx.catalog, drops=ctx.drops)
    if not observables:
        return []
    match = ctx.index.match
    matches = [(alert, hit) for observable in observables for hit in match(observable)]
    if matches:
        matches = drop_unnamed_files(matches)
        count_hits(ctx.counts, matches)
    return matches


def drop_unnamed_files(matches: list[Match]) -> list[Match]:
    """Keep a `filename|<hash>` hit only when its alert names that file."""
    kept: list[Match] = []
    alert_text: str | None = None
    for alert, hit in matches:
        file_name = file_name_required(hit)
        if file_name is not None:
            if alert_text is None:
                alert_text = orjson.dumps(alert).decode().lower()
            if not alert_names_file(alert_text, file_name):
                continue
        kept.append((alert, hit))
    return kept


def count_hits(counts: Counts, matches: list[Match]) -> None:
    counts.hits += len(matches)
    for alert, hit in matches:
        agent = alert.get("agent")
        agent_id = agent.get("id", "-") if isinstance(agent, dict) else "-"
        counts.hits_by_kind[hit.kind] += 1
        counts.hits_by_indicator[hit.indicator] += 1
        counts.hits_by_agent[str(agent_id)] += 1


def parse_alert(line: bytes, ctx: Pipeline, where: tuple[str, int]) -> dict | None:
    """Parse one line into an alert object, or count and warn and return None."""
    try:
        alert = orjson.loads(line)
    except orjson.JSONDecodeError as err:
        reason = "invalid_utf8" if "UTF-8" in str(err) else "invalid_json"
        note_bad_line(ctx, where, reason, detail=f"at char {err.pos}")
        return None
    if type(alert) is not dict:
        note_bad_line(ctx, where, "not_object", detail=type(alert).__name__)
        return None
    return alert


def note_bad_line(
    ctx: Pipeline, where: tuple[str, int], reason: str, *, detail: str
) -> None:
    ctx.counts.bad_lines += 1
    path, line_no = where
    ctx.warn.warning("bad_line", path=path, line=line_no, reason=reason, detail=detail)
