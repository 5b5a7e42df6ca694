"""Benchmark: store write rate, index memory and lookup rate.

Run: ``.venv/bin/python bench/bench_match.py [indicator_count] [work_dir]``.
Prints one figure per line. The index is measured in a fresh child process so
that its RSS is the tailer's (interpreter + index), not the writer's.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sync.normalize import normalize_domain, normalize_hash, normalize_ip  # noqa: E402
from sync.store import STORE_KINDS, StoreReader, StoreWriter  # noqa: E402

SHARES = {"hash": 0.4, "ip": 0.3, "domain": 0.2, "url": 0.1}
NETWORK_COUNT = 2000


def _rows(kind: str, count: int):
    for n in range(count):
        row = {"attribute_uuid": f"{kind}-{n:08d}-5185-8372", "source": "bench"}
        row |= {"event_id": str(n % 997), "tags": ["tlp:white"], "to_ids": True}
        yield row | _value(kind, n)


def _value(kind: str, n: int) -> dict:
    if kind == "hash":
        return {"value": f"{n * 2654435761 % 2**128:032x}", "subtype": "md5"}
    if kind == "ip" and n < NETWORK_COUNT:
        return {"value": f"{(n >> 8) + 20}.{n & 255}.0.0/16", "subtype": "cidr"}
    if kind == "ip":
        return {"value": f"{n >> 16 & 255 | 64}.{n >> 8 & 255}.{n & 255}.7"} | {
            "subtype": "ip"
        }
    if kind == "domain":
        return {"value": f"host{n}.bench{n % 5000}.example", "subtype": "domain"}
    return {"value": f"http://u{n % 9000}.example.net/p/{n}", "subtype": "url"}


def write_store(paths: dict, total: int) -> None:
    started = time.monotonic()
    with StoreWriter(paths, run_id=1) as writer:
        for kind, share in SHARES.items():
            for row in _rows(kind, int(total * share)):
                writer.upsert(kind, row)
        writer.commit()
    elapsed = time.monotonic() - started
    rate = total / elapsed
    print(f"store_write rows={total} seconds={elapsed:.1f} rows_per_s={rate:.0f}")


def _status_mb(field: str) -> float:
    # ru_maxrss survives exec on Linux, so read this process's own high-water mark.
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure_index(work_dir: str) -> None:
    from tailer.match import IndicatorIndex, Observable

    paths = {kind: Path(work_dir) / f"{kind}.db" for kind in STORE_KINDS}
    reader = StoreReader(paths)
    started = time.monotonic()
    index = IndicatorIndex(reader)
    build_s = time.monotonic() - started
    print(f"index_build seconds={build_s:.1f} counts={index.counts}")
    print(f"index_rss_mb={_status_mb('VmRSS'):.0f} peak_mb={_status_mb('VmHWM'):.0f}")

    misses = [
        Observable("ip", f"198.51.{n % 250}.{n % 200}", "data.srcip", "x")
        for n in range(50_000)
    ]
    misses += [
        Observable("domain", f"www.site{n}.example.org", "data.url", "x")
        for n in range(50_000)
    ]
    misses += [Observable("hash", f"{n:032x}f", "h", "x") for n in range(50_000)]
    started = time.monotonic()
    for observable in misses:
        index.match(observable)
    rate = len(misses) / (time.monotonic() - started)
    print(f"match_misses observables={len(misses)} per_s={rate:.0f}")

    hits = [
        Observable("ip", f"{n % 7 + 20}.{n % 255}.1.1", "d", "x") for n in range(5000)
    ]
    started = time.monotonic()
    found = sum(len(index.match(observable)) for observable in hits)
    rate = len(hits) / (time.monotonic() - started)
    print(f"match_cidr_hits observables={len(hits)} hits={found} per_s={rate:.0f}")


def measure_normalize() -> None:
    samples = [
        (normalize_ip, "198.51.100.23"),
        (normalize_ip, "2001:db8:dead:beef:0:0:0:1"),
        (normalize_domain, "c2.bad.test"),
        (normalize_domain, "C2.Bad.Test."),
        (normalize_hash, "44d88612fea8a8f36de82e1278abb02f"),
        (normalize_hash, "44D88612FEA8A8F36DE82E1278ABB02F"),
    ]
    for function, text in samples:
        started = time.monotonic()
        for _ in range(200_000):
            function(text)
        rate = 200_000 / (time.monotonic() - started)
        print(f"{function.__name__} input={text!r} per_s={rate:.0f}")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--index":
        measure_index(sys.argv[2])
        return
    total = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    work_dir = sys.argv[2] if len(sys.argv) > 2 else tempfile.mkdtemp(prefix="bench-")
    paths = {kind: Path(work_dir) / f"{kind}.db" for kind in STORE_KINDS}
    if not paths["hash"].exists():
        write_store(paths, total)
    subprocess.run([sys.executable, __file__, "--index", work_dir], check=True)
    measure_normalize()


if __name__ == "__main__":
    main()
