"""The one configuration of misp-ioc-sync and wazuh-ioc-tailer.

Layers, lowest first: built-in defaults, the YAML file, the environment (the
variables of the env-file deployment keep working), then ``overrides`` from
command-line flags. Every problem of every layer is collected and raised at
once as :class:`ConfigError`.

The MISP API key never comes from the YAML file. It is read from
``MISP_API_KEY``, else from ``misp.api_key_file``, else from the systemd
credential ``$CREDENTIALS_DIRECTORY/misp_api_key``, and is kept in a
:class:`Secret` that prints as a mask.
"""

from __future__ import annotations

import dataclasses
import difflib
import hmac
import logging
import math
import os
import stat
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from sync.logs import MASK, kv

log = logging.getLogger(__name__)

CONFIG_PATH_ENV = "WAZUH_MISP_IOC_CONFIG"
DEFAULT_CONFIG_PATH = "/etc/wazuh-misp-ioc/config.yaml"
API_KEY_ENV = "MISP_API_KEY"
CREDENTIAL_NAME = "misp_api_key"
EXTRA_FIELD_TYPES = ("ip", "domain", "url", "hash")
NOT_OBSERVABLE_ROOTS = ("agent", "manager", "predecoder", "location")
START_AT_CHOICES = ("end", "beginning")

_TRUE_WORDS = ("true", "yes", "1")
_FALSE_WORDS = ("false", "no", "0")
_ENV_PREFIXES = ("MISP_", "IOC_", "WAZUH_MISP_IOC_")


