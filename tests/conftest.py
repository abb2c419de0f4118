"""Shared fixtures: a tiny real CLIP model, real SQLite, MySQL 9 and MariaDB stores, real files under tmp_path.

The MySQL tests need CLIPWATCH_TEST_MYSQL_URL, the MariaDB tests CLIPWATCH_TEST_MARIADB_URL (scripts/test
starts a private MySQL 9 and a private MariaDB 11.8 and sets both). Without them they fail, never skip: a
green run always includes them. A developer without one can run `pytest -m "not mariadb"` knowingly.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import pwd
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest
import structlog
from PIL import Image

from clipwatch.changes import Change
from clipwatch.cli import main
from clipwatch.config import Config
from clipwatch.config_loader import load_config
from clipwatch.dbindex import init_schema
from clipwatch.embedder import Embedder
from clipwatch.metrics import Metrics
from clipwatch.service import Service
from clipwatch.store import Store, StoredFile, open_store
from clipwatch.testing import build_random_clip

# model.precision = auto picks by timing, which is not the same from one run to the next: every daemon and
# command the tests start runs fp32, so that vectors compared across processes are bit-identical. The
# choice itself is tested in tests/test_precision.py.
os.environ.setdefault("CLIPWATCH_MODEL__PRECISION", "fp32")

MYSQL_URL = os.environ.get("CLIPWATCH_TEST_MYSQL_URL", "")
PHOTOS = os.environ.get("CLIPWATCH_TEST_PHOTOS", "")
MARIADB_URL = os.environ.get("CLIPWATCH_TEST_MARIADB_URL", "")


def wait_until(condition: Callable[[], object], timeout: float = 20.0, interval: float = 0.05,
               what: str = "condition") -> object:
    """Poll `condition` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def write_image(path: Path, seed: int, size: tuple[int, int] = (64, 48), fmt: str | None = None) -> Path:
    """A random image (distinct per seed) of smooth blobs, like a photo's: pixel noise would make the
    JPEG decoder's DCT downscale (the fast preprocessing) and a plain resize disagree more than on any
    real picture. Its directory is made if missing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    blobs = Image.fromarray(rng.integers(0, 256, (size[1] // 8 + 1, size[0] // 8 + 1, 3), dtype=np.uint8))
    blobs.resize(size, Image.Resampling.BICUBIC).save(path, format=fmt or "JPEG")
    return path


@pytest.fixture(scope="session")
def photos() -> Path:
    """The real photographs scripts/photos.py installs (kphotoalbum's demo: 800x600 JPEGs, with pairs of
    different photos of one scene). Never skipped: missing, the test fails."""
    found = Path(PHOTOS) / "kphotoalbum" if PHOTOS else None
    if found is None or not any(found.glob("*.jpg")):
        pytest.fail("CLIPWATCH_TEST_PHOTOS is not set or holds no photos: run the suite with scripts/test, which "
                    "installs them (scripts/photos.py), or point the variable at its output")
    return found


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_random_clip(tmp_path_factory.mktemp("model") / "tiny-clip", tiny=True)


@pytest.fixture(scope="session")
def embedder(model_dir: Path) -> Embedder:
    e = Embedder(str(model_dir), device="cpu")
    e.load()
    return e


@pytest.fixture(params=["sqlite", pytest.param("mysql", marks=pytest.mark.mysql),
                        pytest.param("mariadb", marks=pytest.mark.mariadb)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A store URL for each backend (the test runs once per backend)."""
    if request.param == "sqlite":
        return f"sqlite://{tmp_path}/store.sqlite3"
    return mariadb_url() if request.param == "mariadb" else mysql_url()


def mariadb_url() -> str:
    if not MARIADB_URL:
        pytest.fail("CLIPWATCH_TEST_MARIADB_URL is not set: run the suite with scripts/test, which starts a "
                    "private MariaDB 11.8, or point the variable at one (deselect with -m 'not mariadb' knowingly)")
    return MARIADB_URL


