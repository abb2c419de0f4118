"""Loading the configuration: one TOML file, every key overridable from the environment, validated.

`load_config()` reads the file (``--config`` or ``CLIPWATCH_CONFIG``), applies the
``CLIPWATCH_<SECTION>__<KEY>`` environment variables, coerces every value to its declared type and
validates it. Errors name the key and what was expected.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from collections.abc import Mapping
from enum import StrEnum
from typing import Any, Literal

from .config import (
    ENV_PREFIX,
    IDENTIFIER,
    CalibrationConfig,
    Config,
    DaemonConfig,
    DuplicatesConfig,
    ErrorsConfig,
    HTTPConfig,
    IndexConfig,
    LogConfig,
    MetricsConfig,
    ModelConfig,
    ProhibitedConfig,
    QuarantineConfig,
    Secret,
    StoreConfig,
    WatchConfig,
    default_data_dir,
    parse_listen,
)
from .errors import ConfigError
from .files import within
from .vocab import VERDICT_ACTIONS, Signal

SECTIONS: dict[str, type] = {
    "watch": WatchConfig,
    "model": ModelConfig,
    "store": StoreConfig,
    "index": IndexConfig,
    "duplicates": DuplicatesConfig,
    "prohibited": ProhibitedConfig,
    "quarantine": QuarantineConfig,
    "errors": ErrorsConfig,
    "metrics": MetricsConfig,
    "http": HTTPConfig,
    "calibration": CalibrationConfig,
    "log": LogConfig,
    "daemon": DaemonConfig,
}


def load_config(path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Read the TOML file (if any), apply the environment, validate. Raises ConfigError."""
    env = os.environ if env is None else env
    path = path or env.get(ENV_PREFIX + "CONFIG") or None
    data: dict[str, Any] = {}
    if path:
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except OSError as exc:
            raise ConfigError(f"config file {str(path)!r}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {str(path)!r}: not valid TOML ({exc})") from None
    unknown = set(data) - set(SECTIONS)
    if unknown:
        raise ConfigError(f"unknown section [{sorted(unknown)[0]}] in {path}; known: {', '.join(SECTIONS)}")
    _known_env(env)
    _data_dir_named(data.get("daemon", {}), env, path)
    sections = {name: _build_section(name, cls, data.get(name, {}), env) for name, cls in SECTIONS.items()}
    config = Config(**sections, source=str(path or ""))
    return _validate(config)


def _data_dir_named(daemon: Mapping[str, Any], env: Mapping[str, str], path: object) -> None:
    """Under systemd the configuration file must name the data directory: the service's $STATE_DIRECTORY is
    invisible to a shell, and a command that found another data directory would act as a new instance
    (docs/operations.md "One server, one identity")."""
    state = env.get("STATE_DIRECTORY", "").split(":")[0]
    if not state or (isinstance(daemon, Mapping) and daemon.get("data_dir")):
        return
    where = f"the configuration file {path}" if path else "a configuration file (--config)"
    raise ConfigError(f"daemon.data_dir: name it in {where}, e.g.\n[daemon]\ndata_dir = \"{state}\"\nso that "
                      f"every clipwatch command on this server (scan, verdicts, db status...) finds the service's "
                      f"data directory and acts as its instance; $STATE_DIRECTORY ({state}) is seen by the "
                      "service only")


def _known_env(env: Mapping[str, str]) -> None:
    """A CLIPWATCH_<SECTION>__<KEY> variable that names no key is a typo (in a unit or a compose file), not
    something to ignore."""
    for var in env:
        section, sep, key = var.removeprefix(ENV_PREFIX).partition("__")
        if not var.startswith(ENV_PREFIX) or not sep:
            continue
        cls = SECTIONS.get(section.lower())
        if cls is None:
            raise ConfigError(f"{var}: no section {section.lower()!r}; known: {', '.join(SECTIONS)}")
        if key.lower() not in {f.name for f in dataclasses.fields(cls)}:
            raise ConfigError(f"{var}: no key {section.lower()}.{key.lower()}; known keys: "
                              f"{', '.join(sorted(f.name for f in dataclasses.fields(cls)))}")


