"""The layered configuration: defaults, YAML, environment, flags, API key."""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest
import yaml

from sync import config
from sync.cliopts import add_common_options, resolve_config
from sync.config import (
    Config,
    ConfigError,
    ExtraField,
    Secret,
    config_as_dict,
    load_config,
)
from tests.conftest import parse_environment_file

REPO_ROOT = Path(__file__).resolve().parent.parent
FAKE_KEY = "Zq3vT8kLw2Rb9XyN4cHd7GfJ1mPs6AeU0oKiVt5B"
RESOLVE_SCRIPT = """
import argparse
from sync.cliopts import add_common_options, resolve_config
parser = argparse.ArgumentParser(prog="probe")
add_common_options(parser)
resolve_config(parser.parse_args(), {})
print("resolved")
"""


def run_resolve(*argv: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run resolve_config in a fresh interpreter with only ``env`` set."""
    full_env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run(
        [sys.executable, "-c", RESOLVE_SCRIPT, *argv],
        env={**full_env, **env},
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )


def parse_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="probe")
    add_common_options(parser)
    return parser.parse_args(argv)


@pytest.fixture(autouse=True)
def no_default_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep a config file installed on this machine out of the tests."""
    monkeypatch.setattr(config, "DEFAULT_CONFIG_PATH", str(tmp_path / "absent.yaml"))


@pytest.fixture
def empty_yaml(tmp_path: Path) -> Path:
    path = tmp_path / "empty.yaml"
    path.write_text("")
    return path


def test_env_file_of_existing_deployment_gives_expected_configuration(
    data_dir: Path, empty_yaml: Path
) -> None:
    """Every variable of the old env file lands on its key; the rest stays default."""
    env = parse_environment_file(data_dir / "config" / "misp-ioc-sync.env")

    cfg = load_config(path=empty_yaml, env=env)

    defaults = config_as_dict(Config())
    assert config_as_dict(cfg) == {
        **defaults,
        "misp": {
            **defaults["misp"],
            "url": "https://misp.example.org",
            "api_key": "******** (from MISP_API_KEY)",
            "verify_tls": False,
            "suppress_tls_warning": True,
            "use_timestamp_filter": True,
            "last_n_days": 3,
            "to_ids_only": False,
            "published_only": False,
            "tags": [
                "tlp:white",
                "tlp:green",
                '!osint:source-type="block-or-filter-list"',
            ],
            "page_size": 500,
            "max_pages": 200,
        },
        "store": {
            "ips_db": "/var/ioc/ips.db",
            "hashes_db": "/var/ioc/hashes.db",
            "domains_db": "/var/ioc/domains.db",
            "urls_db": "/var/ioc/urls.db",
        },
        "sync": {
            **defaults["sync"],
            "log_path": "/var/ossec/logs/misp-sync.log",
            "log_enabled": True,
        },
    }
    assert cfg.misp.api_key.reveal() == FAKE_KEY
    assert cfg.misp.tags == (
        "tlp:white",
        "tlp:green",
        '!osint:source-type="block-or-filter-list"',
    )


ENV_CASES = [
    ("MISP_URL", "https://misp.test:8443", "misp.url", "https://misp.test:8443"),
    ("MISP_VERIFY_SSL", "no", "misp.verify_tls", False),
    ("MISP_CA_BUNDLE", "/etc/ca.pem", "misp.ca_bundle", "/etc/ca.pem"),
    ("MISP_SUPPRESS_TLS_WARN", "yes", "misp.suppress_tls_warning", True),
    ("MISP_LIMIT", "250", "misp.page_size", 250),
    ("MISP_MAX_PAGES", "9", "misp.max_pages", 9),
    ("MISP_USE_TIMESTAMP_FILTER", "1", "misp.use_timestamp_filter", True),
    ("MISP_LAST_N_DAYS", "14", "misp.last_n_days", 14),
    ("MISP_TO_IDS_ONLY", "0", "misp.to_ids_only", False),
    ("MISP_PUBLISHED_ONLY", "TRUE", "misp.published_only", True),
    ("MISP_TAG_FILTER", " a ,, b ,", "misp.tags", ("a", "b")),
    ("MISP_SYNC_LOG", "/tmp/s.log", "sync.log_path", "/tmp/s.log"),
    ("MISP_SYNC_LOG_ENABLED", "False", "sync.log_enabled", False),
    ("IPS_DB_PATH", "/d/ips.db", "store.ips_db", "/d/ips.db"),
    ("HASHES_DB_PATH", "/d/hashes.db", "store.hashes_db", "/d/hashes.db"),
    ("DOMAINS_DB_PATH", "/d/domains.db", "store.domains_db", "/d/domains.db"),
    ("URLS_DB_PATH", "/d/urls.db", "store.urls_db", "/d/urls.db"),
    ("WAZUH_ALERTS_PATH", "/a/alerts.json", "tailer.alerts_path", "/a/alerts.json"),
    ("IOC_STATE_DIR", "/s", "tailer.state_dir", "/s"),
    ("IOC_MIN_LEVEL", "3", "tailer.min_level", 3),
    ("IOC_ENRICHMENT_LOG", "/o/e.json", "output.path", "/o/e.json"),
]


@pytest.mark.parametrize(("var", "text", "key", "expected"), ENV_CASES)
def test_environment_variable_sets_its_key(
    var: str, text: str, key: str, expected: object, empty_yaml: Path
) -> None:
    """Each documented variable sets exactly the key of the reference table."""
    section, name = key.split(".")

    cfg = load_config(path=empty_yaml, env={var: text})

    assert getattr(getattr(cfg, section), name) == expected
    assert getattr(getattr(Config(), section), name) != expected


def test_yaml_with_three_mistakes_reports_all_three_and_exits_2(
    data_dir: Path,
) -> None:
    """A file with three separate mistakes gets three errors with key paths."""
    yaml_path = data_dir / "config" / "three-mistakes.yaml"

    result = run_resolve("--config", str(yaml_path), env={})

    assert result.returncode == 2
    assert "resolved" not in result.stdout
    assert result.stderr.splitlines() == [
        "config misp.verfy_tls: unknown key (got 'verfy_tls'); "
        "expected a known key; did you mean misp.verify_tls?",
        "config misp.page_size: not a whole number (got 'lots'); "
        "expected a whole number",
        "config tailer.min_level: out of range (got 20); "
        "expected a number from 0 to 16",
        "configuration invalid: 3 error(s)",
    ]


def test_check_config_prints_ok_and_exits_0(data_dir: Path) -> None:
    """--check-config on a valid file says so and stops with status 0."""
    yaml_path = data_dir / "config" / "full.yaml"

    result = run_resolve("--config", str(yaml_path), "--check-config", env={})

    assert result.returncode == 0
    assert result.stdout == "configuration ok\n"


# Keys full.yaml sets to their default on purpose: the safe choices.
SAFE_DEFAULTS_KEPT = (
    "api_key",
    "api_key_file",
    "verify_tls",
    "suppress_tls_warning",
    "to_ids_only",
)


def test_full_yaml_sets_every_key(data_dir: Path) -> None:
    """A file naming every key changes every value away from its default."""
    cfg = load_config(path=data_dir / "config" / "full.yaml", env={})

    effective, defaults = config_as_dict(cfg), config_as_dict(Config())
    for section, values in effective.items():
        for name, value in values.items():
            if name not in SAFE_DEFAULTS_KEPT:
                assert value != defaults[section][name], f"{section}.{name}"
    assert cfg.tailer.keep_rule_ids == ("61603", "92052")
    assert cfg.tailer.extra_fields[0] == ExtraField(
        path="data.win.eventdata.queryName", type="domain"
    )
    assert dict(cfg.tailer.extra_fields[1]) == {"path": "data.url", "type": "url"}
    assert isinstance(cfg.tailer.extra_fields[1], Mapping)


def write_key_file(tmp_path: Path, mode: int = 0o600) -> Path:
    key_file = tmp_path / "misp_api_key"
    key_file.write_text(FAKE_KEY + "\n")
    key_file.chmod(mode)
    return key_file


def key_route_env(route: str, tmp_path: Path) -> dict[str, str]:
    """The environment that hands the key to the program by ``route``."""
    if route == "env":
        return {"MISP_API_KEY": FAKE_KEY}
    if route == "key_file":
        return {"MISP_API_KEY_FILE": str(write_key_file(tmp_path))}
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    write_key_file(credentials)
    return {"CREDENTIALS_DIRECTORY": str(credentials)}


ROUTES = ["env", "key_file", "credentials_directory"]


@pytest.mark.parametrize("route", ROUTES)
def test_api_key_from_each_route_is_read(route: str, tmp_path: Path) -> None:
    """The key arrives by env, key file or systemd credential, trailing newline cut."""
    env = key_route_env(route, tmp_path)

    cfg = load_config(env={**env, "MISP_URL": "https://misp.example.org"})

    assert cfg.misp.api_key.reveal() == FAKE_KEY
    assert FAKE_KEY not in repr(cfg)
    assert FAKE_KEY not in str(cfg.misp)


@pytest.mark.parametrize("route", ROUTES)
def test_api_key_never_in_debug_logs_or_printed_config(
    route: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture,
    restore_logging: None,
    clean_env: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """At DEBUG, neither the logs nor --print-config output carry the key."""
    for name, value in key_route_env(route, tmp_path).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("MISP_URL", "http://misp.example.org")
    caplog.set_level(logging.DEBUG)

    with pytest.raises(SystemExit) as stopped:
        resolve_config(parse_args("--log-level", "DEBUG", "--print-config", "json"))

    printed = capsys.readouterr()
    assert stopped.value.code == 0
    assert "api_key" not in json.loads(printed.out)["misp"]
    assert "config_effective" in caplog.text
    assert FAKE_KEY not in caplog.text + printed.out + printed.err


@pytest.mark.parametrize("route", ROUTES)
def test_api_key_never_in_subprocess_output_at_debug(
    route: str, tmp_path: Path
) -> None:
    """A real process at DEBUG with --print-config writes no key anywhere."""
    env = key_route_env(route, tmp_path)

    result = run_resolve("--log-level", "DEBUG", "--print-config", env=env)

    assert result.returncode == 0
    assert "config_effective" in result.stderr
    assert "api_key" not in yaml.safe_load(result.stdout)["misp"]
    assert "# misp.api_key is never read from this file (API key from" in result.stdout
    assert FAKE_KEY not in result.stdout + result.stderr


def test_api_key_source_is_named_in_printed_config(tmp_path: Path) -> None:
    """config_as_dict says which route the key came from, never the key."""
    key_file = write_key_file(tmp_path)

    cfg = load_config(env={"MISP_API_KEY_FILE": str(key_file)})

    assert config_as_dict(cfg)["misp"]["api_key"] == f"******** (from {key_file})"


def test_api_key_variable_wins_over_key_file(tmp_path: Path) -> None:
    """MISP_API_KEY is used before misp.api_key_file."""
    key_file = write_key_file(tmp_path)

    cfg = load_config(
        env={"MISP_API_KEY": "k" * 40, "MISP_API_KEY_FILE": str(key_file)}
    )

    assert cfg.misp.api_key.reveal() == "k" * 40


def test_no_api_key_leaves_it_none(tmp_path: Path) -> None:
    """Without any route the key is None; loading still succeeds."""
    cfg = load_config(env={"CREDENTIALS_DIRECTORY": str(tmp_path)})

    assert cfg.misp.api_key is None
    assert config_as_dict(cfg)["misp"]["api_key"] is None


def test_group_readable_key_file_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A key file readable by group or others is used, with a warning."""
    key_file = write_key_file(tmp_path, mode=0o640)

    cfg = load_config(env={"MISP_API_KEY_FILE": str(key_file)})

    assert cfg.misp.api_key.reveal() == FAKE_KEY
    assert "api_key_file_readable_by_others" in caplog.text
    assert "mode=0o640" in caplog.text


def test_private_key_file_does_not_warn(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A 0600 key file raises no warning."""
    key_file = write_key_file(tmp_path, mode=0o600)

    load_config(env={"MISP_API_KEY_FILE": str(key_file)})

    assert caplog.records == []


def test_unreadable_key_file_is_an_error_naming_it(tmp_path: Path) -> None:
    """A key file that cannot be read stops loading with its path in the error."""
    not_a_file = tmp_path / "key-dir"
    not_a_file.mkdir()

    with pytest.raises(ConfigError) as failed:
        load_config(env={"MISP_API_KEY_FILE": str(not_a_file)})

    assert len(failed.value.errors) == 1
    assert failed.value.errors[0].startswith(
        "env MISP_API_KEY_FILE: cannot read the API key file (Is a directory) "
        f"(got '{not_a_file}'); expected the path of a file readable by this user"
    )


def test_key_given_as_key_file_path_is_not_echoed() -> None:
    """The key put in MISP_API_KEY_FILE by mistake is masked in the error."""
    with pytest.raises(ConfigError) as failed:
        load_config(env={"MISP_API_KEY_FILE": FAKE_KEY})

    assert FAKE_KEY not in str(failed.value)
    assert "looks like a key rather than a path" in str(failed.value)


def test_api_key_in_yaml_is_rejected_without_echoing_it(tmp_path: Path) -> None:
    """A key written in the YAML file is refused and pointed to api_key_file."""
    yaml_path = tmp_path / "config.yaml"
    yaml_path.write_text(f"misp:\n  api_key: {FAKE_KEY}\n")

    with pytest.raises(ConfigError) as failed:
        load_config(path=yaml_path, env={})

    (error,) = failed.value.errors
    assert error.startswith("config misp.api_key: ")
    assert "misp.api_key_file" in error
    assert FAKE_KEY not in error


@pytest.mark.parametrize(("entry", "shown"), [("null", "null"), ("''", "''")])
def test_empty_api_key_in_yaml_is_rejected_as_empty_not_masked(
    tmp_path: Path, entry: str, shown: str
) -> None:
    """An api_key entry without a value is named as such, not as a mask."""
    yaml_path = tmp_path / "config.yaml"
    yaml_path.write_text(f"misp:\n  api_key: {entry}\n")

    with pytest.raises(ConfigError) as failed:
        load_config(path=yaml_path, env={})

    (error,) = failed.value.errors
    assert f"(got {shown});" in error
    assert "********" not in error


def test_printed_yaml_config_loads_back_as_the_same_configuration(
    tmp_path: Path,
) -> None:
    """--print-config output saved as a file is a valid configuration."""
    key_file = write_key_file(tmp_path)
    env = {"MISP_API_KEY_FILE": str(key_file), "MISP_URL": "https://misp.example.org"}
    printed = run_resolve("--print-config", env=env)
    saved = tmp_path / "printed.yaml"
    saved.write_text(printed.stdout)

    reloaded = load_config(path=saved, env={})

    assert printed.returncode == 0
    assert reloaded.misp.url == "https://misp.example.org"
    assert reloaded.misp.api_key_file == str(key_file)
    assert config_as_dict(reloaded)["tailer"] == config_as_dict(Config())["tailer"]


def test_secret_masks_repr_str_and_format() -> None:
    """A Secret shows only the mask however it is turned into text."""
    secret = Secret(FAKE_KEY, source="MISP_API_KEY")

    shown = [repr(secret), str(secret), f"{secret}", format(secret)]

    assert shown == ["********"] * 4
    assert secret.reveal() == FAKE_KEY


def test_precedence_default_then_yaml_then_env_then_flag(tmp_path: Path) -> None:
    """tailer.min_level takes the value of the highest layer that sets it."""
    yaml_path = tmp_path / "config.yaml"
    yaml_path.write_text("tailer:\n  min_level: 12\n")
    env = {"IOC_MIN_LEVEL": "13"}

    levels = [
        load_config(env={}),
        load_config(path=yaml_path, env={}),
        load_config(path=yaml_path, env=env),
        load_config(path=yaml_path, env=env, overrides={"tailer.min_level": 14}),
    ]

    assert [cfg.tailer.min_level for cfg in levels] == [10, 12, 13, 14]


BOOL_SPELLINGS = [
    ("true", True),
    ("True", True),
    ("TRUE", True),
    ("yes", True),
    ("YES", True),
    ("1", True),
    ("false", False),
    ("False", False),
    ("no", False),
    ("No", False),
    ("0", False),
]


@pytest.mark.parametrize(("text", "expected"), BOOL_SPELLINGS)
def test_boolean_spellings_in_env_and_yaml(
    text: str, expected: bool, tmp_path: Path
) -> None:
    """true/false, yes/no and 1/0 in any case mean the same in env and YAML."""
    yaml_path = tmp_path / "config.yaml"
    yaml_path.write_text(f"tailer:\n  skip_private: {text}\n")
    quoted_path = tmp_path / "quoted.yaml"
    quoted_path.write_text(f'tailer:\n  skip_private: "{text}"\n')

    from_env = load_config(path=quoted_path, env={"MISP_VERIFY_SSL": text})
    from_yaml = load_config(path=yaml_path, env={})

    assert from_env.misp.verify_tls is expected
    assert from_env.tailer.skip_private is expected
    assert from_yaml.tailer.skip_private is expected


def test_boolean_other_word_is_an_error(tmp_path: Path) -> None:
    """A word that is no boolean is reported with its variable."""
    with pytest.raises(ConfigError) as failed:
        load_config(path=tmp_path / "x.yaml", env={"MISP_VERIFY_SSL": "maybe"})

    assert failed.value.errors[-1] == (
        "env MISP_VERIFY_SSL: not a boolean (got 'maybe'); "
        "expected true/false, yes/no or 1/0 (any case)"
    )


@pytest.mark.parametrize("text", ["{}\n", "", "# nothing set\n", "misp:\n"])
def test_empty_configurations_are_valid_defaults(text: str, tmp_path: Path) -> None:
    """{}, an empty file, a comment-only file and an empty section give defaults."""
    yaml_path = tmp_path / "config.yaml"
    yaml_path.write_text(text)

    cfg = load_config(path=yaml_path, env={})

    assert cfg == Config()


def test_missing_default_file_is_fine() -> None:
    """Without a file at the default path the built-in defaults apply."""
    cfg = load_config(env={})

    assert cfg == Config()


@pytest.mark.parametrize("how", ["argument", "variable"])
def test_missing_explicit_file_is_an_error(how: str, tmp_path: Path) -> None:
    """A file named by --config or WAZUH_MISP_IOC_CONFIG must exist."""
    absent = tmp_path / "absent.yaml"
    path = absent if how == "argument" else None
    env = {} if how == "argument" else {"WAZUH_MISP_IOC_CONFIG": str(absent)}

    with pytest.raises(ConfigError) as failed:
        load_config(path=path, env=env)

    assert failed.value.errors == [
        f"config {absent}: file not found (got '{absent}'); "
        "expected an existing YAML file"
    ]


def test_http_url_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A plain http:// MISP URL is accepted with a warning; https is silent."""
    load_config(env={"MISP_URL": "https://misp.example.org"})
    quiet = caplog.text
    load_config(env={"MISP_URL": "http://misp.example.org"})

    assert quiet == ""
    assert "misp_url_plain_http host=misp.example.org" in caplog.text


@pytest.mark.parametrize(
    ("env", "event"),
    [
        ({"MISP_VERIFY_SSL": "false"}, "tls_verification_off"),
        ({"MISP_LIMIT": "20000"}, "page_size_large"),
    ],
)
def test_risky_values_warn_once(
    env: dict[str, str], event: str, caplog: pytest.LogCaptureFixture
) -> None:
    """TLS verification off and huge pages each give one warning."""
    load_config(env=env)

    assert [record.levelname for record in caplog.records] == ["WARNING"]
    assert caplog.records[0].getMessage().startswith(event)


def test_suppressed_tls_warning_stays_quiet(caplog: pytest.LogCaptureFixture) -> None:
    """MISP_SUPPRESS_TLS_WARN silences the verification-off warning."""
    env = {"MISP_VERIFY_SSL": "false", "MISP_SUPPRESS_TLS_WARN": "true"}

    cfg = load_config(env=env)

    assert cfg.misp.verify_tls is False
    assert caplog.records == []


def test_high_removal_ratio_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A removal ratio above 0.9 is legal but warned about."""
    yaml_path = tmp_path / "config.yaml"
    yaml_path.write_text("sync:\n  max_removal_ratio: 0.95\n")

    load_config(path=yaml_path, env={})

    assert "max_removal_ratio_high max_removal_ratio=0.95" in caplog.text


def test_impossible_values_are_each_reported(tmp_path: Path) -> None:
    """Every impossible value in one file is listed with its key path."""
    yaml_path = tmp_path / "config.yaml"
    yaml_path.write_text(
        "misp:\n  url: misp.example.org\n  page_size: 0\n  retries: -1\n"
        "store:\n  ips_db: ''\n"
        "tailer:\n  start_at: middle\n  min_level: -1\n"
        "  extra_fields:\n    - {path: data.x, type: email}\n"
        "output:\n  max_line_bytes: 10\n"
        "surprise: {}\n"
    )

    with pytest.raises(ConfigError) as failed:
        load_config(path=yaml_path, env={})

    where = [error.split(":")[0] for error in failed.value.errors]
    assert where == [
        "config misp.url",
        "config misp.page_size",
        "config misp.retries",
        "config store.ips_db",
        "config tailer.start_at",
        "config tailer.min_level",
        "config tailer.extra_fields",
        "config output.max_line_bytes",
        "config surprise",
    ]
    assert "entry [0] has type 'email'" in failed.value.errors[6]


def test_bad_environment_values_name_the_variable(tmp_path: Path) -> None:
    """Environment errors say env VAR and are collected with file errors."""
    yaml_path = tmp_path / "config.yaml"
    yaml_path.write_text("tailer:\n  poll_interval_s: 0\n")
    env = {"MISP_LIMIT": "abc", "IOC_MIN_LEVEL": "17"}

    with pytest.raises(ConfigError) as failed:
        load_config(path=yaml_path, env=env)

    assert failed.value.errors == [
        "config tailer.poll_interval_s: out of range (got 0); expected a number > 0",
        "env MISP_LIMIT: not a whole number (got 'abc'); expected a whole number",
        "env IOC_MIN_LEVEL: out of range (got '17'); expected a number from 0 to 16",
    ]


def test_empty_numeric_variable_counts_as_unset() -> None:
    """MISP_LIMIT= in an env file leaves the default page size."""
    cfg = load_config(env={"MISP_LIMIT": "", "MISP_TAG_FILTER": ""})

    assert cfg.misp.page_size == 500
    assert cfg.misp.tags == ()


def test_invalid_yaml_names_file_and_line(tmp_path: Path) -> None:
    """A syntax error reports the file and the line."""
    yaml_path = tmp_path / "config.yaml"
    yaml_path.write_text("misp:\n  url: https://x\n  tags: [a, b\n")

    with pytest.raises(ConfigError) as failed:
        load_config(path=yaml_path, env={})

    assert failed.value.errors[0].startswith(f"config {yaml_path}:")
    assert "invalid YAML" in failed.value.errors[0]


def test_unknown_override_key_is_an_error(tmp_path: Path) -> None:
    """A flag mapped to a key that does not exist is reported, with a suggestion."""
    with pytest.raises(ConfigError) as failed:
        load_config(env={}, overrides={"tailer.min_lvel": 3})

    assert failed.value.errors == [
        "config tailer.min_lvel: unknown key (got 'min_lvel'); "
        "expected a known key; did you mean tailer.min_level?"
    ]


def test_config_is_frozen() -> None:
    """Sections cannot be changed after loading."""
    cfg = load_config(env={})

    with pytest.raises(AttributeError):
        cfg.tailer.min_level = 1  # type: ignore[misc]


def test_no_command_line_option_takes_the_api_key() -> None:
    """The key never travels through argv, where ps would show it."""
    parser = argparse.ArgumentParser(prog="probe")
    add_common_options(parser)

    options = [opt for action in parser._actions for opt in action.option_strings]

    assert not [opt for opt in options if "key" in opt]
    assert "--config" in options


def test_readme_reference_lists_every_key_with_its_variable() -> None:
    """Each settable key has a README row naming its environment variable."""
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    rows = {
        line.split("|")[1].strip(" `"): line.split("|")[3].strip(" `")
        for line in readme.splitlines()
        if line.startswith("| `")
    }

    expected = {
        spec.path: spec.env or ""
        for spec in config.KEYS.values()
        if spec.kind != "secret"
    }

    assert {key: rows.get(key) for key in expected} == expected


def config_errors(tmp_path: Path, text: str) -> list[str]:
    config_file = tmp_path / "config.yaml"
    config_file.write_text(text)
    with pytest.raises(ConfigError) as raised:
        load_config(path=config_file, env={})
    return raised.value.errors


@pytest.mark.parametrize(
    ("url", "what"),
    [
        ("https://[::1", "not a valid URL"),
        ("https://misp.example:99999", "not a valid URL"),
        ("https://user:pa55w0rd@misp.example", "holds credentials"),
    ],
)
def test_broken_or_credential_misp_url_is_a_config_error(tmp_path, url, what):
    errors = config_errors(tmp_path, f"misp: {{url: {url!r}}}\n")

    assert len(errors) == 1 and errors[0].startswith("config misp.url: " + what)
    assert "pa55w0rd" not in errors[0]


def test_extra_fields_report_every_bad_entry_at_load_time(tmp_path):
    text = (
        "tailer:\n  extra_fields:\n"
        "    - {path: agent.ip, type: ip}\n"
        "    - {path: data..x, type: ip}\n"
        "    - {path: data.ok, type: ip}\n"
    )

    errors = config_errors(tmp_path, text)

    assert len(errors) == 1
    assert "entry [0] path 'agent.ip'" in errors[0]
    assert "entry [1] has an empty segment" in errors[0]
    assert "entry [2]" not in errors[0]


def test_key_given_twice_and_runaway_nesting_are_config_errors(tmp_path):
    twice = config_errors(tmp_path, "tailer:\n  min_level: 3\n  min_level: 5\n")
    nested = config_errors(tmp_path, "[" * 10000 + "\n")

    assert "given twice" in twice[0] and twice[0].startswith("config ")
    assert "nested too deeply" in nested[0]
