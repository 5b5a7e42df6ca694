"""Tailer throughput, latency and memory with 1,000,000 indicators in the store.

Run from the repository root (not collected by pytest):

    .venv/bin/python bench/bench_tailer.py [--indicators 1000000] [--alerts 400000]

Prints, for alert streams generated from the real 4.14.1 alerts in tests/data:
(a) about 5% of alerts at level >= 10, (b) every alert at level >= 10 and about
1% carrying a stored indicator: alerts/s through the real run loop (follower,
pipeline, writer, checkpoint), then p50/p99 latency from an alert line being
flushed to its enrichment being flushed at 1,000 alerts/s (tailer as a real
process), peak RSS, and the ceiling (read + orjson.loads only).
Targets: (a) >= 200,000/s, (b) >= 40,000/s, p99 <= 250 ms, RSS <= 300 MB.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import orjson

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from sync.config import load_config  # noqa: E402
from sync.store import STORE_KINDS, StoreWriter  # noqa: E402
from tailer.service import Service  # noqa: E402

TEMPLATES = REPO / "tests" / "data" / "alerts" / "engine-real.jsonl"
HIT_IP = "203.0.113.5"  # stored below; documentation ranges are not skipped
SEED = 7


# -- the store ------------------------------------------------------------------------


def indicator_rows(count: int):
    """Yield (kind, row) for `count` synthetic indicators of all four kinds."""
    for n in range(count):
        kind = STORE_KINDS[n % 4]
        if kind == "ip":
            value = f"{100 + n % 100}.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}"
        elif kind == "domain":
            value = f"host{n}.bench-{n % 997}.example"
        elif kind == "url":
            value = f"http://u{n}.bench.example/p/{n}"
        else:
            value = f"{n:064x}"
        subtype = {"ip": "ip", "domain": "domain", "url": "url", "hash": "sha256"}
        yield kind, {"attribute_uuid": f"bench-{n}", "value": value,
                     "subtype": subtype[kind], "misp_type": "bench",
                     "to_ids": True, "event_id": "1"}  # fmt: skip


def build_store(root: Path, count: int) -> dict[str, Path]:
    paths = {kind: root / f"{kind}.db" for kind in STORE_KINDS}
    started = time.monotonic()
    with StoreWriter(paths) as writer:
        for kind, row in indicator_rows(count):
            writer.upsert(kind, row)
        hit = {"attribute_uuid": "bench-hit", "value": HIT_IP, "subtype": "ip"}
        writer.upsert("ip", hit | {"misp_type": "ip-src", "to_ids": True})
        writer.commit()
    print(
        f"store: {count + 1:,} indicators built in {time.monotonic() - started:.1f} s"
    )
    return paths


# -- alert streams from real templates --------------------------------------------


def load_templates() -> tuple[list[dict], list[dict]]:
    alerts = [orjson.loads(line) for line in TEMPLATES.read_bytes().splitlines()]
    high = [a for a in alerts if a["rule"]["level"] >= 10]
    low = [a for a in alerts if a["rule"]["level"] < 10]
    return high, low


def render(template: dict, seq: int, *, hit: bool, stamp: float | None = None) -> bytes:
    alert = dict(template)
    alert["id"] = f"1796342399.{seq}"
    if hit:
        data = dict(alert.get("data") or {})
        data["srcip"] = HIT_IP
        alert["data"] = data
    if stamp is not None:
        alert["bench_written_at"] = stamp
    return orjson.dumps(alert) + b"\n"


def write_stream(path: Path, count: int, *, high_share: float, hit_share: float):
    high, low = load_templates()
    chance = random.Random(SEED)
    with open(path, "wb") as sink:
        for seq in range(count):
            is_high = chance.random() < high_share
            template = chance.choice(high if is_high else low)
            sink.write(
                render(template, seq, hit=is_high and chance.random() < hit_share)
            )
    return path.stat().st_size


# -- measurements --------------------------------------------------------------------


def config_for(root: Path, paths: dict[str, Path], alerts: Path, **tailer) -> Path:
    cfg = {
        "store": {"ips_db": str(paths["ip"]), "domains_db": str(paths["domain"]),
                  "urls_db": str(paths["url"]), "hashes_db": str(paths["hash"])},
        "tailer": {"alerts_path": str(alerts), "state_dir": str(root / "state"),
                   "start_at": "beginning", "stats_interval_s": 3600, **tailer},
        "output": {"path": str(root / "enrichment.json"), "flood_window_s": 0},
        "sync": {"log_enabled": False},
    }  # fmt: skip
    path = root / "config.yaml"
    path.write_text(json.dumps(cfg))
    return path


def throughput_child(config: str, count: int, queue) -> None:
    """Run the real loop until `count` lines are read; report rate and RSS."""
    cfg = load_config(path=config, env={})
    service = Service(cfg)
    service.start()
    started = time.monotonic()
    while service.pipeline.counts.lines < count:
        service.step()
    elapsed_s = time.monotonic() - started
    service.shutdown()
    # VmHWM, not ru_maxrss: ru_maxrss keeps the parent's size from before exec.
    rss_mb = peak_rss_mb(os.getpid())
    queue.put((count / elapsed_s, rss_mb, service.pipeline.counts.hits))


def measure_throughput(root, paths, name, count, high_share, hit_share) -> float:
    work = root / name
    work.mkdir()
    alerts = work / "alerts.json"
    size = write_stream(alerts, count, high_share=high_share, hit_share=hit_share)
    config = config_for(work, paths, alerts)
    # spawn, not fork: a forked child shares (and counts) the parent's pages.
    queue = multiprocessing.get_context("spawn").Queue()
    child = multiprocessing.get_context("spawn").Process(
        target=throughput_child, args=(str(config), count, queue)
    )
    child.start()
    rate, rss_mb, hits = queue.get()
    child.join()
    print(
        f"{name}: {count:,} alerts ({size / 1e6:.0f} MB), hits={hits:,}: "
        f"{rate:,.0f} alerts/s, peak RSS {rss_mb:.0f} MB"
    )
    return rate


def measure_ceiling(root: Path) -> None:
    """Read + orjson.loads only, for each generated stream."""
    for path in sorted(root.glob("*/alerts.json")):
        started = time.monotonic()
        count = 0
        with open(path, "rb") as source:
            for line in source:
                orjson.loads(line)
                count += 1
        rate = count / (time.monotonic() - started)
        name = path.parent.name
        print(f"ceiling {name} (read + orjson.loads only): {rate:,.0f} lines/s")


def measure_latency(root: Path, paths, seconds: float, rate: int) -> None:
    work = root / "latency"
    work.mkdir()
    alerts = work / "alerts.json"
    alerts.touch()
    config = config_for(work, paths, alerts)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MISP_", "IOC_"))}
    tailer = subprocess.Popen(
        [sys.executable, "-m", "tailer.cli", "run", "--config", str(config)],
        cwd=REPO, env=env | {"PYTHONPATH": str(REPO)}, stderr=subprocess.PIPE,
    )  # fmt: skip
    started_s = wait_for_index(tailer)
    print(f"latency: tailer loaded its index in {started_s:.1f} s")
    written, seen = run_latency_writer(alerts, work / "enrichment.json", seconds, rate)
    rss_mb = peak_rss_mb(tailer.pid)
    tailer.send_signal(signal.SIGTERM)
    tailer.wait(10)
    latencies_ms = sorted((seen[k] - written[k]) * 1000 for k in seen if k in written)
    if not latencies_ms:
        print("latency: no enrichment seen")
        return
    p50 = latencies_ms[len(latencies_ms) // 2]
    p99 = latencies_ms[int(len(latencies_ms) * 0.99)]
    print(
        f"latency at {rate:,} alerts/s ({len(latencies_ms):,} hits of "
        f"{len(written):,}): p50 {p50:.0f} ms, p99 {p99:.0f} ms, "
        f"max {latencies_ms[-1]:.0f} ms; tailer peak RSS {rss_mb:.0f} MB"
    )


def wait_for_index(tailer: subprocess.Popen, timeout_s: float = 60) -> float:
    """Seconds until the tailer logged `index_loaded`; its stderr is drained after.

    Latency is measured from then on: alerts written while the index of a
    million indicators is still loading would measure the start, not the run.
    """
    started = time.monotonic()
    for line in tailer.stderr:
        if b"index_loaded" in line or time.monotonic() - started > timeout_s:
            break
    threading.Thread(target=tailer.stderr.read, daemon=True).start()
    time.sleep(0.5)  # the follower opens alerts.json right after the index
    return time.monotonic() - started


def peak_rss_mb(pid: int) -> float:
    """VmHWM (peak resident set) of a live process, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def run_latency_writer(alerts: Path, output: Path, seconds: float, rate: int):
    """Append every alert as a hit with write(2) per line; watch the output."""
    high, _ = load_templates()
    written: dict[str, float] = {}
    seen: dict[str, float] = {}
    done = threading.Event()

    def watch() -> None:
        offset = 0
        while not done.is_set() or offset < output.stat().st_size:
            if output.exists() and output.stat().st_size > offset:
                with open(output, "rb") as source:
                    source.seek(offset)
                    chunk = source.read()
                cut = chunk.rfind(b"\n") + 1
                offset += cut
                now = time.monotonic()
                for line in chunk[:cut].splitlines():
                    seen.setdefault(orjson.loads(line)["alert"]["id"], now)
            time.sleep(0.001)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    fd = os.open(alerts, os.O_WRONLY | os.O_APPEND)
    started = time.monotonic()
    for seq in range(int(seconds * rate)):
        line = render(high[seq % len(high)], seq, hit=seq % 10 == 0)
        os.write(fd, line)
        if seq % 10 == 0:
            written[f"1796342399.{seq}"] = time.monotonic()
        ahead_s = (seq + 1) / rate - (time.monotonic() - started)
        if ahead_s > 0:
            time.sleep(ahead_s)
    os.close(fd)
    time.sleep(2)
    done.set()
    watcher.join(5)
    return written, seen


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--indicators", type=int, default=1_000_000)
    parser.add_argument("--alerts", type=int, default=400_000)
    parser.add_argument("--latency-seconds", type=float, default=20)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-tailer-") as tmp:
        root = Path(tmp)
        paths = build_store(root, args.indicators)
        measure_throughput(root, paths, "a_5pct_level10", args.alerts, 0.05, 0.0)
        measure_throughput(
            root, paths, "b_all_level10_1pct_hit", args.alerts, 1.0, 0.01
        )
        measure_ceiling(root)
        measure_latency(root, paths, args.latency_seconds, 1000)
    return 0


if __name__ == "__main__":
    sys.exit(main())