def mysql_url() -> str:
    if not MYSQL_URL:
        pytest.fail("CLIPWATCH_TEST_MYSQL_URL is not set: run the suite with scripts/test, which starts a "
                    "private MySQL 9, or point the variable at one (deselect with -m 'not mysql' knowingly)")
    return MYSQL_URL


@pytest.fixture
def table() -> Iterator[str]:
    """A fresh table name per test, dropped afterwards from MySQL and MariaDB (SQLite files live in tmp_path)."""
    name = "t_" + uuid.uuid4().hex[:12]
    yield name
    for url in (MYSQL_URL, MARIADB_URL):
        if url:
            drop_mysql_table(name, url)


def drop_mysql_table(name: str, url: str = MYSQL_URL) -> None:
    from clipwatch.config import parse_store_url
    from clipwatch.store.mysql import MySQLStore

    store = MySQLStore(parse_store_url(url), "", name, "test")
    try:
        store._fetch(f"DROP TABLE IF EXISTS `{name}`, `{name}_deleted`, `{name}_decisions`, `{name}_moves`, "
                     f"`{name}_actions`, `{name}_instances`")
    finally:
        store.close()


@pytest.fixture
def make_config(tmp_path: Path, model_dir: Path, table: str) -> Callable[..., Config]:
    """Build a validated Config through the real loader (environment variables), with test defaults."""

    def make(store_url: str = "", **overrides: object) -> Config:
        env = {
            "CLIPWATCH_WATCH__PATHS": str(tmp_path / "watched"),
            "CLIPWATCH_WATCH__SETTLE_MS": "100",
            "CLIPWATCH_MODEL__NAME": str(model_dir),
            "CLIPWATCH_MODEL__DEVICE": "cpu",
            "CLIPWATCH_MODEL__MAX_WAIT_MS": "50",
            "CLIPWATCH_STORE__TABLE": table,
            "CLIPWATCH_STORE__INSTANCE": "test",
            "CLIPWATCH_METRICS__LISTEN": "",
            "CLIPWATCH_DAEMON__DATA_DIR": str(tmp_path / "data"),
        }
        if store_url:
            env["CLIPWATCH_STORE__URL"] = store_url
        for key, value in overrides.items():
            section, _, name = key.partition("__")
            env[f"CLIPWATCH_{section.upper()}__{name.upper()}"] = str(value)
        (tmp_path / "watched").mkdir(exist_ok=True)
        return load_config(None, env=env)

    return make


@pytest.fixture
def open_test_store(make_config: Callable[..., Config]) -> Iterator[Callable[..., Store]]:
    opened: list[Store] = []

    def open_(store_url: str, dimension: int = 512) -> Store:
        store = open_store(make_config(store_url))
        store.init_schema(dimension)
        opened.append(store)
        return store

    yield open_
    for s in opened:
        s.close()


class CountingEmbedder(Embedder):
    """The real model; counts forward passes (the behaviour under test is how often it is called)."""

    def __init__(self, real: Embedder) -> None:
        self.__dict__.update(real.__dict__)
        self.calls: list[int] = []

    def embed_images(self, images):  # type: ignore[no-untyped-def]
        self.calls.append(len(images))
        return super().embed_images(images)


class Harness:
    """The real wiring (`Service.open`), driven batch by batch instead of by the watcher."""

    def __init__(self, config: Config, embedder: Embedder) -> None:
        self.config = config
        self.root = Path(config.watch.paths[0])
        self.embedder = CountingEmbedder(embedder)
        self.service = Service(config, embedder=self.embedder)
        self.service.open()
        assert self.service.store is not None and self.service.worker is not None
        self.store, self.worker, self.metrics = self.service.store, self.service.worker, self.service.metrics
        self.changes = self.service.intake.queue

    def feed(self, *changes: Change) -> None:
        """Queue the changes, then let the worker drain the queue (burst mode) and return."""
        for c in changes:
            self.changes.put(c)
        done = threading.Event()
        done.set()
        self.worker.run(threading.Event(), inputs_done=done)

    def upsert(self, *paths: Path) -> None:
        self.feed(*(Change("upsert", str(p)) for p in paths))

    def rows(self) -> dict[str, StoredFile]:
        return {f.path: f for f in self.store.iter_rows_under(str(self.root))}

    def verdicts(self) -> dict[str, Verdict]:
        """Every row of the table (any instance, any place, the quarantine too) by path."""
        return all_verdicts(self.store)


