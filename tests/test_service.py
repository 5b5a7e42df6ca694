"""The run loop: sd_notify, signals, rotation, restart, reload, bad input."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from sync.normalize import indicators_from_misp
from sync.store import STORE_KINDS, StoreWriter
from tailer.notify import Notifier, notify_address, watchdog_interval_s
from tests.alert_writer import AnalysisdWriter

REPO = Path(__file__).resolve().parent.parent
DATA = Path(__file__).parent / "data"
PLANTED = json.loads((DATA / "iocs-injected" / "indicators.json").read_text())
HIT_IP = "192.0.2.10"
MISS_IP = "192.0.2.77"
CONFIG_ENV_PREFIXES = ("MISP_", "IOC_", "WAZUH_", "CREDENTIALS_DIRECTORY")


# -- helpers shared with the other service-level test modules ------------------


def plant_indicators(paths: dict[str, Path], attributes: list[dict]) -> None:
    """Store MISP-style attributes the way a sync does (normalised rows)."""
    with StoreWriter(paths) as writer:
        for attribute in attributes:
            values = indicators_from_misp(attribute["type"], attribute["value"])
            for number, indicator in enumerate(values):
                uuid = attribute["uuid"] + (f"#{number}" if number else "")
                writer.upsert(
                    indicator.kind,
                    {
                        "attribute_uuid": uuid,
                        "value": indicator.value,
                        "raw_value": attribute["value"],
                        "subtype": indicator.subtype,
                        "port": indicator.port,
                        "misp_type": attribute["type"],
                        "category": attribute.get("category"),
                        "to_ids": attribute.get("to_ids"),
                        "event_id": attribute.get("event_id"),
                    },
                )
        writer.commit()


def store_paths_in(root: Path) -> dict[str, Path]:
    return {kind: root / f"{kind}.db" for kind in STORE_KINDS}


def write_config(root: Path, **sections: dict) -> Path:
    """A YAML config with everything under `root`; `sections` override keys."""
    paths = store_paths_in(root / "store")
    cfg = {
        "store": {f"{k}s_db" if k != "hash" else "hashes_db": str(p)
                  for k, p in paths.items()},
        "tailer": {
            "alerts_path": str(root / "alerts" / "alerts.json"),
            "state_dir": str(root / "state"),
            "start_at": "beginning",
            "poll_interval_s": 0.05,
            "reload_interval_s": 0.5,
            "stats_interval_s": 1,
        },
        "output": {"path": str(root / "out" / "enrichment.json"),
                   "flood_window_s": 0},
        "sync": {"log_enabled": False},
    }  # fmt: skip
    for section, values in sections.items():
        cfg.setdefault(section, {}).update(values)
    (root / "out").mkdir(parents=True, exist_ok=True)
    (root / "alerts").mkdir(parents=True, exist_ok=True)
    path = root / "config.yaml"
    path.write_text(json.dumps(cfg))
    return path


def clean_environ(**extra: str) -> dict[str, str]:
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(CONFIG_ENV_PREFIXES) and not name.endswith("_DB_PATH")
    }
    env["PYTHONPATH"] = str(REPO)
    env.update(extra)
    return env


def alert_line(seq: int, ip: str = MISS_IP, *, level: int = 10, **extra) -> bytes:
    """An alert in analysisd's key order carrying `ip` as data.srcip."""
    alert = {
        "timestamp": "2026-12-03T12:00:00.000+0000",
        "rule": {"level": level, "description": "test", "id": "5712"},
        "agent": {"id": f"{seq % 7:03d}", "name": "agent"},
        "manager": {"name": "wazuh-manager"},
        "id": f"1796342399.{seq}",
        "decoder": {"name": "sshd"},
        "data": {"srcip": ip},
        "location": "/var/log/auth.log",
        **extra,
    }
    return orjson.dumps(alert)


def read_output(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line]


def hit_ids(path: Path) -> list[str]:
    return [record["alert"]["id"] for record in read_output(path)]


def wait_until(predicate: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


class Tailer:
    """`wazuh-ioc-tailer run` as a real subprocess, stderr kept in a file."""

    def __init__(self, config: Path, **env: str) -> None:
        self.config = config
        self.log_path = config.parent / f"tailer-{time.monotonic_ns()}.log"
        self.env = clean_environ(**env)
        self.proc: subprocess.Popen | None = None

    def start(self) -> Tailer:
        self.log_file = open(self.log_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tailer.cli", "run", "--config", str(self.config)],
            cwd=REPO,
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=self.log_file,
        )
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, text: str, timeout_s: float = 10.0) -> bool:
        return wait_until(lambda: text in self.log(), timeout_s)

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 10.0) -> int:
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout_s)
        self.log_file.close()
        return code

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.log_file.close()


