"""Replay: archive walking, gzip reading and golden outputs."""

from __future__ import annotations

import gzip
import os
import pty
import shutil
import subprocess
import sys
import time
from datetime import date, datetime
from pathlib import Path

import orjson
import pytest

from sync.config import load_config
from tailer.replay import ArchiveError, find_pieces, parse_piece, read_lines, retrohunt
from tests.alert_writer import AnalysisdWriter
from tests.test_service import (
    HIT_IP,
    PLANTED,
    REPO,
    alert_line,
    clean_environ,
    plant_indicators,
    store_paths_in,
    write_config,
)

DATA = Path(__file__).parent / "data" / "replay"


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    """A copy of the golden tree with alerts.json hard-linked to the newest piece."""
    root = tmp_path / "alerts"
    shutil.copytree(DATA / "archive", root)
    os.link(root / "2026/Dec/ossec-alerts-03-001.json", root / "alerts.json")
    return root


def names(pieces) -> list[str]:
    return [piece.path.name for piece in pieces]


def test_parse_piece_reads_day_and_piece_number_from_path():
    piece = parse_piece(Path("/x/2025/Jul/ossec-alerts-04-012.json.gz"))

    assert (piece.day, piece.number) == (date(2025, 7, 4), 12)


def test_parse_piece_leaves_foreign_names_undated():
    piece = parse_piece(Path("/x/alerts.json"))

    assert piece.day is None


def test_walk_orders_by_date_then_piece_and_skips_sum_and_hard_link(archive):
    pieces = find_pieces([archive])

    assert names(pieces) == [
        "ossec-alerts-01.json.gz",
        "ossec-alerts-01-001.json",
        "ossec-alerts-02.json.gz",
        "ossec-alerts-03.json",
        "ossec-alerts-03-001.json",
    ]


def test_walk_skips_alerts_json_copy_equal_to_newest_piece(archive):
    (archive / "alerts.json").unlink()
    shutil.copy(archive / "2026/Dec/ossec-alerts-03-001.json", archive / "alerts.json")

    pieces = find_pieces([archive])

    assert "alerts.json" not in names(pieces)


def test_walk_keeps_alerts_json_that_differs_from_every_piece(archive):
    (archive / "alerts.json").unlink()
    (archive / "alerts.json").write_bytes(b'{"rule":{"level":12}}\n')

    pieces = find_pieces([archive])

    assert names(pieces)[-1] == "alerts.json"


def test_glob_and_explicit_files_are_read_once_in_date_order(archive):
    month = archive / "2026/Dec"

    pieces = find_pieces([month / "ossec-alerts-03*.json", month / "*01*"])

    assert names(pieces) == [
        "ossec-alerts-01.json.gz",
        "ossec-alerts-01-001.json",
        "ossec-alerts-03.json",
        "ossec-alerts-03-001.json",
    ]


def test_missing_path_names_the_argument(tmp_path):
    with pytest.raises(ArchiveError, match="nothing-here"):
        find_pieces([tmp_path / "nothing-here"])


def test_gzip_piece_yields_every_line(archive):
    lines = list(read_lines(archive / "2026/Dec/ossec-alerts-01.json.gz"))

    assert len(lines) == 36
    assert all(line.startswith(b'{"timestamp":"2026-12-01T') for line in lines)


def test_truncated_gzip_yields_complete_lines_then_names_offset(archive):
    path = archive / "2026/Dec/ossec-alerts-02.json.gz"
    lines: list[bytes] = []

    with pytest.raises(ArchiveError) as caught:
        for line in read_lines(path):
            lines.append(line)

    assert 0 < len(lines) < 30
    assert all(line.endswith(b"}") for line in lines)
    assert "ossec-alerts-02.json.gz: truncated gzip at uncompressed offset" in str(
        caught.value
    )
    assert f"(line {len(lines) + 1})" in str(caught.value)


def test_corrupt_gzip_reports_corruption(tmp_path):
    path = tmp_path / "ossec-alerts-05.json.gz"
    packed = bytearray(gzip.compress(b'{"a":1}\n' * 1000))
    packed[-8] ^= 0xFF
    path.write_bytes(bytes(packed))

    with pytest.raises(ArchiveError, match="corrupt gzip"):
        list(read_lines(path))


def test_plain_piece_drops_trailing_fragment_without_newline(tmp_path):
    path = tmp_path / "alerts.json"
    path.write_bytes(b'{"a":1}\n{"b":2}\n{"c":')

    assert list(read_lines(path)) == [b'{"a":1}', b'{"b":2}']


# -- golden outputs of `wazuh-ioc-tailer replay` ------------------------------------


FLOOD_WINDOW_S = 60


