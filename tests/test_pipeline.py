"""The shared matching pipeline: one line's failure stays that line's."""

from __future__ import annotations

import orjson
import pytest

from sync.store import StoreUnavailable
from tailer.extract import build_catalog
from tailer.match import Hit
from tailer.pipeline import Pipeline, match_lines
from tailer.select import AlertSelector


class ScriptedIndex:
    """Stands in for IndicatorIndex: hits one address, fails on others."""

    def __init__(self, failures: dict[str, Exception]) -> None:
        self.failures = failures

    def match(self, observable):
        if observable.value in self.failures:
            raise self.failures[observable.value]
        if observable.value == "192.0.2.10":
            return [Hit("ip", "192.0.2.10", observable, {"misp_type": "ip-src"})]
        return []


def alert_line(number: int, srcip: str) -> bytes:
    alert = {
        "timestamp": "2026-12-03T16:28:14.623+0000",
        "rule": {"level": 12, "id": "5712"},
        "id": f"1796315294.{number}",
        "data": {"srcip": srcip},
    }
    return orjson.dumps(alert)


def pipeline(index: ScriptedIndex) -> Pipeline:
    return Pipeline(AlertSelector(min_level=10), build_catalog(), index)


def test_unexpected_error_on_one_line_is_counted_and_neighbours_still_match():
    ctx = pipeline(ScriptedIndex({"198.51.100.1": ValueError("odd shape")}))
    lines = [
        alert_line(1, "192.0.2.10"),
        alert_line(2, "198.51.100.1"),
        alert_line(3, "192.0.2.10"),
    ]

    matches = match_lines(lines, ctx, path="alerts.json", numbers=[10, 20, 30])

    assert [alert["id"] for alert, _ in matches] == [
        "1796315294.1",
        "1796315294.3",
    ]
    assert ctx.counts.bad_lines == 1
    assert ctx.counts.selected == 3


def test_an_unavailable_store_is_not_blamed_on_the_line():
    ctx = pipeline(ScriptedIndex({"198.51.100.1": StoreUnavailable("store gone")}))

    with pytest.raises(StoreUnavailable):
        match_lines([alert_line(1, "198.51.100.1")], ctx, path="a", numbers=[1])

    assert ctx.counts.bad_lines == 0
