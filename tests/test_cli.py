"""`wazuh-ioc-tailer` commands as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from tests.test_service import (
    PLANTED,
    REPO,
    clean_environ,
    plant_indicators,
    store_paths_in,
    write_config,
)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    (tmp_path / "store").mkdir()
    plant_indicators(store_paths_in(tmp_path / "store"), PLANTED)
    return write_config(tmp_path)


def tailer_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tailer.cli", *args],
        cwd=REPO,
        env=env or clean_environ(),
        capture_output=True,
        text=True,
        timeout=60,
    )


def lookup(config: Path, *values: str) -> list[dict]:
    result = tailer_cli("lookup", "--config", str(config), *values)
    assert result.returncode == 0, result.stderr
    return [orjson.loads(line) for line in result.stdout.splitlines()]


def test_lookup_ip_prints_indicator_value_and_misp_context(config):
    hits = lookup(config, "192.0.2.10")

    assert len(hits) == 1
    assert hits[0]["type"] == "ip"
    assert hits[0]["indicator"] == "192.0.2.10"
    assert hits[0]["value"] == "192.0.2.10"
    assert hits[0]["misp_type"] == "ip-src"
    assert hits[0]["event_id"] == "4242"


def test_lookup_address_inside_a_stored_network_hits_the_network(config):
    hits = lookup(config, "203.0.113.77")

    assert [hit["indicator"] for hit in hits] == ["203.0.113.0/25"]


def test_lookup_normalises_like_the_tailer(config):
    hits = lookup(
        config,
        "44D88612FEA8A8F36DE82E1278ABB02F",
        "www.Evil.Example.",
        "2001:DB8:DEAD:BEEF:0:0:0:1",
    )

    assert [hit["type"] for hit in hits] == ["hash", "domain", "ip"]
    assert [hit["value"] for hit in hits] == [
        "44D88612FEA8A8F36DE82E1278ABB02F",
        "www.Evil.Example.",
        "2001:DB8:DEAD:BEEF:0:0:0:1",
    ]


def test_lookup_url_hits_the_stored_url_and_its_host(config):
    hits = lookup(config, "http://c2.bad.test/gate.php")

    assert [(hit["type"], hit["indicator"]) for hit in hits] == [
        ("url", "http://c2.bad.test/gate.php"),
        ("domain", "c2.bad.test"),
    ]


def test_lookup_miss_prints_nothing_and_exits_zero(config):
    assert lookup(config, "192.0.2.200", "notevil.example") == []


def test_lookup_never_reports_a_near_miss_subdomain_of_a_hostname(config):
    assert lookup(config, "x.c2.bad.test") == []


def test_status_without_checkpoint_says_so(config):
    result = tailer_cli("status", "--config", str(config))

    assert result.returncode == 0
    assert "no checkpoint yet" in result.stdout


def test_run_flags_override_the_configuration(config, tmp_path):
    result = tailer_cli(
        "run",
        "--config", str(config),
        "--min-level", "7",
        "--start-at", "end",
        "--alerts", str(tmp_path / "a.json"),
        "--print-config", "json",
    )  # fmt: skip

    effective = json.loads(result.stdout)
    assert effective["tailer"]["min_level"] == 7
    assert effective["tailer"]["start_at"] == "end"
    assert effective["tailer"]["alerts_path"] == str(tmp_path / "a.json")


def test_run_is_the_default_command(config):
    result = tailer_cli("--config", str(config), "--print-config", "json")

    assert result.returncode == 0
    assert json.loads(result.stdout)["tailer"]["poll_interval_s"] == 0.05


def test_bad_configuration_lists_every_error_and_exits_two(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("tailer:\n  min_level: 99\n  start_at: middle\n")

    result = tailer_cli("status", "--config", str(bad), "--check-config")

    assert result.returncode == 2
    assert "tailer.min_level" in result.stderr
    assert "tailer.start_at" in result.stderr


def test_replay_bad_time_is_a_usage_error(config, tmp_path):
    result = tailer_cli(
        "replay", "--config", str(config), "--since", "yesterday-ish", str(tmp_path)
    )

    assert result.returncode == 2
    assert "replay time: not a time (got 'yesterday-ish')" in result.stderr


def test_api_key_never_reaches_output(config, tmp_path):
    key = "k3y-" + "s" * 36
    env = clean_environ(MISP_API_KEY=key, MISP_URL="https://127.0.0.1:1")

    result = tailer_cli(
        "status", "--config", str(config), "--print-config", "json", env=env
    )

    assert result.returncode == 0
    assert key not in result.stdout + result.stderr


def test_replay_indicators_since_last_sync_needs_a_synced_store(config, tmp_path):
    result = tailer_cli(
        "replay", "--config", str(config), "--indicators-since", "last-sync",
        str(tmp_path),
    )  # fmt: skip

    assert result.returncode == 2
    assert "the store records no sync run" in result.stderr


def test_replay_refuses_to_overwrite_the_live_enrichment_log(config, tmp_path):
    live = tmp_path / "out" / "enrichment.json"
    live.write_bytes(b'{"integration":"ioc_sqlite"}\n')

    result = tailer_cli(
        "replay", "--config", str(config), "--output", str(live), str(tmp_path)
    )

    assert result.returncode == 2
    assert "is the live enrichment log" in result.stderr
    assert live.read_bytes() == b'{"integration":"ioc_sqlite"}\n'


@pytest.mark.parametrize(
    "value", ["198.51.100.50:8080", "198.51.100.50|8080", "[198.51.100.50]:8080"]
)
def test_lookup_address_with_port_hits_a_port_qualified_indicator(config, value):
    hits = lookup(config, value)

    assert [(hit["indicator"], hit["value"]) for hit in hits] == [
        ("198.51.100.50", value)
    ]
    assert hits[0]["misp_type"] == "ip-dst|port"


def test_lookup_address_with_another_port_or_none_misses_it(config):
    assert lookup(config, "198.51.100.50:8081", "198.51.100.50") == []


def test_lookup_bracketed_ipv6_with_port_hits_the_address(config):
    hits = lookup(config, "[2001:db8:dead:beef::1]:443")

    assert [hit["indicator"] for hit in hits] == ["2001:db8:dead:beef::1"]


def test_version_names_the_program_alone():
    result = tailer_cli("--version")

    assert result.returncode == 0
    assert result.stdout.strip().startswith("wazuh-ioc-tailer ")
    assert result.stdout.split()[1][0].isdigit()
