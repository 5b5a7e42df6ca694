"""`misp-ioc-sync` as a real process: exit codes, lock, signals, status."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from tests.misp_emulator import DEFAULT_API_KEY, MispEmulator
from tests.test_sync_engine import NOW, SEDNIT, dump_store, stored_values, sync_env

REPO = Path(__file__).resolve().parent.parent
INFOBLOX = Path(__file__).parent / "data" / "feeds" / "infoblox"


def cli_env(tmp_path: Path, url: str, **extra: str) -> dict[str, str]:
    config = tmp_path / "config.yaml"
    config.write_text("misp:\n  retries: 0\n  read_timeout_s: 30\n")
    base = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(REPO)}
    return base | sync_env(tmp_path, url) | extra


def start_cli(env: dict, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "sync.cli", *args],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_cli(env: dict, *args: str) -> subprocess.CompletedProcess:
    process = start_cli(env, *args)
    stdout, stderr = process.communicate(timeout=60)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def wait_for_requests(misp: MispEmulator, count: int, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while len(misp.requests) < count:
        assert time.monotonic() < deadline, f"emulator saw {len(misp.requests)}"
        time.sleep(0.02)


def child_pids(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(p) for p in children.split()]


def wait_gone(pid: int, timeout_s: float = 10) -> bool:
    """True once `pid` no longer runs (a zombie counts as gone)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return True
        if state == "Z":
            return True
        time.sleep(0.05)
    return False


def health_lines(tmp_path: Path) -> list[dict]:
    text = (tmp_path / "ioc_enrichment.json").read_text()
    return [json.loads(line) for line in text.splitlines()]


@pytest.fixture
def misp():
    with MispEmulator() as emulator:
        emulator.set_clock(NOW)
        rows = orjson.loads((SEDNIT / "all.json").read_bytes())["response"]
        emulator.sednit_uuids = emulator.load_attributes(rows["Attribute"])
        yield emulator


def test_sync_then_status_prints_counts_per_kind_and_source(tmp_path, misp):
    env = cli_env(tmp_path, misp.url)

    synced = run_cli(env)
    status = run_cli(env, "status")

    assert synced.returncode == 0, synced.stderr
    assert "sync_done mode=full result=ok" in synced.stderr
    assert status.returncode == 0
    source = misp.url.split("//", 1)[1]
    lines = status.stdout.splitlines()
    assert any(line.split() == ["hash", source, "37"] for line in lines)
    assert any(line.split() == ["domain", source, "19"] for line in lines)
    assert any(line.split() == ["ip", source, "12"] for line in lines)
    assert any(line.startswith("last_run ") and "result=ok" in line for line in lines)


def test_status_without_a_store_exits_1(tmp_path, misp):
    result = run_cli(cli_env(tmp_path, misp.url), "status")

    assert result.returncode == 1
    assert "database missing" in result.stderr


def test_missing_url_and_key_exit_2_naming_both(tmp_path, misp):
    env = cli_env(tmp_path, misp.url)
    del env["MISP_URL"], env["MISP_API_KEY"]

    result = run_cli(env)

    assert result.returncode == 2
    assert "MISP_URL" in result.stderr and "MISP_API_KEY" in result.stderr
    assert not (tmp_path / "store").exists()


def test_refused_key_exits_1_and_key_is_in_neither_stderr_nor_health(tmp_path, misp):
    good = cli_env(tmp_path, misp.url)
    assert run_cli(good).returncode == 0
    before = dump_store(tmp_path / "store")
    wrong_key = "Wrong0key" * 4 + "abcd"

    result = run_cli(cli_env(tmp_path, misp.url, MISP_API_KEY=wrong_key))

    assert result.returncode == 1
    assert "result=failed" in result.stderr and "MispAuthError" in result.stderr
    assert dump_store(tmp_path / "store") == before
    health = (tmp_path / "ioc_enrichment.json").read_text()
    assert json.loads(health.splitlines()[-1])["ioc_sync"]["status"] == "failed"
    for text in (result.stderr, result.stdout, health):
        assert wrong_key not in text and DEFAULT_API_KEY not in text


def key_route_env(tmp_path: Path, url: str, route: str, key: str) -> dict[str, str]:
    """Environment that hands `key` to the sync by one of its three routes."""
    env = cli_env(tmp_path, url)
    del env["MISP_API_KEY"]
    if route == "environment":
        return env | {"MISP_API_KEY": key}
    if route == "key_file":
        key_file = tmp_path / "misp_api_key"
        key_file.write_text(key + "\n")
        key_file.chmod(0o600)
        return env | {"MISP_API_KEY_FILE": str(key_file)}
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "misp_api_key").write_text(key)
    return env | {"CREDENTIALS_DIRECTORY": str(credentials)}


@pytest.mark.parametrize("route", ["environment", "key_file", "credentials"])
def test_refused_key_from_each_route_stays_out_of_debug_output(tmp_path, misp, route):
    refused_key = "Refused" + route[:3].capitalize() + "0" * 30

    result = run_cli(
        key_route_env(tmp_path, misp.url, route, refused_key), "--log-level", "DEBUG"
    )

    assert result.returncode == 1
    assert "MISP refused the API key (HTTP 403)" in result.stderr
    assert "level=DEBUG" in result.stderr or "DEBUG " in result.stderr
    health = (tmp_path / "ioc_enrichment.json").read_text()
    assert json.loads(health.splitlines()[-1])["ioc_sync"]["status"] == "failed"
    for text in (result.stderr, result.stdout, health):
        assert refused_key not in text


