"""The deploy kit: install.sh staged into a fake Wazuh manager, the units, the
example configuration and the environment file."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
import yaml

from sync.config import API_KEY_ENV, ENV_KEYS, KEYS, load_config

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
INSTALL = DEPLOY / "install.sh"
DATA = Path(__file__).resolve().parent / "data" / "deploy"
BEGIN_MARK = "<!-- wazuh-misp-ioc begin -->"
SYSTEMD_ANALYZE = "/usr/bin/systemd-analyze"
UNITS = ("wazuh-ioc-tailer.service", "misp-ioc-sync.service", "misp-ioc-sync.timer")

# The variables of the env-file deployment (existing-deployment.md).
OLD_ENV_VARIABLES = {
    "MISP_URL",
    "MISP_API_KEY",
    "MISP_VERIFY_SSL",
    "MISP_USE_TIMESTAMP_FILTER",
    "MISP_LAST_N_DAYS",
    "MISP_TO_IDS_ONLY",
    "MISP_PUBLISHED_ONLY",
    "MISP_TAG_FILTER",
    "MISP_LIMIT",
    "MISP_MAX_PAGES",
    "IPS_DB_PATH",
    "HASHES_DB_PATH",
    "DOMAINS_DB_PATH",
    "URLS_DB_PATH",
    "MISP_SYNC_LOG",
    "MISP_SYNC_LOG_ENABLED",
    "MISP_SUPPRESS_TLS_WARN",
}
# What the tailer's unit reads from the same file.
TAILER_ENV_VARIABLES = {
    "WAZUH_ALERTS_PATH",
    "IOC_STATE_DIR",
    "IOC_MIN_LEVEL",
    "IOC_ENRICHMENT_LOG",
}


@pytest.fixture
def manager(tmp_path: Path) -> Path:
    """A staged root that looks like a Wazuh 4.x manager before the install."""
    root = tmp_path / "root"
    for path in (
        "etc/systemd/system",
        "etc/logrotate.d",
        "etc/default",
        "opt",
        "var/lib",
        "var/ossec/etc/rules",
        "var/ossec/logs/alerts",
    ):
        (root / path).mkdir(parents=True)
    conf = root / "var/ossec/etc/ossec.conf"
    shutil.copyfile(DATA / "ossec.conf", conf)
    conf.chmod(0o660)
    shutil.copyfile(DATA / "local_rules.xml", root / "var/ossec/etc/rules/x.xml")
    for unit in ("misp-ioc-sync.service", "misp-ioc-sync.timer"):
        shutil.copyfile(DATA / f"old-{unit}", root / "etc/systemd/system" / unit)
    return root


def run_install(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = ["bash", str(INSTALL), "--root", str(root), *args]
    if "--uninstall" not in args:
        command.append("--no-venv")
    done = subprocess.run(command, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done


def snapshot(root: Path) -> dict[str, tuple[int, bytes | None]]:
    """Every path under root with its mode and, for files, its content."""
    tree = {}
    for path in sorted(root.rglob("*")):
        mode = stat.S_IMODE(path.lstat().st_mode)
        content = path.read_bytes() if path.is_file() else None
        tree[str(path.relative_to(root))] = (mode, content)
    return tree


def backups(root: Path) -> list[Path]:
    return sorted((root / "var/ossec/etc").glob("ossec.conf.pre-*"))


def test_install_twice_gives_the_same_tree(manager: Path) -> None:
    """A second run changes no file, no content and no mode."""
    run_install(manager)
    first = snapshot(manager)

    run_install(manager)

    assert snapshot(manager) == first
    assert "etc/systemd/system/wazuh-ioc-tailer.service" in first


def test_install_adds_the_localfile_block_once_after_one_backup(
    manager: Path,
) -> None:
    """ossec.conf gains one marked block; the original is saved once."""
    original = (DATA / "ossec.conf").read_text()

    run_install(manager)
    run_install(manager)

    conf = (manager / "var/ossec/etc/ossec.conf").read_text()
    assert conf.count(BEGIN_MARK) == 1
    assert conf.count("<location>/var/ossec/logs/ioc_enrichment.json<") == 1
    assert conf.startswith(original)
    assert [path.read_text() for path in backups(manager)] == [original]
    assert stat.S_IMODE((manager / "var/ossec/etc/ossec.conf").stat().st_mode) == 0o660


def test_install_sets_modes_and_reports_the_owners_it_skipped(
    manager: Path,
) -> None:
    """Staged files get their modes; chown and systemctl are printed instead."""
    done = run_install(manager)

    modes = {path: mode for path, (mode, _) in snapshot(manager).items()}
    assert modes["etc/wazuh-misp-ioc"] == 0o750
    assert modes["etc/wazuh-misp-ioc/config.yaml"] == 0o640
    assert modes["etc/default/misp-ioc-sync"] == 0o640
    assert modes["var/ioc"] == 0o750
    assert modes["var/lib/wazuh-misp-ioc"] == 0o750
    assert modes["var/ossec/etc/rules/0800-misp_ioc_rules.xml"] == 0o660
    assert modes["etc/logrotate.d/wazuh-misp-ioc"] == 0o644
    assert all(modes[f"etc/systemd/system/{unit}"] == 0o644 for unit in UNITS)
    for line in (
        "skip: chown root:wazuh /etc/wazuh-misp-ioc",
        "skip: chown wazuh:wazuh /var/ioc",
        "skip: chown root:wazuh /var/ossec/etc/rules/0800-misp_ioc_rules.xml",
        "skip: systemctl daemon-reload",
    ):
        assert line in done.stdout.splitlines()


def test_install_never_overwrites_user_config_or_env_file(manager: Path) -> None:
    """An existing config.yaml and /etc/default/misp-ioc-sync stay as they are."""
    old_env = (DATA / "old-misp-ioc-sync.env").read_bytes()
    (manager / "etc/default/misp-ioc-sync").write_bytes(old_env)
    (manager / "etc/default/misp-ioc-sync").chmod(0o644)
    (manager / "etc/wazuh-misp-ioc").mkdir()
    (manager / "etc/wazuh-misp-ioc/config.yaml").write_text("tailer:\n  min_level: 7\n")

    done = run_install(manager)

    assert (manager / "etc/default/misp-ioc-sync").read_bytes() == old_env
    config = (manager / "etc/wazuh-misp-ioc/config.yaml").read_text()
    assert config == "tailer:\n  min_level: 7\n"
    assert "kept existing /etc/default/misp-ioc-sync" in done.stdout
    assert "readable by every user (mode 644)" in done.stdout


def test_install_points_at_the_old_integratord_hook_and_duplicate_rule(
    manager: Path,
) -> None:
    """The custom-misp.py block and a second rule 101080 are named, not removed."""
    done = run_install(manager)

    assert re.search(r"line \d+:\s+<name>custom-misp.py</name>", done.stdout)
    assert "rule 101080 is also defined in: /var/ossec/etc/rules/x.xml" in done.stdout
    assert "custom-misp.py" in (manager / "var/ossec/etc/ossec.conf").read_text()


def test_install_refuses_a_root_without_ossec_conf(manager: Path) -> None:
    """No ossec.conf: exit 2 with the path named, and nothing installed."""
    (manager / "var/ossec/etc/ossec.conf").unlink()
    before = snapshot(manager)

    done = subprocess.run(
        ["bash", str(INSTALL), "--root", str(manager), "--no-venv"],
        capture_output=True,
        text=True,
        timeout=30,
    )

    assert done.returncode == 2
    assert f"ossec.conf: {manager}/var/ossec/etc/ossec.conf missing" in done.stderr
    assert snapshot(manager) == before


def test_uninstall_keeps_only_user_data_and_backups(manager: Path) -> None:
    """Units, rules, logrotate file, manifest and the ossec.conf block go."""
    before = snapshot(manager)
    run_install(manager)

    run_install(manager, "--uninstall")

    after = snapshot(manager)
    kept = {
        "etc/wazuh-misp-ioc",
        "etc/wazuh-misp-ioc/config.yaml",
        "etc/default/misp-ioc-sync",
        "var/ioc",
        "var/lib/wazuh-misp-ioc",
    }
    saved = {str(path.relative_to(manager)) for path in backups(manager)}
    assert set(after) - set(before) == kept | saved
    assert {path: after[path] for path in before} == before
    assert len(saved) == 2


def test_uninstall_puts_back_the_units_of_the_env_file_deployment(
    manager: Path,
) -> None:
    """Units of the same name are replaced on install and restored on uninstall."""
    old_unit = (DATA / "old-misp-ioc-sync.service").read_bytes()
    unit = manager / "etc/systemd/system/misp-ioc-sync.service"
    run_install(manager)
    replaced = unit.read_bytes()
    saved = manager / "opt/wazuh-misp-ioc/replaced/etc/systemd/system"

    run_install(manager)
    saved_after_second_run = (saved / "misp-ioc-sync.service").read_bytes()
    done = run_install(manager, "--uninstall")

    assert replaced == (DEPLOY / "systemd/misp-ioc-sync.service").read_bytes()
    assert saved_after_second_run == old_unit
    assert unit.read_bytes() == old_unit
    assert "restored /etc/systemd/system/misp-ioc-sync.timer" in done.stdout
    assert not (manager / "opt/wazuh-misp-ioc").exists()


def test_uninstall_purge_leaves_the_tree_as_before_plus_backups(
    manager: Path,
) -> None:
    """With --purge the store, config, env file and checkpoint go as well."""
    before = snapshot(manager)
    run_install(manager)
    for name in ("ips.db", "ips.db-wal", "urls.db", ".sync.lock", ".last-attempt.json"):
        (manager / "var/ioc" / name).write_bytes(b"SQLite format 3\x00")
    (manager / "var/lib/wazuh-misp-ioc/state.db").write_bytes(b"")

    run_install(manager, "--uninstall", "--purge")

    after = snapshot(manager)
    for path in backups(manager):
        del after[str(path.relative_to(manager))]
    assert after == before


def test_uninstall_ignores_manifest_entries_it_did_not_install(
    manager: Path,
) -> None:
    """A forged manifest line cannot make uninstall delete another file."""
    run_install(manager)
    victim = manager / "etc/passwd"
    victim.write_text("root:x:0:0::/root:/bin/bash\n")
    manifest = manager / "opt/wazuh-misp-ioc/install-manifest"
    with manifest.open("a") as out:
        out.write("/etc/passwd\n/var/ossec/etc/rules/../ossec.conf.xml\n")

    done = run_install(manager, "--uninstall")

    assert victim.exists()
    assert "ignored unexpected entry (got /etc/passwd)" in done.stderr
    assert not (manager / "etc/systemd/system/wazuh-ioc-tailer.service").exists()


def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    """systemd's own checker reports nothing at all on the three units."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("misp-ioc-sync", "wazuh-ioc-tailer"):
        (bin_dir / name).write_text("#!/bin/sh\nexit 0\n")
        (bin_dir / name).chmod(0o755)
    units = tmp_path / "units"
    units.mkdir()
    for unit in UNITS:
        text = (DEPLOY / "systemd" / unit).read_text()
        text = text.replace("/opt/wazuh-misp-ioc/venv/bin/", f"{bin_dir}/")
        (units / unit).write_text(text)

    done = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", *(str(units / unit) for unit in UNITS)],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "SYSTEMD_LOG_COLOR": "0"},
    )

    assert (done.returncode, done.stdout + done.stderr) == (0, "")