@pytest.fixture
def replay_world(tmp_path, archive):
    """Planted store; flood control at its default window, as a live tailer has."""
    (tmp_path / "store").mkdir()
    plant_indicators(store_paths_in(tmp_path / "store"), PLANTED)
    flood = {"flood_window_s": FLOOD_WINDOW_S}
    return tmp_path, write_config(tmp_path, output=flood)


def replay_cli(config: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tailer.cli", "replay", "--config", str(config), *args],
        cwd=REPO,
        env=clean_environ(),
        capture_output=True,
        timeout=60,
    )


def test_replay_of_archive_tree_matches_golden_output(replay_world, archive):
    _, config = replay_world

    result = replay_cli(config, str(archive))

    expected = (DATA / "expected-default.jsonl").read_bytes()
    assert result.stdout.decode().splitlines() == expected.decode().splitlines()
    assert result.returncode == 1
    stderr = result.stderr.decode()
    assert "ossec-alerts-02.json.gz: truncated gzip at uncompressed offset" in stderr
    assert "replay files=5 errors=1" in stderr
    assert "bad_lines=1" in stderr


def test_replay_with_one_job_writes_the_same_output(replay_world, archive):
    _, config = replay_world

    one = replay_cli(config, "--jobs", "1", str(archive))
    two = replay_cli(config, "--jobs", "2", str(archive))

    assert one.stdout == two.stdout
    assert one.stdout == (DATA / "expected-default.jsonl").read_bytes()


def test_replay_time_window_skips_files_and_alerts_outside_it(replay_world, archive):
    _, config = replay_world
    window = ("--since", "2026-12-01T16:28:15+00:00", "--until", "2026-12-02T23:59:59Z")

    result = replay_cli(config, *window, "--all-levels", "--jobs", "1", str(archive))

    expected = (DATA / "expected-window.jsonl").read_bytes()
    assert result.stdout.decode().splitlines() == expected.decode().splitlines()
    assert "replay files=3 " in result.stderr.decode()


def test_replay_output_file_and_no_progress_without_tty(replay_world, archive):
    root, config = replay_world
    target = root / "hits.jsonl"

    to_file = replay_cli(config, "--output", str(target), str(archive / "2026/Dec"))
    to_stdout = replay_cli(config, str(archive))

    assert to_file.stdout == b""
    assert target.read_bytes() == to_stdout.stdout
    assert b"\r" not in to_file.stderr


def test_replay_flood_control_keeps_one_line_per_key_and_window(replay_world, archive):
    """Repeats of (indicator, agent, rule) within the window are counted, not
    written, and reported on the next line of that key, on alert time."""
    _, config = replay_world
    window = ("--since", "2026-12-01T16:28:15+00:00", "--until", "2026-12-02T23:59:59Z")

    result = replay_cli(config, *window, "--all-levels", "--jobs", "2", str(archive))

    records = [orjson.loads(line) for line in result.stdout.splitlines()]
    first_seen: dict[tuple, float] = {}
    for record in records:
        key = flood_key(record)
        moment = alert_epoch(record)
        assert moment - first_seen.get(key, -1e12) >= FLOOD_WINDOW_S
        first_seen[key] = moment
    repeats = [record["ioc"].get("suppressed_repeats", 0) for record in records]
    assert sum(repeats) == 12
    assert "hits=45 written=21 suppressed=24" in result.stderr.decode()


def flood_key(record: dict) -> tuple:
    alert = record["alert"]
    return (record["ioc"]["indicator"], alert["agent"]["id"], alert["rule"]["id"])


def alert_epoch(record: dict) -> float:
    return datetime.strptime(
        record["alert"]["timestamp"], "%Y-%m-%dT%H:%M:%S.%f%z"
    ).timestamp()


def test_replay_marks_every_enrichment_as_replayed(replay_world, archive):
    _, config = replay_world

    result = replay_cli(config, str(archive / "2026/Dec/ossec-alerts-01.json.gz"))

    records = [orjson.loads(line) for line in result.stdout.splitlines()]
    assert records
    assert all(record["ioc"]["replay"] == "true" for record in records)
    assert result.returncode == 0


# -- retro-hunt ------------------------------------------------------------------------