@pytest.fixture
def world(tmp_path: Path):
    """A store with the planted indicators, a config, and a tailer to start."""
    (tmp_path / "store").mkdir()
    plant_indicators(store_paths_in(tmp_path / "store"), PLANTED)
    config = write_config(tmp_path)
    tailers: list[Tailer] = []

    def start(**env: str) -> Tailer:
        tailers.append(Tailer(config, **env).start())
        return tailers[-1]

    yield tmp_path, config, start
    for tailer in tailers:
        tailer.kill()


def output_of(root: Path) -> Path:
    return root / "out" / "enrichment.json"


@pytest.fixture
def listener(tmp_path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify.sock")
    sock.bind(path)
    sock.settimeout(2)
    yield path, sock
    sock.close()


def test_ready_and_status_reach_the_socket(listener):
    path, sock = listener
    notifier = Notifier.from_env({"NOTIFY_SOCKET": path})

    notifier.ready("tailing")
    notifier.status("lag_bytes=0")

    assert sock.recv(4096) == b"READY=1\nSTATUS=tailing"
    assert sock.recv(4096) == b"STATUS=lag_bytes=0"


def test_abstract_socket_name_gets_a_leading_nul():
    name = f"@wazuh-ioc-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name[1:].encode())
    sock.settimeout(2)

    Notifier.from_env({"NOTIFY_SOCKET": name}).stopping()

    assert sock.recv(4096) == b"STOPPING=1"
    sock.close()


def test_without_notify_socket_nothing_is_sent():
    assert Notifier.from_env({}).send("READY=1") is False


def test_watchdog_pings_at_half_the_period(listener):
    path, sock = listener
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "4000000"}
    notifier = Notifier.from_env(env)

    notifier.ping_if_due(now=100.0)
    notifier.ping_if_due(now=101.0)
    notifier.ping_if_due(now=102.0)

    assert notifier.watchdog_s == 2.0
    assert sock.recv(4096) == b"WATCHDOG=1"
    assert sock.recv(4096) == b"WATCHDOG=1"
    sock.setblocking(False)
    with pytest.raises(BlockingIOError):
        sock.recv(4096)


def test_watchdog_for_another_pid_is_ignored():
    env = {"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"}

    assert watchdog_interval_s(env) is None


def test_relative_socket_path_is_refused():
    assert notify_address({"NOTIFY_SOCKET": "relative.sock"}) is None


# -- the run loop, as a real subprocess ---------------------------------------------


def test_hits_across_rotations_are_written_once_each(world):
    root, _, start = world
    expected = []

    with AnalysisdWriter(root / "alerts", flush_interval_s=0.05) as writer:
        tailer = start()
        assert tailer.wait_log("follow_start")
        for seq in range(300):
            hit = seq % 10 == 0
            writer.write(alert_line(seq, HIT_IP if hit else MISS_IP))
            expected += [f"1796342399.{seq}"] if hit else []
            if seq in (100, 200):
                writer.rotate()

        assert wait_until(lambda: len(hit_ids(output_of(root))) >= 30, 15)
    time.sleep(0.5)

    assert sorted(hit_ids(output_of(root))) == sorted(expected)
    assert tailer.stop() == 0


def test_sigterm_exits_zero_within_two_seconds_with_checkpoint_saved(world):
    root, config, start = world
    with AnalysisdWriter(root / "alerts", flush_interval_s=None) as writer:
        for seq in range(2000):
            writer.write(alert_line(seq, HIT_IP if seq == 1999 else MISS_IP))
    tailer = start()
    assert wait_until(lambda: len(hit_ids(output_of(root))) == 1)

    began = time.monotonic()
    code = tailer.stop(signal.SIGTERM)
    elapsed_s = time.monotonic() - began

    assert code == 0
    assert elapsed_s < 2.0
    status = run_cli("status", "--config", str(config))
    size = (root / "alerts" / "alerts.json").stat().st_size
    assert f"offset={size}" in status.stdout
    assert "bytes_behind: 0" in status.stdout