def test_systemd_analyze_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    """The check above can fail: a missing ExecStart binary is reported."""
    unit = tmp_path / "misp-ioc-sync.service"
    shutil.copyfile(DEPLOY / "systemd/misp-ioc-sync.service", unit)

    done = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=30,
    )

    assert done.returncode != 0
    assert "/opt/wazuh-misp-ioc/venv/bin/misp-ioc-sync" in done.stderr


def unit_settings(name: str) -> dict[str, list[str]]:
    """key -> values of one unit file (keys may repeat in systemd units)."""
    settings: dict[str, list[str]] = {}
    for line in (DEPLOY / "systemd" / name).read_text().splitlines():
        if "=" in line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def test_timer_and_sync_unit_keep_the_existing_deployment_schedule() -> None:
    """Same unit names, env file, user, priority and timer as before."""
    timer = unit_settings("misp-ioc-sync.timer")
    sync = unit_settings("misp-ioc-sync.service")

    assert timer["OnBootSec"] == ["5min"]
    assert timer["OnUnitActiveSec"] == ["1h"]
    assert timer["AccuracySec"] == ["1min"]
    assert timer["Persistent"] == ["true"]
    assert sync["EnvironmentFile"] == ["/etc/default/misp-ioc-sync"]
    assert (sync["User"], sync["Group"], sync["Nice"]) == (["wazuh"],) * 2 + (["10"],)
    assert sync["IOSchedulingPriority"] == ["7"]