def test_retrohunt_reports_new_indicator_hits_once_and_not_old_ones(tmp_path):
    (tmp_path / "store").mkdir()
    paths = store_paths_in(tmp_path / "store")
    old = {"type": "ip-src", "value": HIT_IP, "uuid": "old-1", "to_ids": True}
    plant_indicators(paths, [old])
    config_path = write_config(tmp_path, sync={"retrohunt_days": 2})
    cfg = load_config(path=config_path, env={})
    new_ip = "198.51.100.202"
    with AnalysisdWriter(tmp_path / "alerts", flush_interval_s=None) as writer:
        writer.write(alert_line(1, HIT_IP))
        writer.write(alert_line(2, new_ip))
        writer.rotate()
        writer.write(alert_line(3, new_ip))
    output = Path(cfg.output.path)
    output.write_bytes(b"")

    time.sleep(1.1)
    since = int(time.time())
    new = {"type": "ip-dst", "value": new_ip, "uuid": "new-1", "to_ids": True}
    plant_indicators(paths, [new])
    first = retrohunt(cfg, since)
    second = retrohunt(cfg, since)

    records = [orjson.loads(line) for line in output.read_bytes().splitlines()]
    assert first == 2
    assert second == 0
    assert [r["alert"]["id"] for r in records] == ["1796342399.2", "1796342399.3"]
    assert {r["ioc"]["indicator"] for r in records} == {new_ip}
    assert all(r["ioc"]["replay"] == "true" for r in records)


def test_replay_emit_appends_to_enrichment_log_and_never_twice(replay_world, archive):
    root, config = replay_world
    output = root / "out" / "enrichment.json"
    month = str(archive / "2026/Dec")

    first = replay_cli(config, "--emit", month)
    written = output.read_bytes()
    second = replay_cli(config, "--emit", month)

    assert first.stdout == b"" and second.stdout == b""
    assert written == (DATA / "expected-default.jsonl").read_bytes()
    assert output.read_bytes() == written


def test_replay_shows_progress_when_stderr_is_a_terminal(replay_world, archive):
    _, config = replay_world
    controller, terminal = pty.openpty()
    command = [sys.executable, "-m", "tailer.cli", "replay", "--config", str(config)]

    with subprocess.Popen(
        [*command, str(archive)],
        cwd=REPO,
        env=clean_environ(),
        stdout=subprocess.DEVNULL,
        stderr=terminal,
    ) as process:
        os.close(terminal)
        shown = read_terminal(controller)
        process.wait(60)

    assert b"\rfiles 5/5 " in shown
    assert b"replay files=5" in shown


def read_terminal(controller: int) -> bytes:
    shown = b""
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:
            break
        if not chunk:
            break
        shown += chunk
    os.close(controller)
    return shown


def test_replay_of_a_directory_without_alert_files_warns_and_exits_1(replay_world):
    root, config = replay_world
    (root / "empty").mkdir()
    (root / "empty" / "notes.txt").write_text("no alerts here\n")

    result = replay_cli(config, str(root / "empty"))

    stderr = result.stderr.decode()
    assert result.returncode == 1
    assert f"replay_no_alert_files path={root / 'empty'}" in stderr
    assert "no alert files" in stderr and result.stdout == b""


def test_replay_reads_jsonl_exports_from_a_foreign_directory(replay_world, archive):
    root, config = replay_world
    exports = root / "exports"
    exports.mkdir()
    month = archive / "2026/Dec"
    shutil.copy(month / "ossec-alerts-03.json", exports / "day3.jsonl")
    shutil.copy(month / "ossec-alerts-01.json.gz", exports / "day1.json.gz")
    named = replay_cli(config, str(month / "ossec-alerts-01.json.gz"),
                       str(month / "ossec-alerts-03.json"))  # fmt: skip

    result = replay_cli(config, str(exports))

    assert result.returncode == 0, result.stderr
    assert "replay files=2 " in result.stderr.decode()
    assert sorted(result.stdout.splitlines()) == sorted(named.stdout.splitlines())
    assert result.stdout


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--since", "99999999999999d"], "replay time: not a time"),
        (["--since", "0001-01-01"], "replay time: not a time"),
        (["--until", "2026-13-45"], "replay time: not a time"),
        (["--output", "/"], "replay --output: cannot write /"),
        (["--output", "/nonexistent/x.jsonl"], "replay --output: cannot write"),
    ],
)
def test_unusable_replay_option_exits_2_naming_it(
    replay_world, archive, option, message
):
    _, config = replay_world

    result = replay_cli(config, *option, str(archive))

    assert result.returncode == 2
    assert message in result.stderr.decode()
    assert "Traceback" not in result.stderr.decode()


def test_alert_time_without_offset_is_compared_not_crashed(replay_world, tmp_path):
    _, config = replay_world
    alerts = tmp_path / "naive.jsonl"
    alerts.write_text(
        '{"timestamp":"2026-12-03T16:28:14","rule":{"level":12,"id":"5712"},'
        '"id":"1.1","data":{"srcip":"192.0.2.10"}}\n'
    )

    result = replay_cli(config, "--since", "2026-01-01", str(alerts))

    assert result.returncode == 0, result.stderr.decode()
    assert b'"indicator":"192.0.2.10"' in result.stdout
