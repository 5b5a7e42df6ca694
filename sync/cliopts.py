"""Options shared by both programs and the step that turns them into a Config.

Exit codes of both programs: 0 success, 1 runtime failure, 2 usage or
configuration error (argparse itself exits 2 on a bad command line). No option
takes the API key: a value on the command line would show in ``ps``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Mapping

import yaml

from sync import __version__
from sync.config import Config, ConfigError, config_as_dict, load_config
from sync.logs import LOG_LEVELS, kv, register_secret, setup_logging

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
DEFAULT_LOG_LEVEL = "INFO"


def add_common_options(parser: argparse.ArgumentParser) -> None:
    """Add --config, --check-config, --print-config, --log-level, --version."""
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="YAML configuration file (default: $WAZUH_MISP_IOC_CONFIG, "
        "else /etc/wazuh-misp-ioc/config.yaml when it exists)",
    )
    parser.add_argument(
        "--check-config",
        action="store_true",
        help="validate the configuration, print every problem and exit",
    )
    parser.add_argument(
        "--print-config",
        nargs="?",
        const="yaml",
        choices=("yaml", "json"),
        metavar="FORMAT",
        help="print the effective configuration (yaml or json, default yaml) "
        "without the API key, usable as a configuration file, and exit",
    )
    parser.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        type=str.upper,
        help=f"log level on stderr (default {DEFAULT_LOG_LEVEL})",
    )
    # A subcommand's prog is "wazuh-ioc-tailer run"; the version names the program.
    program = parser.prog.split()[0]
    parser.add_argument(
        "--version", action="version", version=f"{program} {__version__}"
    )


def resolve_config(
    args: argparse.Namespace,
    overrides: Mapping[str, object] | None = None,
    *,
    required: Callable[[Config], list[str]] | None = None,
) -> Config:
    """Load the configuration for ``args`` and act on the config-only options.

    Exits 2 after printing every configuration error, and exits 0 after
    --check-config or --print-config. ``required`` lists what the command
    cannot run without (e.g. the MISP URL); --check-config reports those
    problems too, exactly as the run would. Otherwise returns the Config,
    with logging set up and the API key registered for masking.
    """
    setup_logging(getattr(args, "log_level", None) or DEFAULT_LOG_LEVEL)

    try:
        cfg = load_config(path=getattr(args, "config", None), overrides=overrides)
    except ConfigError as err:
        for line in err.errors:
            print(line, file=sys.stderr)
        print(f"configuration invalid: {len(err.errors)} error(s)", file=sys.stderr)
        sys.exit(EXIT_USAGE)

    if cfg.misp.api_key is not None:
        register_secret(cfg.misp.api_key.reveal())
    log.info(kv("config_loaded", api_key_from=_key_source(cfg)))
    log.debug("config_effective %s", render_config(cfg, "json-line"))

    if getattr(args, "check_config", False):
        check_and_exit(cfg, required)
    if getattr(args, "print_config", None):
        print(render_config(cfg, args.print_config), end="")
        sys.exit(EXIT_OK)
    return cfg


def check_and_exit(cfg: Config, required: Callable[[Config], list[str]] | None) -> None:
    """--check-config: print what a run would refuse, exit 2; else exit 0."""
    problems = required(cfg) if required is not None else []
    for line in problems:
        print(line, file=sys.stderr)
    if problems:
        print(f"configuration invalid: {len(problems)} error(s)", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    print("configuration ok")
    sys.exit(EXIT_OK)


def render_config(cfg: Config, fmt: str = "yaml") -> str:
    """The effective configuration as yaml, json or json-line text.

    yaml and json are meant to be saved as a configuration file, which must
    not hold the API key: they leave it out (yaml names its route in a
    comment). json-line, for the debug log, shows it masked with its route.
    """
    data = config_as_dict(cfg)
    if fmt == "json-line":
        return json.dumps(data, separators=(",", ":"))
    data["misp"].pop("api_key", None)
    if fmt == "json":
        return json.dumps(data, indent=2) + "\n"
    body = yaml.safe_dump(data, sort_keys=False, default_flow_style=False)
    return _key_comment(cfg) + body


def _key_comment(cfg: Config) -> str:
    source = _key_source(cfg)
    route = "no API key found" if source == "none" else f"API key from {source}"
    return (
        f"# misp.api_key is never read from this file ({route}); it comes from\n"
        "# MISP_API_KEY, misp.api_key_file or the systemd credential misp_api_key.\n"
    )


def _key_source(cfg: Config) -> str:
    key = cfg.misp.api_key
    return key.source if key is not None else "none"