def test_tailer_unit_can_write_the_enrichment_directory_and_the_store() -> None:
    """Rotation needs the log directory; SQLite WAL readers need /var/ioc."""
    tailer = unit_settings("wazuh-ioc-tailer.service")

    assert tailer["Type"] == ["notify"]
    assert tailer["WatchdogSec"] == ["60"]
    assert tailer["EnvironmentFile"] == ["-/etc/default/misp-ioc-sync"]
    assert tailer["ReadWritePaths"] == ["/var/ossec/logs", "/var/ioc"]
    assert tailer["ReadOnlyPaths"] == ["/var/ossec/logs/alerts"]
    assert tailer["RestrictAddressFamilies"] == ["AF_UNIX"]


def test_logrotate_rotates_by_rename_as_wazuh() -> None:
    """No copytruncate; a fresh 0640 file; su for the group-writable logs dir."""
    text = (DEPLOY / "logrotate/wazuh-misp-ioc").read_text()
    directives = [
        line.strip() for line in text.splitlines() if not line.lstrip().startswith("#")
    ]

    assert "copytruncate" not in directives
    assert "create 0640 wazuh wazuh" in directives
    assert "su wazuh wazuh" in directives
    assert directives[0].startswith("/var/ossec/logs/ioc_enrichment.json ")