class ConfigError(Exception):
    """Every problem found in one configuration, one message per problem."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = list(errors)
        super().__init__("\n".join(self.errors))


class Secret:
    """A value that prints as a mask; :meth:`reveal` gives it back."""

    __slots__ = ("_value", "source")

    def __init__(self, value: str, *, source: str = "") -> None:
        self._value = value
        self.source = source

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return MASK

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value, other._value)

    def __hash__(self) -> int:
        return hash(self._value)

    def __copy__(self) -> Secret:
        return self

    def __deepcopy__(self, memo: dict) -> Secret:
        return self

    def __reduce__(self) -> tuple:
        raise TypeError("Secret: refusing to pickle the API key")


@dataclass(frozen=True)
class ExtraField(Mapping):
    """An extra alert field path to extract, with the observable type it holds.

    Also a read-only mapping (``entry["path"]``, ``entry.get("type")``), the
    shape it has in the YAML file.
    """

    path: str
    type: str

    def __getitem__(self, key: str) -> str:
        if key not in ("path", "type"):
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(("path", "type"))

    def __len__(self) -> int:
        return 2


# A rule returns None for a good value, else (what is wrong, what is expected).
Rule = Callable[[object], tuple[str, str] | None]


def _key(
    default: object,
    kind: str,
    *,
    env: str | None = None,
    check: Rule | None = None,
) -> object:
    """Declare one configuration key: its default, kind, variable and rule."""
    return field(default=default, metadata={"kind": kind, "env": env, "check": check})


def _at_least(low: float) -> Rule:
    return lambda value: (
        None if value >= low else ("out of range", f"a number >= {low}")
    )


def _above(low: float) -> Rule:
    return lambda value: None if value > low else ("out of range", f"a number > {low}")


def _between(low: float, high: float) -> Rule:
    return lambda value: (
        None
        if low <= value <= high
        else ("out of range", f"a number from {low} to {high}")
    )


def _one_of(*choices: str) -> Rule:
    return lambda value: (
        None if value in choices else ("unknown choice", f"one of {', '.join(choices)}")
    )


def _not_empty(value: object) -> tuple[str, str] | None:
    return None if value else ("empty", "a non-empty path")


def _http_url(value: object) -> tuple[str, str] | None:
    if value == "":
        return None
    expected = "an http:// or https:// URL with a host, e.g. https://misp.example.org"
    try:
        parts = urlsplit(str(value))
        host = parts.hostname
        has_credentials = parts.username is not None or parts.password is not None
        parts.port  # noqa: B018 - raises ValueError on a port out of range
    except ValueError as err:
        return (f"not a valid URL ({err})", expected)
    if has_credentials:
        return ("holds credentials (user:password@)", expected + " without them")
    if parts.scheme in ("http", "https") and host:
        return None
    return ("not an http(s) URL", expected)


@dataclass(frozen=True)
class MispConfig:
    url: str = _key("", "str", env="MISP_URL", check=_http_url)
    api_key: Secret | None = _key(None, "secret")
    api_key_file: str | None = _key(None, "optional_str", env="MISP_API_KEY_FILE")
    verify_tls: bool = _key(True, "bool", env="MISP_VERIFY_SSL")
    ca_bundle: str | None = _key(None, "optional_str", env="MISP_CA_BUNDLE")
    suppress_tls_warning: bool = _key(False, "bool", env="MISP_SUPPRESS_TLS_WARN")
    connect_timeout_s: float = _key(10.0, "float", check=_above(0))
    read_timeout_s: float = _key(120.0, "float", check=_above(0))
    retries: int = _key(5, "int", check=_at_least(0))
    page_size: int = _key(500, "int", env="MISP_LIMIT", check=_at_least(1))
    max_pages: int = _key(0, "int", env="MISP_MAX_PAGES", check=_at_least(0))
    use_timestamp_filter: bool = _key(False, "bool", env="MISP_USE_TIMESTAMP_FILTER")
    last_n_days: int = _key(30, "int", env="MISP_LAST_N_DAYS", check=_at_least(1))
    to_ids_only: bool = _key(True, "bool", env="MISP_TO_IDS_ONLY")
    published_only: bool = _key(False, "bool", env="MISP_PUBLISHED_ONLY")
    tags: tuple[str, ...] = _key((), "str_list", env="MISP_TAG_FILTER")
    types: tuple[str, ...] = _key((), "str_list")
    categories: tuple[str, ...] = _key((), "str_list")
    max_age_days: int = _key(0, "int", check=_at_least(0))
    enforce_warninglist: bool = _key(False, "bool")


@dataclass(frozen=True)
class StoreConfig:
    ips_db: str = _key("/var/ioc/ips.db", "str", env="IPS_DB_PATH", check=_not_empty)
    hashes_db: str = _key(
        "/var/ioc/hashes.db", "str", env="HASHES_DB_PATH", check=_not_empty
    )
    domains_db: str = _key(
        "/var/ioc/domains.db", "str", env="DOMAINS_DB_PATH", check=_not_empty
    )
    urls_db: str = _key("/var/ioc/urls.db", "str", env="URLS_DB_PATH", check=_not_empty)


@dataclass(frozen=True)
class SyncConfig:
    overlap_s: int = _key(3600, "int", check=_at_least(0))
    reconcile_interval_s: int = _key(86400, "int", check=_at_least(0))
    max_removal_ratio: float = _key(0.5, "float", check=_between(0, 1))
    warninglists_dir: str | None = _key(None, "optional_str")
    warninglists: tuple[str, ...] = _key((), "str_list")
    log_path: str = _key(
        "/var/ossec/logs/misp-sync.log", "str", env="MISP_SYNC_LOG", check=_not_empty
    )
    log_enabled: bool = _key(True, "bool", env="MISP_SYNC_LOG_ENABLED")
    retrohunt_days: int = _key(0, "int", check=_at_least(0))
    stale_after_s: int = _key(86400, "int", check=_at_least(0))


@dataclass(frozen=True)
class TailerConfig:
    alerts_path: str = _key(
        "/var/ossec/logs/alerts/alerts.json",
        "str",
        env="WAZUH_ALERTS_PATH",
        check=_not_empty,
    )
    state_dir: str = _key(
        "/var/lib/wazuh-misp-ioc", "str", env="IOC_STATE_DIR", check=_not_empty
    )
    min_level: int = _key(10, "int", env="IOC_MIN_LEVEL", check=_between(0, 16))
    start_at: str = _key("end", "str", check=_one_of(*START_AT_CHOICES))
    keep_groups: tuple[str, ...] = _key((), "str_list")
    keep_rule_ids: tuple[str, ...] = _key((), "str_list")
    drop_groups: tuple[str, ...] = _key((), "str_list")
    drop_rule_ids: tuple[str, ...] = _key((), "str_list")
    skip_integrations: tuple[str, ...] = _key((), "str_list")
    max_line_bytes: int = _key(65536, "int", check=_at_least(1))
    poll_interval_s: float = _key(0.25, "float", check=_above(0))
    stats_interval_s: float = _key(60.0, "float", check=_above(0))
    reload_interval_s: float = _key(2.0, "float", check=_above(0))
    skip_private: bool = _key(True, "bool")
    extra_fields: tuple[ExtraField, ...] = _key((), "extra_fields")


@dataclass(frozen=True)
class OutputConfig:
    path: str = _key(
        "/var/ossec/logs/ioc_enrichment.json",
        "str",
        env="IOC_ENRICHMENT_LOG",
        check=_not_empty,
    )
    # An enrichment carries fixed fields (rule, agent, indicator context).
    max_line_bytes: int = _key(30000, "int", check=_at_least(1024))
    flood_window_s: float = _key(60.0, "float", check=_at_least(0))


@dataclass(frozen=True)
class Config:
    misp: MispConfig = field(default_factory=MispConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    sync: SyncConfig = field(default_factory=SyncConfig)
    tailer: TailerConfig = field(default_factory=TailerConfig)
    output: OutputConfig = field(default_factory=OutputConfig)


SECTIONS: dict[str, type] = {
    "misp": MispConfig,
    "store": StoreConfig,
    "sync": SyncConfig,
    "tailer": TailerConfig,
    "output": OutputConfig,
}


@dataclass(frozen=True)
class KeySpec:
    """One configuration key as declared on its section dataclass."""

    path: str
    default: object
    kind: str
    env: str | None
    check: Rule | None


def iter_keys() -> Iterator[KeySpec]:
    """Every configuration key, in declaration order."""
    for section, cls in SECTIONS.items():
        for spec in dataclasses.fields(cls):
            meta = spec.metadata
            yield KeySpec(
                path=f"{section}.{spec.name}",
                default=spec.default,
                kind=meta["kind"],
                env=meta["env"],
                check=meta["check"],
            )


KEYS: dict[str, KeySpec] = {spec.path: spec for spec in iter_keys()}
ENV_KEYS: dict[str, KeySpec] = {spec.env: spec for spec in KEYS.values() if spec.env}


def load_config(
    *,
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, object] | None = None,
) -> Config:
    """Build the effective configuration or raise ConfigError with every problem.

    ``path`` defaults to ``$WAZUH_MISP_IOC_CONFIG``, else the default file,
    which may be absent (then built-in defaults apply). ``overrides`` maps
    dotted key paths to values from command-line flags.
    """
    env = os.environ if env is None else env
    layers = _Layers()

    document = _read_document(path, env, layers.errors)
    layers.apply_document(document)
    layers.apply_env(env)
    layers.apply_overrides(overrides or {})

    sections = {
        name: cls(**layers.section_values(name)) for name, cls in SECTIONS.items()
    }
    api_key = _load_api_key(layers, env)
    sections["misp"] = dataclasses.replace(sections["misp"], api_key=api_key)
    cfg = Config(**sections)

    for warning in layers.warnings + _risky_values(cfg, layers.sources):
        log.warning(warning)
    if layers.errors:
        raise ConfigError(layers.errors)
    return cfg


def config_as_dict(cfg: Config) -> dict[str, dict[str, object]]:
    """The effective configuration as plain data, the API key masked."""
    return {
        name: {
            spec.name: _plain(getattr(getattr(cfg, name), spec.name))
            for spec in dataclasses.fields(cls)
        }
        for name, cls in SECTIONS.items()
    }


def _plain(value: object) -> object:
    if isinstance(value, Secret):
        return f"{MASK} (from {value.source})"
    if isinstance(value, ExtraField):
        return {"path": value.path, "type": value.type}
    if isinstance(value, tuple):
        return [_plain(entry) for entry in value]
    return value


class _Invalid(Exception):
    """A value of the wrong shape: what is wrong and what was expected."""

    def __init__(self, what: str, expected: str) -> None:
        super().__init__(what)
        self.what = what
        self.expected = expected


def _without_credentials(raw: object) -> object:
    """`raw` with anything between `//` and `@` masked, for error messages."""
    text = str(raw)
    scheme, separator, rest = text.partition("//")
    if not separator or "@" not in rest.split("/", 1)[0]:
        return raw
    return f"{scheme}//********@{rest.split('@', 1)[1]}"


def _error(where: str, what: str, got: object, expected: str) -> str:
    return f"{where}: {what} (got {_show(got)}); expected {expected}"


def _show(value: object) -> str:
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 80 else text[:77] + "..."


class _Layers:
    """Defaults overlaid by the file, the environment and the flags."""

    def __init__(self) -> None:
        self.values = {path: spec.default for path, spec in KEYS.items()}
        self.sources = {path: "default" for path in KEYS}
        self.errors: list[str] = []
        self.warnings: list[str] = []

    def section_values(self, section: str) -> dict[str, object]:
        prefix = section + "."
        return {
            path.removeprefix(prefix): value
            for path, value in self.values.items()
            if path.startswith(prefix)
        }

    def set(self, path: str, raw: object, *, where: str, from_text: bool) -> None:
        spec = KEYS[path]
        try:
            value = _from_text(spec, raw) if from_text else _from_value(spec, raw)
        except _Invalid as err:
            self.errors.append(_error(where, err.what, raw, err.expected))
            return

        broken = spec.check(value) if spec.check else None
        if broken:
            shown = _without_credentials(raw) if spec.check is _http_url else raw
            self.errors.append(_error(where, broken[0], shown, broken[1]))
            return
        self.values[path] = value
        self.sources[path] = where

    def apply_document(self, document: Mapping[str, object]) -> None:
        for section, body in document.items():
            if section not in SECTIONS:
                self.errors.append(_unknown_key(str(section), SECTIONS))
            elif body is not None and not isinstance(body, Mapping):
                self.errors.append(
                    _error(f"config {section}", "not a mapping", body, "key: value")
                )
            else:
                self._apply_section(section, body or {})

    def _apply_section(self, section: str, body: Mapping[str, object]) -> None:
        settable = {path: spec for path, spec in KEYS.items() if spec.kind != "secret"}
        for name, raw in body.items():
            path = f"{section}.{name}"
            if path == "misp.api_key":
                self.errors.append(_api_key_in_file_error(raw))
            elif path not in settable:
                self.errors.append(_unknown_key(path, settable))
            else:
                self.set(path, raw, where=f"config {path}", from_text=False)

    def apply_env(self, env: Mapping[str, str]) -> None:
        for var, spec in ENV_KEYS.items():
            text = env.get(var)
            # An empty assignment (VAR=) in an env file means "not set" for
            # numbers and booleans; for strings and lists it means empty.
            if text is None or (text.strip() == "" and spec.kind in _SCALARS):
                continue
            self.set(spec.path, text, where=f"env {var}", from_text=True)
        self.warnings.extend(_unknown_env_warnings(env))

    def apply_overrides(self, overrides: Mapping[str, object]) -> None:
        settable = {path: spec for path, spec in KEYS.items() if spec.kind != "secret"}
        for path, raw in overrides.items():
            if path not in settable:
                self.errors.append(_unknown_key(path, settable))
                continue
            as_text = isinstance(raw, str) and KEYS[path].kind in _SCALARS
            self.set(path, raw, where=f"config {path}", from_text=as_text)


_SCALARS = ("bool", "int", "float")


def _unknown_key(path: str, known: Mapping[str, object]) -> str:
    close = difflib.get_close_matches(path, list(known), n=1, cutoff=0.75)
    hint = (
        f"a known key; did you mean {close[0]}?"
        if close
        else "a key listed in the configuration reference"
    )
    return _error(f"config {path}", "unknown key", path.rpartition(".")[2], hint)


def _api_key_in_file_error(raw: object) -> str:
    # Only a value that could be a key is masked; an empty entry is shown as is.
    shown = MASK if raw not in (None, "") else ("null" if raw is None else "''")
    return (
        f"config misp.api_key: the API key must not be written in the "
        f"configuration file (got {shown}); expected misp.api_key_file, "
        f"the {API_KEY_ENV} environment variable or the systemd credential "
        f"{CREDENTIAL_NAME}"
    )


def _unknown_env_warnings(env: Mapping[str, str]) -> list[str]:
    known = {*ENV_KEYS, API_KEY_ENV, CONFIG_PATH_ENV}
    warnings = []
    for var in env:
        if var in known or not var.startswith(_ENV_PREFIXES):
            continue
        close = difflib.get_close_matches(var, list(known), n=1, cutoff=0.8)
        if close:
            warnings.append(kv("env_variable_unknown", name=var, did_you_mean=close[0]))
    return warnings


def _from_value(spec: KeySpec, raw: object) -> object:
    """Convert a value from YAML or a flag to the kind of ``spec``."""
    kind = spec.kind
    if kind == "bool":
        return _to_bool(raw)
    if kind == "int":
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise _Invalid("not a whole number", "a whole number")
        return raw
    if kind == "float":
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            raise _Invalid("not a number", "a number")
        return _finite(float(raw))
    if kind == "str":
        if not isinstance(raw, str):
            raise _Invalid("not a string", "a string")
        return raw
    if kind == "optional_str":
        if raw is not None and not isinstance(raw, str):
            raise _Invalid("not a string", "a string or null")
        return raw or None
    if kind == "str_list":
        return _to_str_list(raw)
    return _to_extra_fields(raw)


def _from_text(spec: KeySpec, text: str) -> object:
    """Convert an environment variable's text to the kind of ``spec``."""
    kind = spec.kind
    if kind == "int":
        try:
            return int(text.strip(), 10)
        except ValueError:
            raise _Invalid("not a whole number", "a whole number") from None
    if kind == "float":
        try:
            return _finite(float(text.strip()))
        except ValueError:
            raise _Invalid("not a number", "a number") from None
    if kind == "str_list":
        return tuple(entry.strip() for entry in text.split(",") if entry.strip())
    if kind == "optional_str":
        return text.strip() or None
    if kind == "str":
        return text.strip()
    return _to_bool(text)


