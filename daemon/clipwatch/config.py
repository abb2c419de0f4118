"""The typed, frozen configuration: one TOML file, every key overridable from the environment.

`load_config()` reads the file (``--config`` or ``CLIPWATCH_CONFIG``), applies
``CLIPWATCH_<SECTION>__<KEY>`` environment variables, coerces every value to its declared type and
validates it. Errors name the key and what was expected. Building the config does no heavy work:
the model and the store are opened later, by the service.
"""

from __future__ import annotations

import dataclasses
import os
import re
import socket
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from .errors import ConfigError

ENV_PREFIX = "CLIPWATCH_"
IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


class Secret(str):
    """A string that never shows itself in repr(), logs or tracebacks."""

    def __repr__(self) -> str:
        return "Secret('***')" if self else "Secret('')"


@dataclass(frozen=True)
class WatchConfig:
    paths: tuple[str, ...] = ()
    polling: bool = False
    poll_interval_ms: int = 1000
    settle_ms: int = 1000
    ignore: tuple[str, ...] = (".*", "*.tmp", "*.part", "*.crdownload", "*~")
    extensions: tuple[str, ...] = ("jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff")
    queue_size: int = 1024
    max_file_bytes: int = 256 * 1024 * 1024
    rescan_interval_s: float = 300.0


@dataclass(frozen=True)
class ModelConfig:
    name: str = "clip-ViT-B-32"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    batch_size: int = 32
    max_wait_ms: int = 200
    threads: int = 0
    decode_workers: int = 0
    cache_dir: str = ""
    max_image_pixels: int = 64_000_000


@dataclass(frozen=True)
class StoreConfig:
    url: str = field(default="", repr=False)  # may hold a password: shown only through StoreURL.redacted()
    table: str = "images"
    on_delete: Literal["delete", "keep"] = "delete"
    instance: str = ""
    password: Secret = Secret("")
    password_file: str = ""
    connect_timeout_s: int = 10


@dataclass(frozen=True)
class IndexConfig:
    sync_interval_s: float = 2.0
    approximate_above: int = 500_000
    nprobe: int = 32


@dataclass(frozen=True)
class DuplicatesConfig:
    enabled: bool = True
    threshold: float = 0.97
    action: Literal["flag", "quarantine", "reject"] = "flag"


@dataclass(frozen=True)
class ProhibitedConfig:
    reference_dir: str = ""
    prompts: tuple[str, ...] = ()
    image_threshold: float = 0.90
    text_threshold: float = 0.30
    action: Literal["flag", "quarantine", "reject"] = "quarantine"
    refresh_interval_s: float = 10.0


@dataclass(frozen=True)
class QuarantineConfig:
    dir: str = ""


@dataclass(frozen=True)
class ErrorsConfig:
    quarantine_dir: str = ""


@dataclass(frozen=True)
class MetricsConfig:
    listen: str = "127.0.0.1:9464"


@dataclass(frozen=True)
class LogConfig:
    format: Literal["auto", "json", "console"] = "auto"
    level: Literal["debug", "info", "warning", "error"] = "info"


@dataclass(frozen=True)
class DaemonConfig:
    data_dir: str = ""
    shutdown_timeout_s: float = 10.0