def test_restart_after_rotation_while_down_resumes_in_old_piece(world):
    root, _, start = world
    writer = AnalysisdWriter(root / "alerts", flush_interval_s=None)
    for seq in range(50):
        writer.write(alert_line(seq, HIT_IP if seq % 5 == 0 else MISS_IP))
    writer.flush()
    tailer = start()
    assert wait_until(lambda: len(hit_ids(output_of(root))) == 10)
    assert tailer.stop() == 0

    # While the tailer is down: more lines in the old piece, then two rotations.
    for seq in range(50, 150):
        writer.write(alert_line(seq, HIT_IP if seq % 5 == 0 else MISS_IP))
        if seq in (80, 120):
            writer.rotate()
    writer.close()
    start()

    assert wait_until(lambda: len(hit_ids(output_of(root))) >= 30)
    time.sleep(0.5)
    ids = hit_ids(output_of(root))
    assert sorted(ids) == sorted(f"1796342399.{n}" for n in range(0, 150, 5))


def test_sighup_reloads_config_and_reopens_rotated_output(world):
    root, config, start = world
    with AnalysisdWriter(root / "alerts", flush_interval_s=0.05) as writer:
        tailer = start()
        writer.write(alert_line(1, HIT_IP))
        assert wait_until(lambda: len(hit_ids(output_of(root))) == 1)

        output_of(root).rename(root / "out" / "enrichment.json.1")
        settings = json.loads(config.read_text())
        settings["tailer"]["min_level"] = 3
        config.write_text(json.dumps(settings))
        tailer.proc.send_signal(signal.SIGHUP)
        assert tailer.wait_log("reload_applied")
        writer.write(alert_line(2, HIT_IP, level=5))

        assert wait_until(lambda: hit_ids(output_of(root)) == ["1796342399.2"])
    assert tailer.stop() == 0
    assert "output_reopened" in tailer.log()


def test_missing_alerts_file_is_waited_for_without_exiting(world):
    root, _, start = world
    tailer = start()
    time.sleep(1.0)

    assert tailer.proc.poll() is None
    with AnalysisdWriter(root / "alerts", flush_interval_s=0.05) as writer:
        writer.write(alert_line(7, HIT_IP))
        assert wait_until(lambda: hit_ids(output_of(root)) == ["1796342399.7"])
    assert tailer.stop() == 0


def test_missing_store_is_retried_until_it_appears(tmp_path):
    config = write_config(tmp_path)
    with AnalysisdWriter(tmp_path / "alerts", flush_interval_s=None) as writer:
        writer.write(alert_line(3, HIT_IP))
    tailer = Tailer(config).start()
    try:
        assert tailer.wait_log("open_failed what=store")
        assert tailer.proc.poll() is None

        (tmp_path / "store").mkdir()
        plant_indicators(store_paths_in(tmp_path / "store"), PLANTED)

        assert wait_until(lambda: hit_ids(output_of(tmp_path)) == ["1796342399.3"], 15)
        assert tailer.stop() == 0
    finally:
        tailer.kill()


def test_alerts_written_while_the_store_is_missing_are_matched_later(tmp_path):
    config = write_config(tmp_path, tailer={"start_at": "end"})
    with AnalysisdWriter(tmp_path / "alerts", flush_interval_s=None) as writer:
        writer.write(alert_line(3, HIT_IP))
        writer.flush()
        tailer = Tailer(config).start()
        try:
            assert tailer.wait_log("open_failed what=store")
            writer.write(alert_line(4, HIT_IP))
            writer.flush()

            (tmp_path / "store").mkdir()
            plant_indicators(store_paths_in(tmp_path / "store"), PLANTED)

            assert wait_until(lambda: hit_ids(output_of(tmp_path)) != [], 15)
            assert tailer.stop() == 0
            assert hit_ids(output_of(tmp_path)) == ["1796342399.4"]
        finally:
            tailer.kill()


def test_bad_lines_are_counted_and_their_neighbours_kept(world):
    root, config, start = world
    with AnalysisdWriter(root / "alerts", flush_interval_s=None) as writer:
        writer.write(alert_line(1, HIT_IP))
        writer.write(b'{"timestamp":"x","rule":{"level":12,"id":"1"')
        writer.write(b'{"rule":{"level":12},"data":{"srcip":"\xff\xfe"}}')
        writer.write(b'[{"rule":{"level":12}}]')
        writer.write(alert_line(2, HIT_IP))
    tailer = start()

    assert wait_until(lambda: len(hit_ids(output_of(root))) == 2)
    assert tailer.stop() == 0
    assert hit_ids(output_of(root)) == ["1796342399.1", "1796342399.2"]
    assert "bad_lines=3" in run_cli("status", "--config", str(config)).stdout
    assert "reason=invalid_json" in tailer.log()