def test_example_config_loads_and_shows_every_key_at_its_default() -> None:
    """The example is valid, complete, and changes no default."""
    document = yaml.safe_load((DEPLOY / "config.example.yaml").read_text())

    cfg = load_config(path=DEPLOY / "config.example.yaml", env={})

    shown = {f"{section}.{key}" for section, body in document.items() for key in body}
    assert shown == set(KEYS) - {"misp.api_key"}
    for path in shown:
        section, _, key = path.partition(".")
        assert getattr(getattr(cfg, section), key) == KEYS[path].default, path


def env_assignments(text: str, *, commented: bool) -> dict[str, str]:
    """VAR=value lines of an env file, optionally with their leading #."""
    pattern = r"^#?([A-Z][A-Z0-9_]*)=(.*)$" if commented else r"^([A-Z_0-9]+)=(.*)$"
    return dict(re.findall(pattern, text, flags=re.MULTILINE))


def test_env_file_names_every_variable_of_the_existing_deployment() -> None:
    """Each documented variable is there and known to the config loader."""
    text = (DEPLOY / "misp-ioc-sync.env").read_text()

    names = set(env_assignments(text, commented=True))

    assert names - {"MISP_CA_BUNDLE"} - TAILER_ENV_VARIABLES == OLD_ENV_VARIABLES
    assert names >= TAILER_ENV_VARIABLES
    assert names <= set(ENV_KEYS) | {API_KEY_ENV}
    assert env_assignments(text, commented=False) == {}