def _to_bool(raw: object) -> bool:
    if isinstance(raw, bool):
        return raw
    word = str(raw).strip().lower() if isinstance(raw, str | int) else None
    if word in _TRUE_WORDS:
        return True
    if word in _FALSE_WORDS:
        return False
    raise _Invalid("not a boolean", "true/false, yes/no or 1/0 (any case)")


def _finite(number: float) -> float:
    if not math.isfinite(number):
        raise _Invalid("not a finite number", "a number")
    return number


def _to_str_list(raw: object) -> tuple[str, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list | tuple):
        raise _Invalid("not a list", "a list such as [a, b]")

    entries = []
    for entry in raw:
        if isinstance(entry, bool) or not isinstance(entry, str | int):
            raise _Invalid(f"entry {entry!r} is not a string", "a list of strings")
        text = str(entry).strip()
        if not text:
            raise _Invalid("empty entry", "a list of non-empty strings")
        entries.append(text)
    return tuple(entries)


def _to_extra_fields(raw: object) -> tuple[ExtraField, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list | tuple):
        raise _Invalid("not a list", "a list of {path, type} mappings")
    fields, problems = [], []
    for index, entry in enumerate(raw):
        try:
            fields.append(_to_extra_field(index, entry))
        except _Invalid as err:
            problems.append(err)
    if problems:
        raise _Invalid(
            "; ".join(problem.what for problem in problems), problems[0].expected
        )
    return tuple(fields)


