"""The sync health line written into the enrichment log after every run.

Wazuh reads the enrichment log through a `<localfile>` JSON reader, so the
health of the IOC store reaches the manager (and its dashboards) the same way
the hits do. Every value is a scalar: Wazuh does not flatten arrays, and a
boolean is written as the string "true"/"false" so rules can match it as text.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import orjson

from sync.logs import kv, mask_secrets

log = logging.getLogger(__name__)

HEALTH_FILE_MODE = 0o640
HEALTH_STATUSES = ("ok", "failed", "incomplete")


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
