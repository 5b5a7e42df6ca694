"""Counters of the matching pipeline, the periodic stats line and replay summaries."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict, dataclass, field, fields

STATS_FIELDS = (
    "lines",
    "alerts",
    "selected",
    "hits",
    "written",
    "bad_lines",
    "suppressed",
)


@dataclass
class Counts:
    """Running totals; `lines` counts every complete line read."""

    lines: int = 0
    alerts: int = 0
    selected: int = 0
    hits: int = 0
    written: int = 0
    bad_lines: int = 0
    suppressed: int = 0
    bytes_read: int = 0
    hits_by_kind: Counter = field(default_factory=Counter)
    hits_by_indicator: Counter = field(default_factory=Counter)
    hits_by_agent: Counter = field(default_factory=Counter)

    def add(self, other: Counts) -> None:
        """Fold another set of counts (from a replay worker) into this one."""
        for spec in fields(self):
            mine = getattr(self, spec.name)
            if isinstance(mine, Counter):
                mine.update(getattr(other, spec.name))
            else:
                setattr(self, spec.name, mine + getattr(other, spec.name))

    def snapshot(self) -> dict:
        """Plain dict of the scalar counters (for the checkpoint database)."""
        return {name: getattr(self, name) for name in STATS_FIELDS}

    def as_dict(self) -> dict:
        return asdict(self)


def format_stats(counts: Counts, *, lag_bytes: int) -> str:
    """Render the periodic INFO line."""
    pairs = " ".join(f"{name}={getattr(counts, name)}" for name in STATS_FIELDS)
    return f"stats {pairs} lag_bytes={lag_bytes}"


def format_rate(count: float, elapsed_s: float) -> str:
    return f"{count / elapsed_s:,.0f}" if elapsed_s > 0 else "-"


def format_summary(
    counts: Counts, *, files: int, errors: int, elapsed_s: float, top: int = 5
) -> str:
    """Render the multi-line summary a replay prints on stderr at the end.

    `hits` counts every (alert field, indicator) match; `written` the lines
    left after one line per (alert, indicator) and flood control, whose
    swallowed repeats are `suppressed`.
    """
    megabytes = counts.bytes_read / 1e6
    lines = [
        f"replay files={files} errors={errors} lines={counts.lines} "
        f"bad_lines={counts.bad_lines} alerts={counts.alerts} "
        f"selected={counts.selected} hits={counts.hits} written={counts.written} "
        f"suppressed={counts.suppressed}",
        f"replay elapsed_s={elapsed_s:.2f} alerts_per_s="
        f"{format_rate(counts.lines, elapsed_s)} mb_per_s="
        f"{format_rate(megabytes, elapsed_s)}",
        "hits_by_type " + format_counter(counts.hits_by_kind, top=top),
        "top_indicators " + format_counter(counts.hits_by_indicator, top=top),
        "top_agents " + format_counter(counts.hits_by_agent, top=top),
    ]
    return "\n".join(lines)


def format_counter(counter: Counter, *, top: int) -> str:
    if not counter:
        return "-"
    return " ".join(f"{key}={count}" for key, count in counter.most_common(top))


class Progress:
    """A one-line progress display for a terminal; silent when disabled."""

    def __init__(self, stream, *, enabled: bool, total_files: int) -> None:
        self.stream = stream
        self.enabled = enabled
        self.total_files = total_files
        self.started = time.monotonic()

    def update(self, counts: Counts, *, files_done: int) -> None:
        if not self.enabled:
            return
        elapsed_s = time.monotonic() - self.started
        self.stream.write(
            f"\rfiles {files_done}/{self.total_files} "
            f"{counts.bytes_read / 1e6:,.1f} MB alerts {counts.alerts:,} "
            f"hits {counts.hits:,} {format_rate(counts.lines, elapsed_s)} lines/s "
        )
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()