def _to_extra_field(index: int, entry: object) -> ExtraField:
    if isinstance(entry, ExtraField):
        return entry
    expected = f"{{path: <field path>, type: <{'|'.join(EXTRA_FIELD_TYPES)}>}}"
    if not isinstance(entry, Mapping) or set(entry) != {"path", "type"}:
        raise _Invalid(f"entry [{index}] is not a path/type mapping", expected)

    path, kind = entry["path"], entry["type"]
    if not isinstance(path, str) or not path.strip():
        raise _Invalid(f"entry [{index}] has an empty or non-string path", expected)
    if kind not in EXTRA_FIELD_TYPES:
        raise _Invalid(f"entry [{index}] has type {kind!r}", expected)
    path = path.strip()
    if any(not segment for segment in path.split(".")):
        raise _Invalid(f"entry [{index}] has an empty segment in {path!r}", expected)
    root = path.split(".", 1)[0]
    if root in NOT_OBSERVABLE_ROOTS:
        raise _Invalid(
            f"entry [{index}] path {path!r} names the alert's source, not an "
            "observable",
            f"a path outside {', '.join(NOT_OBSERVABLE_ROOTS)}",
        )
    return ExtraField(path=path, type=kind)


def _read_document(
    path: str | os.PathLike[str] | None, env: Mapping[str, str], errors: list[str]
) -> Mapping[str, object]:
    """Load the YAML file; a missing default file counts as empty."""
    explicit = path is not None or bool(env.get(CONFIG_PATH_ENV))
    file_path = Path(path or env.get(CONFIG_PATH_ENV) or DEFAULT_CONFIG_PATH)
    try:
        text = file_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if explicit:
            errors.append(
                _error(
                    f"config {file_path}",
                    "file not found",
                    str(file_path),
                    "an existing YAML file",
                )
            )
        return {}
    except (OSError, UnicodeDecodeError) as err:
        errors.append(
            _error(
                f"config {file_path}",
                "cannot read the file",
                str(err),
                "a readable UTF-8 YAML file",
            )
        )
        return {}
    return _parse_document(file_path, text, errors)


