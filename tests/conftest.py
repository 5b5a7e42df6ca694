"""Fixtures shared by the test modules."""

from __future__ import annotations

import logging
import os
import shlex
from pathlib import Path

import pytest

DATA_DIR = Path(__file__).parent / "data"

# Variables that would leak the developer's own setup into load_config().
_CONFIG_ENV_PREFIXES = ("MISP_", "IOC_", "WAZUH_", "CREDENTIALS_DIRECTORY")
_CONFIG_ENV_NAMES = ("IPS_DB_PATH", "HASHES_DB_PATH", "DOMAINS_DB_PATH", "URLS_DB_PATH")


def parse_environment_file(path: Path) -> dict[str, str]:
    """Read ``KEY=value`` lines the way systemd's EnvironmentFile= does.

    Blank lines and lines starting with ``#`` or ``;`` are ignored; a value
    in single or double quotes is unquoted (backslash escapes in double
    quotes); an unquoted value is taken as written, surrounding blanks removed.
    """
    variables = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        name, _, value = line.partition("=")
        value = value.strip()
        if value[:1] in ("'", '"'):
            value = shlex.split(value)[0]
        variables[name.strip()] = value
    return variables


@pytest.fixture
def data_dir() -> Path:
    """The directory of test data files."""
    return DATA_DIR


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Remove configuration variables of the surrounding shell from os.environ."""
    for name in list(os.environ):
        if name.startswith(_CONFIG_ENV_PREFIXES) or name in _CONFIG_ENV_NAMES:
            monkeypatch.delenv(name)


@pytest.fixture
def restore_logging() -> None:
    """Put the root logger's handlers and level back after the test."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)