class Verdict(NamedTuple):
    id: int
    status: str
    match_id: int | None
    score: float | None
    label: str | None


def all_verdicts(store: Store) -> dict[str, Verdict]:
    rows = store._fetch(f"SELECT path, id, status, match_id, score, label FROM {store.t}")  # type: ignore[attr-defined]  # noqa: S608
    return {r[0]: Verdict(*r[1:]) for r in rows}


@pytest.fixture
def make_harness(store_url: str, make_config: Callable[..., Config], embedder: Embedder) -> Iterator[
        Callable[..., Harness]]:
    """Harnesses on the test's store (both backends), closed at the end; keyword arguments are config keys."""
    made: list[Harness] = []

    def make(**overrides: object) -> Harness:
        h = Harness(make_config(store_url, **overrides), embedder)
        made.append(h)
        return h

    yield make
    for h in made:
        h.service.close()


def clipwatch_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "clipwatch.cli", *args]


def run_cli(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(clipwatch_command(*args), env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=timeout)


class Daemon:
    """A running `clipwatch run` whose JSON log lines are collected as they arrive."""

    def __init__(self, env: dict[str, str], command: list[str] | None = None,
                 user: pwd.struct_passwd | None = None) -> None:
        # The daemon logs to stdout; errors before logging starts go to stderr: both are read.
        as_user: dict[str, Any] = dict(user=user.pw_uid, group=user.pw_gid, extra_groups=[]) if user else {}
        self.proc = subprocess.Popen(command or clipwatch_command("run"), env={**os.environ, **env}, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **as_user)
        self.env = env
        self.events: list[dict[str, object]] = []
        self.raw: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.raw.append(line)
            try:
                self.events.append(json.loads(line))
            except ValueError:
                pass

    def saw(self, event: str) -> bool:
        if self.proc.poll() is not None and not any(e.get("event") == event for e in self.events):
            raise AssertionError(f"daemon exited with {self.proc.returncode}:\n{''.join(self.raw)}")
        return any(e.get("event") == event for e in self.events)

    def kill(self) -> None:
        """kill -9: no chance to finish anything."""
        self.proc.kill()
        self.proc.wait(10)
        self._reader.join(5)
        assert self.proc.stdout is not None
        self.proc.stdout.close()

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=10)
        finally:
            self.proc.kill()  # no-op once it has exited; a hung daemon must not outlive the test
            self._reader.join(5)
            assert self.proc.stdout is not None
            self.proc.stdout.close()


@pytest.fixture
def cli(make_config, store_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    """`clipwatch ...` in this process (no interpreter start-up per call): (exit code, stdout, stderr)."""
    config = make_config(store_url)
    for key, value in {"CLIPWATCH_STORE__URL": store_url, "CLIPWATCH_STORE__TABLE": config.store.table,
                       "CLIPWATCH_STORE__INSTANCE": config.store.instance, "CLIPWATCH_LOG__FORMAT": "json",
                       "CLIPWATCH_DAEMON__DATA_DIR": config.daemon.data_dir}.items():
        monkeypatch.setenv(key, value)

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()  # what the harness logged so far is not the command's output
        try:
            code = main(list(args))
            out, err = capsys.readouterr()
        finally:
            structlog.reset_defaults()  # the command pointed structlog at pytest's capture, closed after the test
        return code, out, err

    return run


@pytest.fixture
def daemon_env(store_url: str, make_config: Callable[..., Config], model_dir: Path, table: str,
               tmp_path: Path) -> dict[str, str]:
    make_config(store_url)  # validates the same settings the subprocess gets
    return {
        "CLIPWATCH_WATCH__PATHS": str(tmp_path / "watched"),
        "CLIPWATCH_MODEL__NAME": str(model_dir),
        "CLIPWATCH_MODEL__DEVICE": "cpu",
        "CLIPWATCH_MODEL__MAX_WAIT_MS": "50",
        "CLIPWATCH_STORE__URL": store_url,
        "CLIPWATCH_STORE__TABLE": table,
        "CLIPWATCH_STORE__INSTANCE": "test",
        "CLIPWATCH_METRICS__LISTEN": "127.0.0.1:0",
        "CLIPWATCH_DAEMON__DATA_DIR": str(tmp_path / "data"),
        "CLIPWATCH_LOG__FORMAT": "json",
    }


@pytest.fixture
def reader(store_url: str, make_config: Callable[..., Config]) -> Iterator[Store]:
    config = make_config(store_url)
    store = open_store(config)
    init_schema(store, config.index, 512)  # what the daemon does on start; here so the test can read before that
    yield store
    store.close()


def scrape(daemon: Daemon) -> dict[str, float]:
    """GET /metrics from the address the daemon logged; sample name with labels -> value."""
    import urllib.request

    address = next(e["address"] for e in daemon.events if e.get("event") == "http_listening")
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line and not line.startswith("#")}


