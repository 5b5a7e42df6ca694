"""Cost of rejecting a low-level alert: raw-bytes quick path vs a full JSON parse.

Run: .venv/bin/python bench/bench_select.py [alerts.jsonl]
Prints microseconds per line for both paths over the below-level alerts of the file.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tailer.select import AlertSelector  # noqa: E402

DEFAULT_ALERTS = Path(__file__).parent.parent / "tests/data/alerts/engine-real.jsonl"
ROUNDS = 20


def _per_line_us(function, lines: list[bytes]) -> float:
    start = time.perf_counter()
    for _ in range(ROUNDS):
        for line in lines:
            function(line)
    return (time.perf_counter() - start) / (ROUNDS * len(lines)) * 1e6


def main() -> None:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_ALERTS
    lines = [line for line in path.read_bytes().splitlines() if line]
    low = [line for line in lines if orjson.loads(line)["rule"]["level"] < 10]
    plain = AlertSelector(min_level=10)
    kept = AlertSelector(min_level=10, keep_groups=["sysmon"], keep_rule_ids=["554"])

    quick_us = _per_line_us(plain.quick_reject, low)
    keep_us = _per_line_us(kept.quick_reject, low)
    parse_us = _per_line_us(orjson.loads, low)
    average_bytes = sum(map(len, low)) // len(low)
    print(f"file={path.name} below_level_lines={len(low)} avg_bytes={average_bytes}")
    print(f"quick_reject_us={quick_us:.3f}")
    print(f"quick_reject_with_keep_lists_us={keep_us:.3f}")
    print(f"orjson_loads_us={parse_us:.3f}")
    print(f"speedup={parse_us / quick_us:.1f}x")


if __name__ == "__main__":
    main()