def test_second_concurrent_run_exits_1_with_the_lock_message(tmp_path, misp):
    env = cli_env(tmp_path, misp.url)
    misp.inject("stall", 1, seconds=3)
    first = start_cli(env)
    wait_for_requests(misp, 1)

    second = run_cli(env)
    first_out, first_err = first.communicate(timeout=60)

    lock = tmp_path / "store" / ".sync.lock"
    assert second.returncode == 1
    assert f"another sync is running (lock {lock} held)" in second.stderr
    assert first.returncode == 0, first_err


def synced_with_pending_edits(tmp_path: Path, misp: MispEmulator):
    """A synced store, then 40 edits in MISP that a next run would apply.

    Returns the environment and a dump of the store before that run.
    """
    env = cli_env(tmp_path, misp.url)
    assert run_cli(env).returncode == 0
    misp.set_clock(NOW + 60)
    for uuid in misp.sednit_uuids[:40]:
        misp.edit_attribute(uuid, to_ids=False)
    misp.clear_requests()
    return env, dump_store(tmp_path / "store")


def test_sigkill_mid_page_leaves_store_content_identical(tmp_path, misp):
    env, before = synced_with_pending_edits(tmp_path, misp)
    misp.inject("stall", 2, seconds=0)
    misp.inject("stall", 1, seconds=15)
    killed = start_cli(env, "--full")
    wait_for_requests(misp, 3)
    time.sleep(0.3)
    writers = child_pids(killed.pid)

    killed.send_signal(signal.SIGKILL)
    killed.communicate(timeout=30)
    writers_left = [pid for pid in writers if wait_gone(pid) is False]
    after_kill = dump_store(tmp_path / "store")
    rerun = run_cli(env, "--full")

    assert killed.returncode == -signal.SIGKILL
    assert len(writers) == 1 and writers_left == []
    assert after_kill == before
    assert rerun.returncode == 0, rerun.stderr
    assert "result=ok" in rerun.stderr
    assert dump_store(tmp_path / "store") != before


def test_sigterm_mid_pull_fails_the_run_and_changes_nothing(tmp_path, misp):
    env, before = synced_with_pending_edits(tmp_path, misp)
    misp.inject("stall", 1, seconds=0)
    misp.inject("stall", 1, seconds=15)
    stopped = start_cli(env, "--full")
    wait_for_requests(misp, 2)
    time.sleep(0.3)

    stopped.send_signal(signal.SIGTERM)
    _, stderr = stopped.communicate(timeout=30)

    assert stopped.returncode == 1
    assert "result=failed" in stderr and "SIGTERM" in stderr
    assert dump_store(tmp_path / "store") == before
    assert health_lines(tmp_path)[-1]["ioc_sync"]["status"] == "failed"


def test_feed_directory_sync_needs_no_misp_settings(tmp_path, misp):
    env = cli_env(tmp_path, misp.url)
    del env["MISP_URL"], env["MISP_API_KEY"]

    result = run_cli(env, "--feed", str(INFOBLOX))
    status = run_cli(env, "status")

    assert result.returncode == 0, result.stderr
    assert "mode=feed result=ok source=infoblox" in result.stderr
    rows = [line.split() for line in status.stdout.splitlines()]
    assert ["hash", "infoblox", "15"] in rows
    assert len(stored_values(tmp_path / "store", "url")) == 5


def test_check_config_without_url_and_key_exits_2_like_a_run(tmp_path, misp):
    env = cli_env(tmp_path, misp.url)
    del env["MISP_URL"], env["MISP_API_KEY"]

    checked = run_cli(env, "--check-config")
    with_feed = run_cli(env, "--check-config", "--feed", str(INFOBLOX))

    assert checked.returncode == 2
    assert "env MISP_URL: not set" in checked.stderr
    assert "env MISP_API_KEY: not set" in checked.stderr
    assert "configuration ok" not in checked.stdout
    assert with_feed.returncode == 0
    assert with_feed.stdout.strip() == "configuration ok"


def test_status_shows_a_failed_attempt_after_the_last_success(tmp_path, misp):
    assert run_cli(cli_env(tmp_path, misp.url)).returncode == 0
    wrong_key = "Wrong0key" * 4 + "abcd"
    failed = run_cli(cli_env(tmp_path, misp.url, MISP_API_KEY=wrong_key))

    status = run_cli(cli_env(tmp_path, misp.url), "status")

    assert failed.returncode == 1
    lines = status.stdout.splitlines()
    (attempt,) = [line for line in lines if line.startswith("last_attempt ")]
    assert "result=failed mode=" in attempt and "MispAuthError" in attempt
    (run,) = [line for line in lines if line.startswith("last_run ")]
    assert "result=ok" in run
    assert not any(line.startswith("last_success never") for line in lines)
    assert wrong_key not in status.stdout


def test_status_of_a_feed_store_prints_cursor_none(tmp_path, misp):
    env = cli_env(tmp_path, misp.url)
    assert run_cli(env, "--feed", str(INFOBLOX)).returncode == 0

    status = run_cli(env, "status")

    lines = status.stdout.splitlines()
    assert "cursor none" in lines
    assert any(
        line.startswith("last_attempt ") and "result=ok" in line for line in lines
    )