def test_env_file_defaults_are_safe_when_uncommented() -> None:
    """Uncommenting every line changes nothing and keeps TLS verification on."""
    text = (DEPLOY / "misp-ioc-sync.env").read_text()
    env = env_assignments(text, commented=True)
    env["MISP_URL"] = "https://misp.example.org"
    env["MISP_CA_BUNDLE"] = ""

    cfg = load_config(path=DEPLOY / "config.example.yaml", env=env)

    assert cfg == load_config(
        path=DEPLOY / "config.example.yaml", env={"MISP_URL": env["MISP_URL"]}
    )
    assert cfg.misp.verify_tls is True
    assert cfg.misp.suppress_tls_warning is False


def test_old_env_file_loads_to_the_settings_it_documents() -> None:
    """An env file of the old deployment keeps its meaning, key included."""
    env = env_assignments((DATA / "old-misp-ioc-sync.env").read_text(), commented=False)

    cfg = load_config(path=DEPLOY / "config.example.yaml", env=env)

    assert cfg.misp.url == "https://misp.example.org"
    assert cfg.misp.api_key.reveal() == env["MISP_API_KEY"]
    assert (cfg.misp.verify_tls, cfg.misp.suppress_tls_warning) == (False, True)
    assert (cfg.misp.use_timestamp_filter, cfg.misp.last_n_days) == (True, 3)
    assert (cfg.misp.to_ids_only, cfg.misp.published_only) == (False, False)
    assert (cfg.misp.tags, cfg.misp.page_size, cfg.misp.max_pages) == ((), 500, 200)
    assert cfg.store.ips_db == "/var/ioc/ips.db"
    assert cfg.store.urls_db == "/var/ioc/urls.db"
    assert cfg.sync.log_path == "/var/ossec/logs/misp-sync.log"
    assert cfg.sync.log_enabled is True


# The commands of the next steps, in the order a first installation needs them.
STEP_MARKS = (
    "MISP_API_KEY",
    "--check-config",
    "systemctl start misp-ioc-sync.service",
    "systemctl enable --now misp-ioc-sync.timer wazuh-ioc-tailer.service",
    "systemctl restart wazuh-manager",
)


def step_order(text: str) -> list[int]:
    return [text.index(mark) for mark in STEP_MARKS]


def test_printed_next_steps_follow_the_readme_order(manager: Path) -> None:
    """Check, first sync, then enable, then restart: in both places, and the
    installer has already reloaded systemd itself."""
    printed = run_install(manager).stdout
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Installing on a Wazuh manager") :]
    section = section[: section.index("\n## ", 5)]

    printed_steps = printed[printed.index("Next steps") :]

    assert step_order(printed_steps) == sorted(step_order(printed_steps))
    assert step_order(section) == sorted(step_order(section))
    assert "skip: systemctl daemon-reload" in printed
    assert "runs `systemctl daemon-reload` itself" in section


def test_root_without_manager_files_names_what_to_create(tmp_path: Path) -> None:
    """A staged root without ossec's rules directory is refused with the paths."""
    root = tmp_path / "bare"
    root.mkdir()

    done = subprocess.run(
        ["bash", str(INSTALL), "--root", str(root), "--no-venv"],
        capture_output=True,
        text=True,
        timeout=30,
    )

    assert done.returncode == 2
    assert f"create {root}/var/ossec/etc/rules and {root}/var/ossec/etc/ossec.conf" in (
        done.stderr
    )
    assert not (root / "etc").exists()
