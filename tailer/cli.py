"""`wazuh-ioc-tailer`: run (default), replay, lookup and status.

Exit codes: 0 success (a lookup miss too), 1 runtime failure (e.g. a replay
file that could not be read to its end), 2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import sys
import time
from collections.abc import Sequence
from typing import Any

import orjson

from sync.cliopts import EXIT_FAILURE, EXIT_OK, add_common_options, resolve_config
from sync.config import load_config
from sync.normalize import (
    InvalidValue,
    normalize_domain,
    normalize_hash,
    normalize_ip,
    normalize_url,
    url_host,
)
from sync.store import StoreError, StoreReader, store_paths

SUBCOMMANDS = ("run", "replay", "lookup", "status")
HASH_LENGTHS = (32, 40, 56, 64, 96, 128)
INTERNAL_CONTEXT = ("value", "seen_run", "stored_at", "ip_version", "prefix_len")
# `203.0.113.7:443`, `[2001:db8::1]:443` or MISP's `203.0.113.7|443`.
ADDRESS_WITH_PORT = re.compile(r"^\[?(?P<ip>[^\[\]|]+?)\]?[:|](?P<port>[0-9]{1,5})$")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wazuh-ioc-tailer",
        description="Match Wazuh alerts against the MISP IOC store.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_run_parser(commands)
    add_replay_parser(commands)
    add_lookup_parser(commands)
    add_status_parser(commands)
    return parser


def add_run_parser(commands: Any) -> None:
    run = commands.add_parser("run", help="follow alerts.json (the default)")
    add_common_options(run)
    run.add_argument("--alerts", metavar="PATH", help="alerts.json to follow")
    run.add_argument("--output", metavar="PATH", help="enrichment log to append to")
    run.add_argument("--state-dir", metavar="DIR", help="checkpoint directory")
    run.add_argument("--min-level", type=int, metavar="N", help="lowest rule.level")
    run.add_argument("--start-at", choices=("end", "beginning"))


def add_replay_parser(commands: Any) -> None:
    from tailer.replay import add_replay_arguments

    replay = commands.add_parser(
        "replay", help="match archived alert files (plain, .gz, directories, globs)"
    )
    add_common_options(replay)
    add_replay_arguments(replay)


def add_lookup_parser(commands: Any) -> None:
    lookup = commands.add_parser(
        "lookup", help="look values up in the IOC store (one JSON line per hit)"
    )
    add_common_options(lookup)
    lookup.add_argument(
        "values",
        nargs="+",
        metavar="VALUE",
        help="IP (also IP:PORT, [IPv6]:PORT, IP|PORT), domain, URL or hash; "
        "a miss prints nothing",
    )


def add_status_parser(commands: Any) -> None:
    status = commands.add_parser("status", help="checkpoint, lag and counters")
    add_common_options(status)


def run_overrides(args: argparse.Namespace) -> dict[str, object]:
    """Command-line flags of `run` as dotted configuration overrides."""
    flags = {
        "tailer.alerts_path": args.alerts,
        "output.path": args.output,
        "tailer.state_dir": args.state_dir,
        "tailer.min_level": args.min_level,
        "tailer.start_at": args.start_at,
    }
    return {key: value for key, value in flags.items() if value is not None}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in (*SUBCOMMANDS, "-h", "--help"):
        argv = ["run", *argv]
    args = build_parser().parse_args(argv)
    handler = {
        "run": command_run,
        "replay": command_replay,
        "lookup": command_lookup,
        "status": command_status,
    }[args.command]
    return handler(args)


def command_run(args: argparse.Namespace) -> int:
    from tailer.service import run

    overrides = run_overrides(args)
    cfg = resolve_config(args, overrides)

    def reload_config() -> Any:
        return load_config(path=args.config, overrides=overrides)

    return run(cfg, reload_config=reload_config)


def command_replay(args: argparse.Namespace) -> int:
    from tailer.replay import replay_overrides, run_replay

    cfg = resolve_config(args, replay_overrides(args))
    return run_replay(cfg, args)


# -- lookup -----------------------------------------------------------------------


def split_port(text: str) -> tuple[str, int | None]:
    """Split `IP:PORT`, `[IPv6]:PORT` or `IP|PORT`; other text has no port."""
    value = text.strip()
    if is_ip(value):
        return value, None
    found = ADDRESS_WITH_PORT.match(value)
    if found is None or not is_ip(found["ip"]) or int(found["port"]) > 65535:
        return value, None
    # A bare IPv6 address with a port needs brackets: `2001:db8::1:443` is an IP.
    if ":" in found["ip"] and value[0] != "[" and "|" not in value:
        return value, None
    return found["ip"], int(found["port"])


def guess_observables(text: str) -> list[tuple[str, str]]:
    """Return (kind, normalised value) pairs for a value typed by a user.

    A URL also gives its host, as the tailer does for URL fields.
    """
    value = text.strip()
    if is_ip(value):
        return [("ip", normalize_ip(value.strip("[]")))]
    if len(value) in HASH_LENGTHS and all(c in "0123456789abcdefABCDEF" for c in value):
        return [("hash", normalize_hash(value))]
    if "://" not in value:
        return [("domain", normalize_domain(value))]
    found = [("url", normalize_url(value))]
    host = url_host(value)
    if host:
        found.append(("ip", host) if is_ip(host) else ("domain", host))
    return found


def is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return False
    return True


def command_lookup(args: argparse.Namespace) -> int:
    from tailer.match import IndicatorIndex, Observable

    cfg = resolve_config(args)
    try:
        index = IndicatorIndex(StoreReader(store_paths(cfg)))
    except (StoreError, OSError) as err:
        print(f"lookup: IOC store unavailable ({err})", file=sys.stderr)
        return EXIT_FAILURE

    for text in args.values:
        value, port = split_port(text)
        try:
            observables = guess_observables(value)
        except InvalidValue as err:
            print(f"lookup {text!r}: not a valid value ({err.reason})", file=sys.stderr)
            continue
        for kind, normalized in observables:
            observable = Observable(kind, normalized, "lookup", text, port=port)
            for hit in index.match(observable):
                print(format_lookup_hit(hit, text))
    return EXIT_OK


def format_lookup_hit(hit: Any, given: str) -> str:
    context = {
        key: value
        for key, value in hit.context.items()
        if key not in INTERNAL_CONTEXT and value not in (None, "")
    }
    record = {"type": hit.kind, "indicator": hit.indicator, "value": given, **context}
    return orjson.dumps(record).decode()


# -- status -----------------------------------------------------------------------


def command_status(args: argparse.Namespace) -> int:
    from tailer.checkpoint import CheckpointError, CheckpointStore

    cfg = resolve_config(args)
    state_db = os.path.join(cfg.tailer.state_dir, "state.db")
    if not os.path.exists(state_db):
        print(f"status: no checkpoint yet ({state_db} does not exist)")
        return EXIT_OK
    try:
        with CheckpointStore(cfg.tailer.state_dir) as checkpoint:
            position, saved = checkpoint.load(), checkpoint.load_counters()
    except CheckpointError as err:
        print(f"status: {err}", file=sys.stderr)
        return EXIT_FAILURE
    for line in status_lines(cfg, position, saved):
        print(line)
    return EXIT_OK


def status_lines(cfg: Any, position: Any, saved: dict) -> list[str]:
    lines = [f"alerts: {cfg.tailer.alerts_path}"]
    if position is None:
        lines.append("checkpoint: none")
    else:
        lines.append(
            f"checkpoint: path={position.path} inode={position.identity.inode} "
            f"offset={position.offset}"
        )
        lines.append(f"bytes_behind: {bytes_behind(cfg.tailer.alerts_path, position)}")
    if "saved_at" in saved:
        lines.append(f"status_saved: {format_time(saved['saved_at'])}")
    counts = saved.get("counts", {})
    lines.append("counters: " + " ".join(f"{k}={v}" for k, v in counts.items()))
    indicators = saved.get("indicators", {})
    lines.append("indicators: " + " ".join(f"{k}={v}" for k, v in indicators.items()))
    if "index_loaded_at" in saved:
        lines.append(f"last_store_reload: {format_time(saved['index_loaded_at'])}")
    return lines


def bytes_behind(alerts_path: str, position: Any) -> int | str:
    try:
        stat = os.stat(alerts_path)
    except OSError:
        return "unknown (alerts file missing)"
    identity = position.identity
    if (stat.st_dev, stat.st_ino) == (identity.device, identity.inode):
        return max(0, stat.st_size - position.offset)
    return f"{stat.st_size} + rest of {position.path}"


def format_time(epoch_s: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(epoch_s))


if __name__ == "__main__":
    sys.exit(main())