@dataclass(frozen=True)
class Config:
    watch: WatchConfig = field(default_factory=WatchConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    duplicates: DuplicatesConfig = field(default_factory=DuplicatesConfig)
    prohibited: ProhibitedConfig = field(default_factory=ProhibitedConfig)
    quarantine: QuarantineConfig = field(default_factory=QuarantineConfig)
    errors: ErrorsConfig = field(default_factory=ErrorsConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    log: LogConfig = field(default_factory=LogConfig)
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    source: str = ""  # the file it was read from, for messages

    # --- derived values -------------------------------------------------------------------------

    @property
    def data_dir(self) -> Path:
        return Path(self.daemon.data_dir)

    @property
    def store_url(self) -> StoreURL:
        if not self.store.url:
            return StoreURL(scheme="sqlite", path=str(self.data_dir / "clipwatch.sqlite3"))
        return parse_store_url(self.store.url)

    @property
    def store_password(self) -> str:
        """The DB password: store.password (or its env var), then store.password_file, then the URL."""
        if self.store.password:
            return str(self.store.password)
        if self.store.password_file:
            try:
                return Path(self.store.password_file).read_text().rstrip("\r\n")
            except OSError as exc:
                raise ConfigError(f"store.password_file: cannot read it ({exc.strerror})") from None
        return self.store_url.password


@dataclass(frozen=True)
class StoreURL:
    scheme: Literal["mysql", "sqlite"]
    host: str = ""
    port: int = 3306
    user: str = ""
    password: str = dataclasses.field(default="", repr=False)
    database: str = ""
    path: str = ""  # sqlite file, or the MySQL unix socket

    def redacted(self) -> str:
        """The URL without its password, safe for logs and messages."""
        if self.scheme == "sqlite":
            return f"sqlite://{self.path}"
        where = f"{self.host}:{self.port}" if self.host else f"(socket {self.path})"
        return f"mysql://{self.user}@{where}/{self.database}"


def parse_store_url(url: str) -> StoreURL:
    """Parse ``mysql://user[:password]@host[:port]/db[?unix_socket=PATH]`` or ``sqlite:///ABSOLUTE/PATH``."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ConfigError(f"store.url: cannot parse it ({_redact_url(url)})") from None
    if parts.scheme == "sqlite":
        if not parts.path.startswith("/") or parts.netloc:
            raise ConfigError(f"store.url: expected sqlite:///ABSOLUTE/PATH, got {url!r}")
        return StoreURL(scheme="sqlite", path=unquote(parts.path))
    if parts.scheme != "mysql":
        raise ConfigError(f"store.url: expected mysql://USER@HOST:PORT/DB or sqlite:///PATH, got "
                          f"{_redact_url(url)!r}")
    query = dict(p.split("=", 1) for p in parts.query.split("&") if "=" in p)
    database = unquote(parts.path.lstrip("/"))
    if not parts.username or not database or not (parts.hostname or "unix_socket" in query):
        raise ConfigError(f"store.url: expected mysql://USER@HOST:PORT/DB (user, host and database are "
                          f"needed), got {_redact_url(url)!r}")
    return StoreURL(scheme="mysql", host=parts.hostname or "", port=port or 3306,
                    user=unquote(parts.username), password=unquote(parts.password or ""),
                    database=database, path=unquote(query.get("unix_socket", "")))


def _redact_url(url: str) -> str:
    return re.sub(r"(//[^/:@]*):[^@/]*@", r"\1:***@", url)


# --- loading -------------------------------------------------------------------------------------

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
    sections = {name: _build_section(name, cls, data.get(name, {}), env) for name, cls in SECTIONS.items()}
    config = Config(**sections, source=str(path or ""))
    return _validate(config)


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
    origin = typing.get_origin(hint)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0", "on", "off"):
            return value.lower() in ("true", "yes", "1", "on")
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if hint is Secret:
        if isinstance(value, str):
            return Secret(value)
        raise ConfigError(f"{key}: expected a string")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    if origin is Literal:
        choices = typing.get_args(hint)
        if value in choices:
            return value
        raise ConfigError(f"{key}: expected one of {', '.join(map(repr, choices))}, got {value!r}")
    if origin is tuple:
        if isinstance(value, str):  # from the environment: comma-separated
            value = [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise ConfigError(f"{key}: expected a list of strings, got {value!r}")
    raise TypeError(f"{key}: unsupported type {hint!r}")  # a bug in this module, not in the config


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
    if not m.name:
        raise ConfigError("model.name: expected a model id (e.g. clip-ViT-B-32) or a local directory")
    _parse_listen(config.metrics.listen)
    config.store_url  # noqa: B018 - parses store.url now, so that a bad URL fails at start
    _unit_interval("duplicates.threshold", config.duplicates.threshold)
    _unit_interval("prohibited.image_threshold", config.prohibited.image_threshold)
    _unit_interval("prohibited.text_threshold", config.prohibited.text_threshold)
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
    bad_files = _absolute(config.errors.quarantine_dir) if config.errors.quarantine_dir else ""
    for key, inner in (("quarantine.dir", quarantine), ("prohibited.reference_dir", reference_dir),
                       ("errors.quarantine_dir", bad_files)):
        for root in paths:
            if inner and (inner == root or inner.startswith(root.rstrip(os.sep) + os.sep)):
                raise ConfigError(f"{key}: {inner!r} is inside the watched directory {root!r}; its files would "
                                  "be ingested as uploads. Put it outside every watch.paths entry")
    return dataclasses.replace(
        config,
        watch=dataclasses.replace(w, paths=paths, extensions=exts),
        store=dataclasses.replace(s, instance=s.instance or socket.gethostname()),
        daemon=dataclasses.replace(d, data_dir=data_dir),
        quarantine=QuarantineConfig(dir=quarantine),
        prohibited=dataclasses.replace(config.prohibited, reference_dir=reference_dir),
        errors=ErrorsConfig(quarantine_dir=bad_files),
    )


def _absolute(path: str) -> str:
    return os.path.abspath(os.path.expanduser(path))


def _unit_interval(key: str, value: float) -> None:
    if not -1.0 <= value <= 1.0:
        raise ConfigError(f"{key}: expected a cosine similarity between -1 and 1, got {value}")


def _positive(key: str, value: int, minimum: int) -> None:
    if value < minimum:
        raise ConfigError(f"{key}: expected an integer >= {minimum}, got {value}")


def _parse_listen(listen: str) -> tuple[str, int] | None:
    if not listen:
        return None
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"metrics.listen: expected HOST:PORT (e.g. 127.0.0.1:9464) or empty, got {listen!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def metrics_address(config: Config) -> tuple[str, int] | None:
    """(host, port) of the metrics endpoint, or None when metrics.listen is empty."""
    return _parse_listen(config.metrics.listen)


def default_data_dir() -> str:
    """systemd's $STATE_DIRECTORY, else $XDG_DATA_HOME/clipwatch, else ~/.local/share/clipwatch."""
    if os.environ.get("STATE_DIRECTORY"):
        return os.environ["STATE_DIRECTORY"].split(":")[0]
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "clipwatch")


__all__ = ["Config", "ConfigError", "Secret", "StoreURL", "load_config", "metrics_address"]