def rows_under(store: Store, root: Path) -> dict[str, StoredFile]:
    return {f.path: f for f in store.iter_rows_under(str(root))}


def vector_at(store: Store, path: str) -> np.ndarray | None:
    """The stored vector of this instance's row at `path`, or None."""
    row = store.get_many([path]).get(path)
    return store.vectors_of([row.id]).get(row.id) if row else None


class Client:
    """A plain HTTP client of the daemon's endpoint that keeps the session cookie."""

    def __init__(self, port: int, metrics: Metrics) -> None:
        self.port, self.metrics = port, metrics
        self.cookie = ""

    def request(self, method: str, path: str, body: bytes | None = None, auth: tuple[str, str] | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=20)
        sent = dict(headers or {})
        if auth:
            sent["Authorization"] = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        if self.cookie:
            sent["Cookie"] = self.cookie
        try:
            conn.request(method, path, body=body, headers=sent)
            response = conn.getresponse()
            got = {k.lower(): v for k, v in response.getheaders()}
            if "set-cookie" in got:
                self.cookie = got["set-cookie"].split(";")[0]
            return response.status, got, response.read()
        finally:
            conn.close()

    def refused(self, why: str) -> float:
        return self.metrics.registry.get_sample_value("clipwatch_http_refused_total", {"reason": why}) or 0.0


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def private_mysql(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A MySQL 9 of this test's own, which it may stop and start (the shared one serves other tests)."""
    env = {**os.environ, "CLIPWATCH_MYSQL_DIR": str(tmp_path / "mysql"), "CLIPWATCH_MYSQL_PORT": str(free_port())}
    script = str(Path(__file__).resolve().parent.parent / "scripts" / "mysql9.sh")

    def start() -> str:
        return subprocess.run([script, "start"], env=env, check=True, capture_output=True, text=True).stdout.strip()

    def stop() -> None:
        subprocess.run([script, "stop"], env=env, check=True, capture_output=True)

    url = start()
    yield url, start, stop
    stop()


@pytest.fixture(scope="session")
def chromium() -> Iterator[object]:
    """Headless Chromium from the distribution, driven by Selenium through its chromedriver (found or
    installed by scripts/chromium.sh, as scripts/test does). Never skipped: no browser fails the test."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as DriverService

    binary, driver = os.environ.get("CLIPWATCH_TEST_CHROMIUM"), os.environ.get("CLIPWATCH_TEST_CHROMEDRIVER")
    if not binary or not driver:
        found = subprocess.run([str(Path(__file__).parent.parent / "scripts" / "chromium.sh")], capture_output=True,
                               text=True, timeout=900)
        if found.returncode != 0:
            pytest.fail(f"no browser for the browser tests: {found.stderr.strip()}")
        binary, driver = found.stdout.split()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    # What this machine's closed network needs (docs of the environment): no background connections.
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-quic", "--window-size=1280,900"):
        options.add_argument(flag)
    browser = webdriver.Chrome(options=options, service=DriverService(executable_path=driver))
    browser.set_page_load_timeout(30)
    yield browser
    browser.quit()
