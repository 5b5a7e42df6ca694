"""systemd notification protocol (sd_notify) over an AF_UNIX datagram socket.

Only what a Type=notify service needs: READY=1, STATUS=..., STOPPING=1 and
WATCHDOG=1 pings. Without NOTIFY_SOCKET every call is a no-op, so the service
runs the same under systemd, in a container or in a test.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


def notify_address(env: Mapping[str, str]) -> str | bytes | None:
    """Return the socket address named by NOTIFY_SOCKET, or None when unset.

    A leading `@` names a Linux abstract socket (a leading NUL byte).
    """
    name = env.get("NOTIFY_SOCKET", "")
    if not name:
        return None
    if name.startswith("@"):
        return b"\0" + name[1:].encode()
    if name.startswith("/"):
        return name
    log.warning("notify_socket_ignored reason=unsupported_address")
    return None


def watchdog_interval_s(env: Mapping[str, str]) -> float | None:
    """Return how often to ping the watchdog: half of WATCHDOG_USEC, or None."""
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid != str(os.getpid()):
        return None
    return int(usec) / 2_000_000


@dataclass
class Notifier:
    """Send sd_notify messages; silent when no socket is configured."""

    address: str | bytes | None
    watchdog_s: float | None = None
    _sock: socket.socket | None = field(default=None, repr=False)
    _last_ping: float = 0.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Notifier:
        env = os.environ if env is None else env
        return cls(notify_address(env), watchdog_interval_s(env))

    def send(self, message: str) -> bool:
        """Send one datagram; return False (and log) when it cannot be sent."""
        if self.address is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._sock.setblocking(False)
            self._sock.sendto(message.encode(), self.address)
        except OSError as err:
            log.warning("notify_failed reason=%s", type(err).__name__)
            return False
        return True

    def ready(self, status: str = "") -> None:
        self.send("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def status(self, text: str) -> None:
        self.send(f"STATUS={text}")

    def stopping(self) -> None:
        self.send("STOPPING=1")

    def ping_if_due(self, now: float | None = None) -> None:
        """Send WATCHDOG=1 when half of the watchdog period has passed."""
        if self.watchdog_s is None:
            return
        now = time.monotonic() if now is None else now
        if now - self._last_ping >= self.watchdog_s:
            self._last_ping = now
            self.send("WATCHDOG=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
