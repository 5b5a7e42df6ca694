"""Rebuild archive/ from the source alerts (run from this directory).

Usage: python make_archive.py SOURCE_DIR
where SOURCE_DIR holds `iocs-injected/alerts.jsonl` and `alerts-real.jsonl` of
the Wazuh 4.14.1 engine corpus (see PROVENANCE.md). The output is
deterministic: gzip members carry mtime 0.
"""

import gzip
import re
import sys
from pathlib import Path

TIMESTAMP = re.compile(rb'^\{"timestamp":"2026-12-03T')


def redate(lines: list[bytes], day: int) -> list[bytes]:
    stamp = b'{"timestamp":"2026-12-%02dT' % day
    return [TIMESTAMP.sub(stamp, line) for line in lines]


def write_gzip(path: Path, body: bytes) -> bytes:
    packed = gzip.compress(body, mtime=0)
    path.write_bytes(packed)
    return packed


def main(source: Path) -> None:
    injected = (source / "iocs-injected" / "alerts.jsonl").read_bytes().splitlines()
    real = (source / "alerts-real.jsonl").read_bytes().splitlines()
    out = Path("archive/2026/Dec")
    out.mkdir(parents=True, exist_ok=True)

    def body(lines: list[bytes]) -> bytes:
        return b"".join(line + b"\n" for line in lines)

    write_gzip(out / "ossec-alerts-01.json.gz", body(redate(injected[:36], 1)))
    (out / "ossec-alerts-01.json.sum").write_text("Current checksum:\nMD5  (x)\n")
    (out / "ossec-alerts-01-001.json").write_bytes(body(redate(injected[36:56], 1)))
    packed = gzip.compress(body(redate(injected[56:86], 2)), mtime=0)
    (out / "ossec-alerts-02.json.gz").write_bytes(packed[: len(packed) * 2 // 3])
    (out / "ossec-alerts-03.json").write_bytes(body(injected[86:]))
    broken = [b'{"timestamp":"2026-12-03T16:30:00.000+0000","rule":{"level":12,']
    (out / "ossec-alerts-03-001.json").write_bytes(
        body(real[:60] + broken + real[60:120])
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