def test_own_enrichment_alerts_are_skipped(world):
    root, _, start = world
    own = orjson.dumps(
        {
            "timestamp": "2026-12-03T12:00:01.000+0000",
            "rule": {"level": 12, "id": "101080", "groups": ["misp", "threatintel"]},
            "agent": {"id": "000", "name": "wazuh-manager"},
            "id": "1796342400.1",
            "decoder": {"name": "json"},
            "data": {"integration": "ioc_sqlite", "srcip": HIT_IP},
            "location": str(output_of(root)),
        }
    )
    with AnalysisdWriter(root / "alerts", flush_interval_s=None) as writer:
        writer.write(own)
        writer.write(alert_line(9, HIT_IP))
    tailer = start()

    assert wait_until(lambda: len(hit_ids(output_of(root))) >= 1)
    time.sleep(0.3)
    assert hit_ids(output_of(root)) == ["1796342399.9"]
    assert tailer.stop() == 0


def test_new_indicator_is_used_within_ten_seconds_of_the_store_commit(world):
    root, _, start = world
    new_ip = "198.51.100.201"
    attribute = {"type": "ip-dst", "value": new_ip, "uuid": "new-1", "to_ids": True}

    with AnalysisdWriter(root / "alerts", flush_interval_s=0.05) as writer:
        tailer = start()
        assert tailer.wait_log("follow_start")
        committed = time.monotonic()
        plant_indicators(store_paths_in(root / "store"), [attribute])
        seq = 100
        while time.monotonic() - committed < 10 and not hit_ids(output_of(root)):
            writer.write(alert_line(seq, new_ip))
            seq += 1
            time.sleep(0.2)
        used_after_s = time.monotonic() - committed

    assert hit_ids(output_of(root)), "the new indicator was never matched"
    assert used_after_s < 10
    assert tailer.stop() == 0


def test_ready_is_notified_to_systemd(world, tmp_path):
    _, _, start = world
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.settimeout(10)

    tailer = start(NOTIFY_SOCKET=str(tmp_path / "notify.sock"))

    assert sock.recv(4096).startswith(b"READY=1")
    assert tailer.stop() == 0
    sock.close()


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tailer.cli", *args],
        cwd=REPO,
        env=clean_environ(),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_ready_comes_at_once_and_status_says_what_is_awaited(tmp_path):
    config = write_config(tmp_path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.settimeout(10)
    tailer = Tailer(config, NOTIFY_SOCKET=str(tmp_path / "notify.sock")).start()
    try:
        first = sock.recv(4096)
        second = sock.recv(4096)

        assert first.startswith(b"READY=1")
        assert second.startswith(b"STATUS=waiting for store")
        assert tailer.stop() == 0
    finally:
        tailer.kill()
        sock.close()


def test_unwritable_output_is_retried_and_no_hit_is_lost(world):
    root, _, start = world
    out_dir = root / "out"
    out_dir.rename(root / "out-away")
    with AnalysisdWriter(root / "alerts", flush_interval_s=None) as writer:
        writer.write(alert_line(1, HIT_IP))
        writer.write(alert_line(2, HIT_IP))
    tailer = start()

    assert tailer.wait_log("loop_error")
    assert tailer.proc.poll() is None
    (root / "out-away").rename(out_dir)

    assert wait_until(lambda: len(hit_ids(output_of(root))) == 2, 15)
    time.sleep(0.5)
    assert hit_ids(output_of(root)) == ["1796342399.1", "1796342399.2"]
    assert tailer.stop() == 0


def test_sighup_with_broken_config_keeps_running_on_the_old_one(world):
    root, config, start = world
    with AnalysisdWriter(root / "alerts", flush_interval_s=0.05) as writer:
        tailer = start()
        assert tailer.wait_log("follow_start")
        config.write_text("tailer:\n  min_level: 99\n")
        tailer.proc.send_signal(signal.SIGHUP)
        assert tailer.wait_log("reload_failed")

        writer.write(alert_line(4, HIT_IP))
        assert wait_until(lambda: hit_ids(output_of(root)) == ["1796342399.4"])
    assert tailer.stop() == 0
    assert "tailer.min_level" in tailer.log()
