"""Replay: archive walking, gzip reading and golden outputs."""

from __future__ import annotations

import gzip
import os
import shutil
from datetime import date
from pathlib import Path

import pytest

from tailer.replay import ArchiveError, find_pieces, parse_piece, read_lines

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
