"""The typed, frozen configuration: one TOML file, every key overridable from the environment.

`config_loader.load_config()` builds it from the TOML file and the environment and validates it.
Building the config does no heavy work: the model and the store are opened later, by the service.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlsplit

from .errors import ConfigError
from .vocab import Action, Signal

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
    publish_dir: str = ""  # set: the paths are incoming directories; a file that passes moves here (publish.py)
    publish_max_wait_s: float = 60.0  # a file waiting longer in incoming raises ClipwatchPublishStalled


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
    # auto: measured at load (precision.py)
    precision: Literal["auto", "fp32", "bf16", "int8", "fp16", "openvino-int8"] = "auto"


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
    where: Literal["auto", "memory", "database"] = "auto"  # who answers nearest-neighbour questions (dbindex.py)
    hnsw_m: int = 32  # the database's vector index: M of a VECTOR INDEX clipwatch creates
    ef_search: int = 400  # the database's vector index: candidates looked at per query (mhnsw_ef_search)
    sync_interval_s: float = 2.0
    approximate_above: int = 500_000
    nprobe: int = 32


@dataclass(frozen=True)
class DuplicatesConfig:
    enabled: bool = True
    threshold: float = 0.97  # CLIP cosine: a look-alike (docs/benchmarks.md: what it does and does not separate)
    action: Action = Action.FLAG
    pdq_distance: int = 31  # PDQ bits apart at most for a copy (Meta's starting point); -1: the signal is off
    pdq_min_quality: int = 50  # both hashes at least this quality (0..100) for a PDQ match
    actions: dict[Signal, Action] = field(default_factory=dict)  # per signal, else `action`

    def action_for(self, signal: Signal) -> Action:
        return self.actions.get(signal, self.action)


@dataclass(frozen=True)
class ProhibitedConfig:
    reference_dir: str = ""
    prompts: tuple[str, ...] = ()
    image_threshold: float = 0.90
    text_threshold: float = 0.30
    action: Action = Action.QUARANTINE
    refresh_interval_s: float = 10.0
    bank_dir: str = ""  # hash lists, one bank per file (banks.py); empty: none
    bank_distance: int = 31  # PDQ bits apart at most for a bank match (Meta's and HMA's starting point)
    dihedral: bool = True  # also match the upload's eight rotations and flips against the banks
    actions: dict[Signal, Action] = field(default_factory=dict)  # per signal, else `action` (clip: references)

    def action_for(self, signal: Signal | None) -> Action:
        return self.actions.get(signal, self.action) if signal is not None else self.action


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
class HTTPConfig:
    """The review pages, their API and `POST /search`, served at metrics.listen beside /metrics."""
    users_file: str = ""  # htpasswd, bcrypt lines (`clipwatch user add`); empty: only on a loopback listen
    tls_cert: str = ""
    tls_key: str = ""
    protect_metrics: bool = False  # also ask a user for /metrics and /healthz
    max_body_bytes: int = 32 * 1024 * 1024
    search_concurrency: int = 1  # searches running the model at once (the model is shared with ingest)
    search_timeout_s: float = 10.0


@dataclass(frozen=True)
class CalibrationConfig:
    target_precision: float = 0.99  # the suggested threshold: the lowest at which precision reaches this


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
    http: HTTPConfig = field(default_factory=HTTPConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    log: LogConfig = field(default_factory=LogConfig)
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    source: str = ""  # the file it was read from, for messages

    # --- derived values -------------------------------------------------------------------------

    @property
    def roots(self) -> tuple[str, ...]:
        """Every directory watched and reconciled: the watch.paths and, when set, watch.publish_dir."""
        return (*self.watch.paths, self.watch.publish_dir) if self.watch.publish_dir else self.watch.paths

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
    scheme: Literal["mysql", "mariadb", "sqlite"]
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
        return f"{self.scheme}://{self.user}@{where}/{self.database}"


def parse_store_url(url: str) -> StoreURL:
    """Parse ``mysql://user[:password]@host[:port]/db[?unix_socket=PATH]`` (``mariadb://`` alike) or
    ``sqlite:///ABSOLUTE/PATH``."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ConfigError(f"store.url: cannot parse it ({_redact_url(url)})") from None
    if parts.scheme == "sqlite":
        if not parts.path.startswith("/") or parts.netloc:
            raise ConfigError(f"store.url: expected sqlite:///ABSOLUTE/PATH, got {url!r}")
        return StoreURL(scheme="sqlite", path=unquote(parts.path))
    if parts.scheme not in ("mysql", "mariadb"):
        raise ConfigError(f"store.url: expected mysql://USER@HOST:PORT/DB, mariadb://... or sqlite:///PATH, got "
                          f"{_redact_url(url)!r}")
    query = dict(p.split("=", 1) for p in parts.query.split("&") if "=" in p)
    database = unquote(parts.path.lstrip("/"))
    if not parts.username or not database or not (parts.hostname or "unix_socket" in query):
        raise ConfigError(f"store.url: expected mysql://USER@HOST:PORT/DB (user, host and database are "
                          f"needed), got {_redact_url(url)!r}")
    return StoreURL(scheme="mariadb" if parts.scheme == "mariadb" else "mysql", host=parts.hostname or "",
                    port=port or 3306,
                    user=unquote(parts.username), password=unquote(parts.password or ""),
                    database=database, path=unquote(query.get("unix_socket", "")))


def _redact_url(url: str) -> str:
    return re.sub(r"(//[^/:@]*):[^@/]*@", r"\1:***@", url)


def parse_listen(listen: str) -> tuple[str, int] | None:
    if not listen:
        return None
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"metrics.listen: expected HOST:PORT (e.g. 127.0.0.1:9464) or empty, got {listen!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def metrics_address(config: Config) -> tuple[str, int] | None:
    """(host, port) of the metrics endpoint, or None when metrics.listen is empty."""
    return parse_listen(config.metrics.listen)


def default_data_dir() -> str:
    """$XDG_DATA_HOME/clipwatch, else ~/.local/share/clipwatch: a personal setup's. A server's configuration
    names its data directory (config_loader refuses to start a systemd service whose file does not)."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "clipwatch")


__all__ = ["Config", "ConfigError", "Secret", "StoreURL", "metrics_address"]
