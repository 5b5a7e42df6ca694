"""Reporting one sync run: the summary log line, the sync log line, and the
health line written into the enrichment log after every run.

Wazuh reads the enrichment log through a `<localfile>` JSON reader, so the
health of the IOC store reaches the manager (and its dashboards) the same way
the hits do. Every value is a scalar: Wazuh does not flatten arrays, and a
boolean is written as the string "true"/"false" so rules can match it as text.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from sync.logs import kv, mask_secrets
from sync.store import STORE_KINDS

log = logging.getLogger(__name__)

HEALTH_FILE_MODE = 0o640
HEALTH_STATUSES = ("ok", "failed", "incomplete")
# Beside the store and its lock: the store records only committed runs, so the
# outcome of a failed run (which leaves the store untouched) is kept here.
LAST_ATTEMPT_NAME = ".last-attempt.json"


@dataclass(frozen=True)
class SyncHealth:
    """What one run tells the manager about the store."""

    status: str
    mode: str
    source: str
    error: str = ""
    indicators: int = 0
    stored: int = 0
    removed: int = 0
    cursor: int = 0
    last_success: int = 0


@dataclass(frozen=True)
class SyncReport:
    """The outcome of one run, as logged, appended to the sync log and status."""

    mode: str
    result: str
    source: str
    started_at: int
    duration_s: float
    pulled: int = 0
    pages: int = 0
    stored: dict[str, int] = field(default_factory=dict)
    removed: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    indicators: int = 0
    cursor: int | None = None
    last_success: int = 0
    error: str = ""
    changed: bool = False

    def summary_fields(self) -> dict[str, object]:
        fields: dict[str, object] = {
            "mode": self.mode,
            "result": self.result,
            "source": self.source,
            "pulled": self.pulled,
        }
        fields |= {f"stored_{k}": self.stored.get(k, 0) for k in STORE_KINDS}
        fields |= {f"removed_{k}": self.removed.get(k, 0) for k in STORE_KINDS}
        fields |= {f"skipped_{r}": n for r, n in sorted(self.skipped.items())}
        fields |= {
            "indicators": self.indicators,
            "pages": self.pages,
            "duration_s": round(self.duration_s, 3),
            "cursor": self.cursor,
        }
        if self.error:
            fields["error"] = self.error
        return fields


def publish_report(cfg: Any, report: SyncReport, *, now: float) -> None:
    """Log the summary line, append the sync log line and the health line."""
    level = logging.INFO if report.result == "ok" else logging.WARNING
    if report.result == "failed":
        level = logging.ERROR
    log.log(level, kv("sync_done", **report.summary_fields()))
    stored_nothing = not sum(report.stored.values()) and not report.indicators
    if report.result != "failed" and stored_nothing:
        log.warning(
            kv(
                "sync_matched_nothing",
                source=report.source,
                hint="check MISP_TAG_FILTER, MISP_TO_IDS_ONLY, MISP_PUBLISHED_ONLY,"
                " misp.types and the MISP user's permissions",
            )
        )
    if cfg.sync.log_enabled:
        _append_sync_log(cfg.sync.log_path, report, now=now)
    save_last_attempt(last_attempt_path(cfg), report, now=now)
    write_health(
        cfg.output.path,
        health_record(_health(report), now=now, stale_after_s=cfg.sync.stale_after_s),
    )


def _health(report: SyncReport) -> SyncHealth:
    return SyncHealth(
        status=report.result,
        mode=report.mode,
        source=report.source,
        error=report.error,
        indicators=report.indicators,
        stored=sum(report.stored.values()),
        removed=sum(report.removed.values()),
        cursor=report.cursor or 0,
        last_success=report.last_success,
    )


def _append_sync_log(path: str, report: SyncReport, *, now: float) -> None:
    line = orjson.dumps({"time": int(now), **asdict(report)}) + b"\n"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
    except OSError as err:
        log.error(kv("sync_log_write_failed", path=path, error=err.strerror))


def last_attempt_path(cfg: Any) -> Path:
    """The file holding the outcome of the last run, beside the IP database."""
    return Path(cfg.store.ips_db).parent / LAST_ATTEMPT_NAME


def save_last_attempt(path: Path, report: SyncReport, *, now: float) -> None:
    """Replace the last-attempt file atomically; a failure is logged only."""
    record = {
        "time": int(now),
        "result": report.result,
        "mode": report.mode,
        "source": report.source,
        "error": mask_secrets(report.error),
    }
    partial = path.with_name(path.name + ".tmp")
    try:
        partial.write_bytes(orjson.dumps(record) + b"\n")
        os.replace(partial, path)
    except OSError as err:
        log.warning(kv("last_attempt_write_failed", path=path, error=err.strerror))


def load_last_attempt(path: Path) -> dict | None:
    """The last run's outcome, or None when no run has recorded one."""
    try:
        record = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    return record if isinstance(record, dict) else None


def health_record(health: SyncHealth, *, now: float, stale_after_s: int) -> dict:
    """Build the JSON object of one health line."""
    if health.status not in HEALTH_STATUSES:
        raise ValueError(
            f"health status: unknown (got {health.status!r}); "
            f"expected one of {', '.join(HEALTH_STATUSES)}"
        )
    stale = health.last_success == 0 or now - health.last_success > stale_after_s
    return {
        "integration": "ioc_sqlite",
        "ioc_sync": {
            "status": health.status,
            "mode": health.mode,
            "error": mask_secrets(health.error),
            "indicators": health.indicators,
            "stored": health.stored,
            "removed": health.removed,
            "cursor": health.cursor,
            "last_success": health.last_success,
            "stale": "true" if stale else "false",
            "source": health.source,
        },
    }


def write_health(path: str, record: dict) -> bool:
    """Append `record` as one line with one write; False (logged) on failure.

    A health line that cannot be written must not turn a good sync into a
    failed one, so errors are logged, not raised.
    """
    line = orjson.dumps(record) + b"\n"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, HEALTH_FILE_MODE)
    except OSError as err:
        log.error(kv("health_write_failed", path=path, error=err.strerror))
        return False

    try:
        written = os.write(fd, line)
    except OSError as err:
        log.error(kv("health_write_failed", path=path, error=err.strerror))
        return False
    finally:
        os.close(fd)

    if written != len(line):
        log.error(kv("health_write_short", path=path, bytes=written, of=len(line)))
        return False
    return True