class _StrictLoader(yaml.SafeLoader):
    """The safe YAML loader, refusing a key given twice in one mapping."""

    def construct_mapping(self, node, deep=False):  # noqa: ANN001, ANN201
        seen: set[object] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, str) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"key {key!r} given twice in one mapping",
                    key_node.start_mark,
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _parse_document(
    file_path: Path, text: str, errors: list[str]
) -> Mapping[str, object]:
    try:
        document = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - safe loader
    except RecursionError:
        errors.append(
            _error(f"config {file_path}", "nested too deeply", "...", "a flat YAML")
        )
        return {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{file_path}:{mark.line + 1}" if mark else str(file_path)
        problem = getattr(err, "problem", None) or str(err)
        errors.append(
            _error(
                f"config {where}", "invalid YAML", problem, "a YAML mapping of sections"
            )
        )
        return {}

    if document is None:
        return {}
    if not isinstance(document, Mapping):
        errors.append(
            _error(
                f"config {file_path}",
                "not a mapping",
                document,
                "sections such as misp:, tailer:",
            )
        )
        return {}
    return document


def _load_api_key(layers: _Layers, env: Mapping[str, str]) -> Secret | None:
    """Take the key from the environment, the key file or the credential."""
    text = env.get(API_KEY_ENV, "").strip()
    if text:
        return _make_secret(text, f"env {API_KEY_ENV}", API_KEY_ENV, layers.errors)

    key_file = layers.values["misp.api_key_file"]
    if key_file:
        where = layers.sources["misp.api_key_file"]
        return _read_key_file(Path(key_file), where, layers)

    credentials_dir = env.get("CREDENTIALS_DIRECTORY", "").strip()
    credential = Path(credentials_dir, CREDENTIAL_NAME) if credentials_dir else None
    if credential is None or not credential.exists():
        return None
    return _read_key_file(credential, "env CREDENTIALS_DIRECTORY", layers)


def _read_key_file(key_path: Path, where: str, layers: _Layers) -> Secret | None:
    try:
        text = key_path.read_text(encoding="utf-8").strip()
        mode = key_path.stat().st_mode
    except (OSError, UnicodeDecodeError) as err:
        reason = getattr(err, "strerror", None) or str(err)
        layers.errors.append(
            _error(
                where,
                f"cannot read the API key file ({reason})",
                _path_or_mask(key_path),
                "the path of a file readable by this user",
            )
        )
        return None

    if where != "env CREDENTIALS_DIRECTORY" and mode & (stat.S_IRGRP | stat.S_IROTH):
        layers.warnings.append(
            kv(
                "api_key_file_readable_by_others",
                path=key_path,
                mode=oct(stat.S_IMODE(mode)),
                expected="0600 or 0400",
            )
        )
    if not text:
        layers.errors.append(
            _error(
                where,
                "the API key file is empty",
                str(key_path),
                "the MISP automation key",
            )
        )
        return None
    return _make_secret(text, where, str(key_path), layers.errors)


def _path_or_mask(key_path: Path) -> str:
    """The path for an error message, unless the key was given in its place."""
    text = str(key_path)
    if len(text) >= 32 and text.isalnum():
        return f"{MASK}, which looks like a key rather than a path"
    return text


def _make_secret(
    text: str, where: str, source: str, errors: list[str]
) -> Secret | None:
    if any(char.isspace() or not char.isprintable() for char in text):
        errors.append(
            _error(
                where,
                "the API key has spaces or control characters",
                MASK,
                "the MISP automation key on one line",
            )
        )
        return None
    return Secret(text, source=source)


def _risky_values(cfg: Config, sources: Mapping[str, str]) -> list[str]:
    """One warning per legal but risky choice."""
    misp, warnings = cfg.misp, []
    if not misp.verify_tls and not misp.suppress_tls_warning:
        warnings.append(
            kv(
                "tls_verification_off",
                source=sources["misp.verify_tls"],
                risk="anyone on the path can impersonate MISP",
            )
        )
    if misp.url.lower().startswith("http://"):
        warnings.append(
            kv(
                "misp_url_plain_http",
                host=urlsplit(misp.url).hostname,
                risk="the API key travels unencrypted",
            )
        )
    if misp.page_size > 10000:
        warnings.append(
            kv(
                "page_size_large",
                page_size=misp.page_size,
                risk="MISP may run out of memory or time out",
            )
        )
    if cfg.sync.max_removal_ratio > 0.9:
        warnings.append(
            kv(
                "max_removal_ratio_high",
                max_removal_ratio=cfg.sync.max_removal_ratio,
                risk="a broken MISP answer may empty the store",
            )
        )
    return warnings
