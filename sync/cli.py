"""`misp-ioc-sync`: bring MISP attributes into the IOC store, or show its state.

    misp-ioc-sync [--config F] [--full] [--force]
    misp-ioc-sync [--config F] --feed URL_OR_DIR [--feed-name NAME] [--force]
    misp-ioc-sync [--config F] status

Exit codes: 0 the run committed (result `ok`, or `incomplete` - a pull cut by
`misp.max_pages` or a reconcile refused by `sync.max_removal_ratio`, both
logged as warnings and reported in the health line); 1 the run failed and
the store is unchanged, another run holds the lock, or `status` found no
store; 2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import logging
import sys
from datetime import UTC, datetime

from sync.cliopts import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    add_common_options,
    resolve_config,
)
from sync.config import Config
from sync.health import last_attempt_path, load_last_attempt
from sync.logs import kv
from sync.store import STORE_KINDS, StoreError, StoreReader, store_paths
from sync.warninglists import WarninglistError, load_warninglists

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="misp-ioc-sync",
        description="Sync MISP indicators into the IOC store of wazuh-misp-ioc.",
    )
    parser.add_argument(
        "command",
        nargs="?",
        choices=("sync", "status"),
        default="sync",
        help="sync (default) or status: counts per kind and source, last run",
    )
    parser.add_argument(
        "--full",
        action="store_true",
        help="pull everything in scope and remove what MISP no longer returns "
        "(with --feed: fetch every event of the manifest again)",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="remove even when a reconcile exceeds sync.max_removal_ratio",
    )
    parser.add_argument(
        "--feed", metavar="URL_OR_DIR", help="sync a MISP feed instead of the API"
    )
    parser.add_argument(
        "--feed-name",
        metavar="NAME",
        help="source name of the feed (default: last part of URL or directory)",
    )
    add_common_options(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.feed_name and not args.feed:
        parser.error("--feed-name needs --feed")
    needs_server = args.command == "sync" and not args.feed
    required = _missing_server_settings if needs_server else None
    cfg = resolve_config(args, required=required)

    if args.command == "status":
        return show_status(cfg)
    return run(cfg, args)


def run(cfg: Config, args: argparse.Namespace) -> int:
    """Run one sync; map its result to the exit code."""
    from sync.engine import SyncLocked, run_server_sync
    from sync.feed import run_feed_sync

    missing = _missing_server_settings(cfg) if not args.feed else []
    if missing:
        for line in missing:
            print(line, file=sys.stderr)
        return EXIT_USAGE
    try:
        warninglists = load_warninglists(
            cfg.sync.warninglists_dir, cfg.sync.warninglists
        )
    except WarninglistError as err:
        print(err, file=sys.stderr)
        return EXIT_USAGE

    try:
        if args.feed:
            report = run_feed_sync(
                cfg,
                args.feed,
                name=args.feed_name,
                full=args.full,
                force=args.force,
                warninglists=warninglists,
            )
        else:
            report = run_server_sync(
                cfg, full=args.full, force=args.force, warninglists=warninglists
            )
    except SyncLocked as err:
        log.error(kv("sync_locked", error=str(err)))
        print(err, file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_FAILURE if report.result == "failed" else EXIT_OK


def _missing_server_settings(cfg: Config) -> list[str]:
    problems = []
    if not cfg.misp.url:
        problems.append(
            "env MISP_URL: not set (got nothing); expected the MISP base URL, "
            "e.g. https://misp.example.org (or use --feed)"
        )
    if cfg.misp.api_key is None:
        problems.append(
            "env MISP_API_KEY: not set (got nothing); expected the API key in "
            "MISP_API_KEY, misp.api_key_file or $CREDENTIALS_DIRECTORY/misp_api_key"
        )
    return problems


def show_status(cfg: Config) -> int:
    """Print counts per kind and source, the last attempt and run, the cursor."""
    try:
        with StoreReader(store_paths(cfg)) as reader:
            counts = reader.counts()
            meta = {
                key: reader.meta(key)
                for key in ("last_run", "last_success", "last_reconcile", "cursor")
            }
    except StoreError as err:
        print(f"status: {err}", file=sys.stderr)
        return EXIT_FAILURE

    meta["last_attempt"] = load_last_attempt(last_attempt_path(cfg))
    for line in status_lines(counts, meta):
        print(line)
    return EXIT_OK


def status_lines(counts: dict[str, dict[str, int]], meta: dict) -> list[str]:
    """Counts table, then one `name value` line per fact about the runs."""
    lines = [f"{'kind':<8}{'source':<40}{'indicators':>12}"]
    for kind in STORE_KINDS:
        for source, number in sorted(counts.get(kind, {}).items()):
            lines.append(f"{kind:<8}{source or '-':<40}{number:>12}")
    total = sum(sum(c.values()) for c in counts.values())
    lines.append(f"{'total':<48}{total:>12}")

    lines.append(_run_line("last_attempt", meta.get("last_attempt")))
    lines.append(_run_line("last_run", meta.get("last_run")))
    lines.append(f"last_success {_when(meta.get('last_success'))}")
    lines.append(f"last_reconcile {_when(meta.get('last_reconcile'))}")
    cursor = meta.get("cursor")
    if isinstance(cursor, int) and cursor > 0:
        lines.append(f"cursor {cursor} ({_when(cursor)})")
    else:
        lines.append("cursor none")
    return lines


def _run_line(name: str, run: object) -> str:
    """`last_attempt`: any run, failed ones too; `last_run`: the last commit."""
    if not isinstance(run, dict) or not run:
        return f"{name} never"
    line = (
        f"{name} {_when(run.get('time'))} result={run.get('result')}"
        f" mode={run.get('mode')} source={run.get('source')}"
    )
    if run.get("error"):
        line += f" error={run['error']!r}"
    return line


def _when(epoch: object) -> str:
    if not isinstance(epoch, int) or epoch <= 0:
        return "never"
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


if __name__ == "__main__":
    sys.exit(main())
