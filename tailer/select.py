"""Choosing alerts: which lines of alerts.json are worth extracting observables from.

Two steps, cheapest first. `AlertSelector.quick_reject` looks at the raw bytes of a
line and rejects it when it surely cannot pass (its `rule.level` is too low and no
keep list could keep it), without parsing JSON. `AlertSelector.accept` is the full
decision on a parsed alert. Our own enrichment alerts are always skipped: they repeat
the indicator and would loop forever.
"""

from __future__ import annotations

import functools
import logging
from collections import Counter
from collections.abc import Iterable
from typing import Any

import orjson

logger = logging.getLogger(__name__)

OWN_INTEGRATION = "ioc_sqlite"
OWN_RULE_IDS = range(101080, 101100)

# analysisd writes `{"timestamp":"...","rule":{"level":N,...`: the level is the first
# key of the rule object. Anything else falls back to the full check.
_RULE_LEVEL = b'"rule":{"level":'
_LEVEL_OFFSET = len(_RULE_LEVEL)
_VALUE_ENDS = b",}"
_AGENT_AFTER_RULE = b'},"agent":{'


class AlertSelector:
    """Decides which alerts go on to extraction and counts every reason."""

    def __init__(
        self,
        min_level: int = 10,
        keep_groups: Iterable[str] = (),
        keep_rule_ids: Iterable[str | int] = (),
        drop_groups: Iterable[str] = (),
        drop_rule_ids: Iterable[str | int] = (),
        skip_integrations: Iterable[str] = (),
        own_output_path: str | None = None,
    ) -> None:
        self.min_level = int(min_level)
        self.keep_groups = frozenset(str(g).strip() for g in keep_groups)
        self.keep_rule_ids = frozenset(str(r).strip() for r in keep_rule_ids)
        self.drop_groups = frozenset(str(g).strip() for g in drop_groups)
        self.drop_rule_ids = frozenset(str(r).strip() for r in drop_rule_ids)
        self.skip_integrations = frozenset(str(s) for s in skip_integrations)
        self.own_output_path = own_output_path
        self._keep_needles = _keep_needles(self.keep_groups, self.keep_rule_ids)
        self._quick_possible = self._keep_needles is not None
        self._lists = bool(
            self.keep_groups
            | self.keep_rule_ids
            | self.drop_groups
            | self.drop_rule_ids
        )
        self.counts: Counter[str] = Counter()
        self._quick_rejected = 0

    @classmethod
    def from_config(cls, config: Any) -> AlertSelector:
        """Builds a selector from the `tailer` and `output` sections of a Config."""
        tailer = config.tailer
        return cls(
            min_level=tailer.min_level,
            keep_groups=tailer.keep_groups,
            keep_rule_ids=tailer.keep_rule_ids,
            drop_groups=tailer.drop_groups,
            drop_rule_ids=tailer.drop_rule_ids,
            skip_integrations=tailer.skip_integrations,
            own_output_path=str(config.output.path),
        )

    def quick_reject(self, line: bytes) -> bool:
        """True only when the raw line surely cannot pass `accept`."""
        if not self._quick_possible:
            return False
        start = line.find(_RULE_LEVEL)
        level = _raw_level(line, start)
        if level is None or level >= self.min_level:
            return False

        # The rule object ends before the top-level agent object: a quote cannot
        # appear unescaped inside a string, so `},"agent":` never starts earlier.
        rule_end = line.find(_AGENT_AFTER_RULE, start)
        window = line[start:rule_end] if rule_end > 0 else line
        for needle in self._keep_needles:
            if needle in window:
                return False
        self._quick_rejected += 1
        return True

    def accept(self, alert: Any) -> bool:
        """The full decision: level or keep lists, minus drop lists and enrichments."""
        reason = self._reject_reason(alert)
        if reason is None:
            self.counts["accepted"] += 1
            return True
        self.counts[reason] += 1
        return False

    def stats(self) -> dict[str, int]:
        """Counts by reason; `quick_below_level` counts raw-bytes rejections."""
        counts = dict(self.counts)
        if self._quick_rejected:
            counts["quick_below_level"] = self._quick_rejected
        return counts

    def _reject_reason(self, alert: Any) -> str | None:
        rule = alert.get("rule") if isinstance(alert, dict) else None
        if not isinstance(rule, dict):
            return "malformed_alert"
        own = self._own_reason(alert, rule)
        if own is not None:
            return own
        if self._lists:
            listed = self._listed_reason(rule)
            if listed is not None:
                return listed or None

        level = rule.get("level")
        if type(level) is not int:
            level = _level(level)
            if level is None:
                return "malformed_alert"
        return None if level >= self.min_level else "below_level"

    def _listed_reason(self, rule: dict) -> str | None:
        """A drop reason, "" when a keep list keeps the rule, None when unlisted."""
        rule_id = str(rule.get("id", "")).strip()
        groups = _groups(rule)
        if rule_id in self.drop_rule_ids:
            return "dropped_rule_id"
        if groups & self.drop_groups:
            return "dropped_group"
        if rule_id in self.keep_rule_ids or groups & self.keep_groups:
            return ""
        return None

    def _own_reason(self, alert: dict, rule: dict) -> str | None:
        if _is_own_rule(rule.get("id")):
            return "own_rule"
        data = alert.get("data")
        integration = data.get("integration") if isinstance(data, dict) else None
        integration = integration if isinstance(integration, str) else None
        if integration == OWN_INTEGRATION:
            return "own_integration"
        location = alert.get("location")
        location = location if isinstance(location, str) else None
        if self.own_output_path and location == self.own_output_path:
            return "own_location"

        # Enrichers that write back through the queue socket use their name as the
        # location, so either field identifies them.
        if integration in self.skip_integrations:
            return "skipped_integration"
        if location in self.skip_integrations:
            return "skipped_integration"
        return None