def _build_section(name: str, cls: type, raw: Any, env: Mapping[str, str]) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"[{name}]: expected a table of keys")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(raw) - known
    if unknown:
        raise ConfigError(f"{name}.{sorted(unknown)[0]}: unknown key; known keys: {', '.join(sorted(known))}")
    values: dict[str, Any] = {}
    for key in known:
        env_name = f"{ENV_PREFIX}{name.upper()}__{key.upper()}"
        if env_name in env:
            values[key] = _coerce(f"{name}.{key}", hints[key], _parse_env(env[env_name]))
        elif key in raw:
            values[key] = _coerce(f"{name}.{key}", hints[key], raw[key])
    return cls(**values)


def _parse_env(text: str) -> Any:
    """An environment value is read as a TOML value when it is one (``[...]``, ``true``, ``42``), else as text."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _coerce(key: str, hint: Any, value: Any) -> Any:
    if hint in SCALARS:
        return _scalar(key, hint, value)
    if isinstance(hint, type) and issubclass(hint, StrEnum):
        try:
            return hint(value)
        except ValueError:
            names = ", ".join(repr(str(c)) for c in hint)
            raise ConfigError(f"{key}: expected one of {names}, got {value!r}") from None
    if typing.get_origin(hint) is Literal:
        choices = typing.get_args(hint)
        if value in choices:
            return value
        raise ConfigError(f"{key}: expected one of {', '.join(map(repr, choices))}, got {value!r}")
    if typing.get_origin(hint) is dict:
        key_type, value_type = typing.get_args(hint)
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a table (e.g. {{sha256 = \"quarantine\"}}), got {value!r}")
        return {_coerce(f"{key}.{k}", key_type, k): _coerce(f"{key}.{k}", value_type, v) for k, v in value.items()}
    if typing.get_origin(hint) is tuple:
        if isinstance(value, str):  # from the environment: comma-separated
            value = [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise ConfigError(f"{key}: expected a list of strings, got {value!r}")
    raise TypeError(f"{key}: unsupported type {hint!r}")  # a bug in this module, not in the config


SCALARS: dict[Any, str] = {bool: "true or false", int: "an integer", float: "a number", Secret: "a string",
                           str: "a string"}
TRUTHY, FALSY = ("true", "yes", "1", "on"), ("false", "no", "0", "off")


def _scalar(key: str, hint: Any, value: Any) -> Any:
    if hint is bool and isinstance(value, str) and value.lower() in TRUTHY + FALSY:
        return value.lower() in TRUTHY
    if isinstance(value, bool):
        ok = hint is bool
    elif hint is float:
        ok = isinstance(value, int | float)
        value = float(value) if ok else value
    else:
        ok = isinstance(value, hint if hint is not Secret else str)
    if ok:
        return Secret(value) if hint is Secret else value
    shown = "" if hint is Secret else f", got {value!r}"  # a secret is never echoed
    raise ConfigError(f"{key}: expected {SCALARS[hint]}{shown}")


def _validate(config: Config) -> Config:
    w, m, s, d = config.watch, config.model, config.store, config.daemon
    _positive("watch.settle_ms", w.settle_ms, minimum=0)
    _positive("watch.poll_interval_ms", w.poll_interval_ms, minimum=10)
    _positive("watch.queue_size", w.queue_size, minimum=1)
    _positive("watch.max_file_bytes", w.max_file_bytes, minimum=1)
    _positive("model.batch_size", m.batch_size, minimum=1)
    _positive("model.max_wait_ms", m.max_wait_ms, minimum=0)
    _positive("index.approximate_above", config.index.approximate_above, minimum=0)
    _positive("index.nprobe", config.index.nprobe, minimum=1)
    _positive("index.hnsw_m", config.index.hnsw_m, minimum=3, maximum=200)  # MariaDB's range for M
    _positive("index.ef_search", config.index.ef_search, minimum=1, maximum=10_000)  # mhnsw_ef_search's
    _positive("model.threads", m.threads, minimum=0)
    _positive("model.decode_workers", m.decode_workers, minimum=0)
    _positive("model.max_image_pixels", m.max_image_pixels, minimum=1)
    _positive("store.connect_timeout_s", s.connect_timeout_s, minimum=1)
    if d.shutdown_timeout_s <= 0:
        raise ConfigError(f"daemon.shutdown_timeout_s: expected a number > 0, got {d.shutdown_timeout_s}")
    if not w.extensions:
        raise ConfigError("watch.extensions: expected at least one file extension")
    if not IDENTIFIER.match(s.table):
        raise ConfigError(f"store.table: expected a plain SQL identifier (letters, digits, _; at most 64), "
                          f"got {s.table!r}")
    if len(s.instance) > 255 or "\n" in s.instance:
        raise ConfigError(f"store.instance: expected a name of at most 255 characters on one line, got {s.instance!r}")
    if not m.name:
        raise ConfigError("model.name: expected a model id (e.g. clip-ViT-B-32) or a local directory")
    parse_listen(config.metrics.listen)
    http = _validate_http(config.http)
    config.store_url  # noqa: B018 - parses store.url now, so that a bad URL fails at start
    _unit_interval("duplicates.threshold", config.duplicates.threshold)
    _unit_interval("prohibited.image_threshold", config.prohibited.image_threshold)
    _unit_interval("prohibited.text_threshold", config.prohibited.text_threshold)
    if not 0 < config.calibration.target_precision <= 1:
        raise ConfigError(f"calibration.target_precision: expected a number in (0, 1], got "
                          f"{config.calibration.target_precision}")
    for key, seconds in (("index.sync_interval_s", config.index.sync_interval_s),
                         ("prohibited.refresh_interval_s", config.prohibited.refresh_interval_s),
                         ("watch.rescan_interval_s", w.rescan_interval_s)):
        if seconds <= 0:
            raise ConfigError(f"{key}: expected a number of seconds > 0, got {seconds}")
    paths = tuple(_absolute(p) for p in w.paths)
    exts = tuple(e.lower().lstrip(".") for e in w.extensions)
    data_dir = _absolute(d.data_dir or default_data_dir())
    quarantine = _absolute(config.quarantine.dir or os.path.join(data_dir, "quarantine"))
    reference_dir = _absolute(config.prohibited.reference_dir) if config.prohibited.reference_dir else ""
    bank_dir = _absolute(config.prohibited.bank_dir) if config.prohibited.bank_dir else ""
    bad_files = _absolute(config.errors.quarantine_dir) if config.errors.quarantine_dir else ""
    _apart(paths, {"quarantine.dir": quarantine, "prohibited.reference_dir": reference_dir,
                   "prohibited.bank_dir": bank_dir, "errors.quarantine_dir": bad_files})
    publish = _validate_publish(w, paths, {"quarantine.dir": quarantine, "prohibited.reference_dir": reference_dir,
                                           "prohibited.bank_dir": bank_dir, "errors.quarantine_dir": bad_files,
                                           "daemon.data_dir": data_dir})
    _positive("duplicates.pdq_distance", config.duplicates.pdq_distance, minimum=-1, maximum=256)
    _positive("duplicates.pdq_min_quality", config.duplicates.pdq_min_quality, minimum=0, maximum=100)
    _positive("prohibited.bank_distance", config.prohibited.bank_distance, minimum=0, maximum=256)
    if Signal.MD5 in config.duplicates.actions:
        raise ConfigError("duplicates.actions.md5: duplicates are found by sha256, pdq and clip; md5 is a hash "
                          "list's signal (prohibited.actions)")
    for key, action in (("duplicates.action", config.duplicates.action),
                        ("prohibited.action", config.prohibited.action),
                        *((f"duplicates.actions.{s}", a) for s, a in config.duplicates.actions.items()),
                        *((f"prohibited.actions.{s}", a) for s, a in config.prohibited.actions.items())):
        if action not in VERDICT_ACTIONS:
            allowed = ", ".join(repr(str(a)) for a in VERDICT_ACTIONS)
            raise ConfigError(f"{key}: expected one of {allowed}, got {str(action)!r}")
    return dataclasses.replace(
        config,
        watch=dataclasses.replace(w, paths=paths, extensions=exts, publish_dir=publish),
        store=s,
        daemon=dataclasses.replace(d, data_dir=data_dir),
        quarantine=QuarantineConfig(dir=quarantine),
        prohibited=dataclasses.replace(config.prohibited, reference_dir=reference_dir, bank_dir=bank_dir),
        errors=ErrorsConfig(quarantine_dir=bad_files),
        http=http,
    )


def _validate_http(h: HTTPConfig) -> HTTPConfig:
    _positive("http.max_body_bytes", h.max_body_bytes, minimum=1024)
    _positive("http.search_concurrency", h.search_concurrency, minimum=1)
    if h.search_timeout_s <= 0:
        raise ConfigError(f"http.search_timeout_s: expected a number of seconds > 0, got {h.search_timeout_s}")
    if bool(h.tls_cert) != bool(h.tls_key):
        raise ConfigError("http.tls_cert and http.tls_key: give both (a certificate and its key) or neither")
    for key, path in (("http.tls_cert", h.tls_cert), ("http.tls_key", h.tls_key)):
        if path and not os.path.isfile(path):
            raise ConfigError(f"{key}: {path!r} is not a readable file")
    return dataclasses.replace(h, users_file=_absolute(h.users_file) if h.users_file else "",
                               tls_cert=_absolute(h.tls_cert) if h.tls_cert else "",
                               tls_key=_absolute(h.tls_key) if h.tls_key else "")


def _apart(paths: tuple[str, ...], directories: dict[str, str]) -> None:
    for key, inner in directories.items():
        for root in paths:
            if inner and within(inner, root):
                raise ConfigError(f"{key}: {inner!r} is inside the watched directory {root!r}; its files would "
                                  "be ingested as uploads. Put it outside every watch.paths entry")


def _validate_publish(w: WatchConfig, paths: tuple[str, ...], private: dict[str, str]) -> str:
    """watch.publish_dir, absolute: apart from every incoming directory, and holding nothing private."""
    if w.publish_max_wait_s <= 0:
        raise ConfigError(f"watch.publish_max_wait_s: expected a number of seconds > 0, got {w.publish_max_wait_s}")
    if not w.publish_dir:
        return ""
    publish = _absolute(w.publish_dir)
    for root in paths:
        if within(publish, root) or within(root, publish):
            raise ConfigError(f"watch.publish_dir: {publish!r} and the incoming directory {root!r} overlap; the "
                              "public directory must be apart from every watch.paths entry")
    for key, inner in private.items():
        if inner and within(inner, publish):
            raise ConfigError(f"{key}: {inner!r} is inside watch.publish_dir {publish!r}, which the web server "
                              "serves; put it elsewhere")
    names = [os.path.basename(root.rstrip(os.sep)) for root in paths]
    if len(paths) > 1 and len(set(names)) < len(names):
        raise ConfigError(f"watch.paths: with watch.publish_dir and several incoming directories, each publishes "
                          f"into the subdirectory of its own name, so the names must differ: {', '.join(paths)}")
    return publish


def _absolute(path: str) -> str:
    return os.path.abspath(os.path.expanduser(path))


def _unit_interval(key: str, value: float) -> None:
    if not -1.0 <= value <= 1.0:
        raise ConfigError(f"{key}: expected a cosine similarity between -1 and 1, got {value}")


def _positive(key: str, value: int, minimum: int, maximum: int | None = None) -> None:
    if value < minimum or (maximum is not None and value > maximum):
        within = f"from {minimum} to {maximum}" if maximum is not None else f">= {minimum}"
        raise ConfigError(f"{key}: expected an integer {within}, got {value}")


