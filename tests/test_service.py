"""The run loop: sd_notify, signals, rotation, restart, reload."""

from __future__ import annotations

import os
import socket

import pytest

from tailer.notify import Notifier, notify_address, watchdog_interval_s


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
