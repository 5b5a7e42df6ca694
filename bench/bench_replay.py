"""Replay throughput over a gzip archive of >= 1 GB uncompressed.

Run from the repository root (not collected by pytest):

    .venv/bin/python bench/bench_replay.py [--gigabytes 1.0] [--pieces 8] [--jobs 2]

Generates, in a temporary directory, an analysisd archive tree
`YYYY/Mon/ossec-alerts-DD[-NNN].json.gz` from the real 4.14.1 alerts in
tests/data (about 12% at level >= 10, about 1% of those carrying a stored
indicator), a store of `--indicators` synthetic indicators, then runs
`wazuh-ioc-tailer replay` as a real process and prints MB/s (uncompressed),
alerts/s and the peak RSS of the replay processes.
Targets: >= 100 MB/s on 2 cores, RSS <= 300 MB.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.bench_tailer import HIT_IP, build_store, load_templates  # noqa: E402

SEED = 11


def alert_lines(high: list[dict], low: list[dict], chance: random.Random):
    """Endless rendered alert lines: real templates with fresh ids."""
    rendered_high = [orjson.dumps(a) for a in high]
    rendered_low = [orjson.dumps(a) for a in low]
    hit = dict(high[0], data=dict(high[0].get("data") or {}, srcip=HIT_IP))
    seq = 0
    while True:
        roll = chance.random()
        if roll < 0.0012:
            line = orjson.dumps(hit | {"id": f"1796342399.{seq}"})
        elif roll < 0.12:
            line = chance.choice(rendered_high)
        else:
            line = chance.choice(rendered_low)
        seq += 1
        yield line + b"\n"


def build_archive(root: Path, total_bytes: int, pieces: int) -> tuple[int, int]:
    """Write `pieces` gzip pieces holding `total_bytes` of alerts; return totals."""
    high, low = load_templates()
    chance = random.Random(SEED)
    lines = alert_lines(high, low, chance)
    month = root / "alerts" / "2026" / "Nov"
    month.mkdir(parents=True)
    written = count = 0
    started = time.monotonic()
    for number in range(pieces):
        day, piece = 1 + number // 4, number % 4
        suffix = f"-{piece:03d}" if piece else ""
        path = month / f"ossec-alerts-{day:02d}{suffix}.json.gz"
        budget = total_bytes // pieces
        with gzip.open(path, "wb", compresslevel=1) as sink:
            chunk: list[bytes] = []
            size = 0
            while size < budget:
                line = next(lines)
                chunk.append(line)
                size += len(line)
            sink.write(b"".join(chunk))
        written += size
        count += len(chunk)
    took_s = time.monotonic() - started
    print(f"archive: {pieces} pieces, {written / 1e6:,.0f} MB, {count:,} alerts "
          f"(built in {took_s:.0f} s)")  # fmt: skip
    return written, count


def write_config(root: Path, paths: dict[str, Path]) -> Path:
    cfg = {
        "store": {"ips_db": str(paths["ip"]), "domains_db": str(paths["domain"]),
                  "urls_db": str(paths["url"]), "hashes_db": str(paths["hash"])},
        "tailer": {"alerts_path": str(root / "alerts" / "alerts.json"),
                   "state_dir": str(root / "state")},
        "output": {"path": str(root / "enrichment.json")},
        "sync": {"log_enabled": False},
    }  # fmt: skip
    path = root / "config.yaml"
    path.write_text(json.dumps(cfg))
    return path


def run_replay(root: Path, config: Path, jobs: int) -> tuple[float, str]:
    command = [
        sys.executable, "-m", "tailer.cli", "replay", "--config", str(config),
        "--jobs", str(jobs), "--output", str(root / "hits.jsonl"),
        str(root / "alerts"),
    ]  # fmt: skip
    started = time.monotonic()
    process = subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    peaks = watch_peak_rss(process)
    stderr = process.stderr.read()
    process.wait()
    elapsed_s = time.monotonic() - started
    if process.returncode != 0:
        print(stderr)
    return elapsed_s, stderr, peaks


def watch_peak_rss(process: subprocess.Popen) -> dict[int, float]:
    """Poll VmHWM (MB) of the replay process and its workers until it exits."""
    peaks: dict[int, float] = {}
    while process.poll() is None:
        for pid in [process.pid, *children_of(process.pid)]:
            peaks[pid] = max(peaks.get(pid, 0.0), vm_hwm_mb(pid))
        time.sleep(0.1)
    return peaks


def children_of(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(child) for child in text.split()]


def vm_hwm_mb(pid: int) -> float:
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return 0.0
    for line in lines:
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gigabytes", type=float, default=1.0)
    parser.add_argument("--pieces", type=int, default=8)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--indicators", type=int, default=1_000_000)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-replay-") as tmp:
        root = Path(tmp)
        (root / "store").mkdir()
        paths = build_store(root / "store", args.indicators)
        total_bytes, count = build_archive(root, int(args.gigabytes * 1e9), args.pieces)
        config = write_config(root, paths)
        elapsed_s, stderr, peaks = run_replay(root, config, args.jobs)
        rss_mb = max(peaks.values(), default=0.0)
        hits = (root / "hits.jsonl").read_bytes().count(b"\n")

    summary = [line for line in stderr.splitlines() if line.startswith("replay ")]
    print("\n".join(summary))
    print(
        f"replay --jobs {args.jobs}: {total_bytes / 1e6 / elapsed_s:,.0f} MB/s, "
        f"{count / elapsed_s:,.0f} alerts/s, {hits:,} hits, "
        f"{elapsed_s:.1f} s wall (index build included), "
        f"peak RSS of one replay process {rss_mb:.0f} MB "
        f"({len(peaks)} processes)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
