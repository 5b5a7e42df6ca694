"""Benchmark: a full sync of N synthetic MISP attributes, end to end.

Starts the MISP emulator in synthetic mode in one process, runs
`python -m sync.cli --full` into a temporary store in another, and prints the
attributes per second (wall clock of the sync process), the peak resident
memory of the largest process of the sync (the run's process or its store
writer child), and the CPU seconds of both together. Targets: >= 50,000
attributes/s and <= 200 MB. Other work on the machine lowers the rate: compare
cpu_s with duration_s and check the load average printed last.

    .venv/bin/python bench/bench_sync.py [--count 1000000] [--page-size 5000]

Run from the repository root. Uses loopback only.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
KEY = "BenchKey0123456789abcdefghijKLMNOPQRSTUV"


def start_emulator(count: int, key_file: Path) -> tuple[subprocess.Popen, str]:
    emulator = subprocess.Popen(
        [sys.executable, "-m", "tests.misp_emulator", "--port", "0"]
        + ["--synthetic", str(count), "--key-file", str(key_file)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    url = emulator.stdout.readline().strip()
    if not url.startswith("http"):
        emulator.kill()
        raise SystemExit(f"emulator: no URL on stdout (got {url!r})")
    return emulator, url


def sync_env(work: Path, url: str, page_size: int) -> dict[str, str]:
    config = work / "config.yaml"
    config.write_text("misp:\n  retries: 0\n  read_timeout_s: 600\n")
    store = work / "store"
    return {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": str(REPO),
        "WAZUH_MISP_IOC_CONFIG": str(config),
        "MISP_URL": url,
        "MISP_API_KEY": KEY,
        "MISP_LIMIT": str(page_size),
        "IPS_DB_PATH": str(store / "ips.db"),
        "DOMAINS_DB_PATH": str(store / "domains.db"),
        "URLS_DB_PATH": str(store / "urls.db"),
        "HASHES_DB_PATH": str(store / "hashes.db"),
        "IOC_ENRICHMENT_LOG": str(work / "ioc_enrichment.json"),
        "MISP_SYNC_LOG": str(work / "misp-sync.log"),
    }


def run_sync(env: dict[str, str]) -> tuple[int, float, object, str]:
    """Run one full sync; return exit status, seconds, rusage, summary."""
    started = time.monotonic()
    sync = subprocess.Popen(
        [sys.executable, "-m", "sync.cli", "--full"],
        cwd=REPO,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    stderr = sync.stderr.read()
    _, status, usage = os.wait4(sync.pid, 0)
    elapsed_s = time.monotonic() - started
    sync.returncode = os.waitstatus_to_exitcode(status)
    summary = next((ln for ln in stderr.splitlines() if "sync_done" in ln), stderr)
    return sync.returncode, elapsed_s, usage, summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--page-size", type=int, default=5000)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-sync-") as tmp:
        work = Path(tmp)
        key_file = work / "key"
        key_file.write_text(KEY)
        emulator, url = start_emulator(args.count, key_file)
        try:
            status, elapsed_s, usage, summary = run_sync(
                sync_env(work, url, args.page_size)
            )
        finally:
            emulator.send_signal(signal.SIGTERM)
            emulator.wait(timeout=30)

    rate = args.count / elapsed_s
    print(summary)
    print(f"exit_status={status}")
    print(f"attributes={args.count} page_size={args.page_size}")
    print(f"duration_s={elapsed_s:.1f} attributes_per_s={rate:,.0f}")
    print(f"peak_rss_mb={usage.ru_maxrss / 1024:.1f}")
    print(f"cpu_s={usage.ru_utime + usage.ru_stime:.1f}")
    print(f"load_average={os.getloadavg()[0]:.2f}")
    return status


if __name__ == "__main__":
    sys.exit(main())