def _raw_level(line: bytes, start: int) -> int | None:
    """The rule level read from the raw bytes, or None when not where expected.

    Only one- and two-digit levels are read (Wazuh levels are 0-16); the byte after
    them must end the value.
    """
    if start < 0:
        return None
    tail = line[start + _LEVEL_OFFSET : start + _LEVEL_OFFSET + 3]
    if len(tail) < 2 or not 48 <= tail[0] <= 57:
        return None
    if tail[1] in _VALUE_ENDS:
        return tail[0] - 48
    if 48 <= tail[1] <= 57 and len(tail) == 3 and tail[2] in _VALUE_ENDS:
        return (tail[0] - 48) * 10 + tail[1] - 48
    return None


def _keep_needles(
    groups: frozenset[str], rule_ids: frozenset[str]
) -> tuple[bytes, ...] | None:
    """Byte strings whose presence means a keep list might keep the line.

    None means the quick path must never reject (a name we cannot search reliably).
    """
    needles = []
    for name in groups | rule_ids:
        if not name.isascii() or not name.isprintable():
            return None
        needles.append(orjson.dumps(name))
    # A group with stray whitespace is written with escapes; search the bare name too.
    needles.extend(name.encode() for name in groups)
    return tuple(needles)


def _groups(rule: dict) -> frozenset[str]:
    groups = rule.get("groups")
    if not isinstance(groups, list):
        return frozenset()
    return frozenset(str(g).strip() for g in groups)


def _level(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    try:
        return int(str(value).strip())
    except ValueError:
        return None


def _is_own_rule(value: Any) -> bool:
    """Whether a rule id names one of our enrichment rules (ids repeat: cached)."""
    try:
        return _is_own_rule_cached(value)
    except TypeError:  # an unhashable id, such as a list
        return _rule_number(value) in OWN_RULE_IDS


@functools.lru_cache(maxsize=4096, typed=True)
def _is_own_rule_cached(value: Any) -> bool:
    return _rule_number(value) in OWN_RULE_IDS


def _rule_number(value: Any) -> int | None:
    try:
        return int(str(value).strip())
    except ValueError:
        return None
