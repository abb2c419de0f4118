"""Every database error goes through one place: the batch is held and retried, the sync thread survives,
and health says so, also while the daemon is idle."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime

import pytest

from clipwatch.config import Config, parse_store_url
from clipwatch.decisions import Decisions
from clipwatch.embedder import Embedder
from clipwatch.errors import StoreError
from clipwatch.health import Health
from clipwatch.index import VectorIndex
from clipwatch.metrics import Metrics
from clipwatch.references import References
from clipwatch.store import Store, open_store
from clipwatch.store.mysql import MySQLStore
from clipwatch.sync import IndexSync
from conftest import Daemon, Harness, free_port, run_cli, wait_until, write_image


def cut_connection(store: Store) -> None:
    """The store's connection dies under it. MySQL: the server kills it (KILL from another session).
    SQLite has no server to lose; its connection is closed instead, which makes `cursor()` fail the way a
    dropped MySQL connection makes it fail."""
    if isinstance(store, MySQLStore):
        connection_id = store._fetch("SELECT CONNECTION_ID()")[0][0]
        admin = MySQLStore(store.url, "", store.table, "admin")
        try:
            admin._fetch(f"KILL {int(connection_id)}")
        finally:
            admin.close()
    else:
        store.conn.close()  # type: ignore[attr-defined]


def test_a_connection_lost_just_before_the_write_holds_the_batch_and_retries(make_harness: Callable[..., Harness]):
    h = make_harness()
    real_embed = h.embedder.embed_images

    def embed_then_lose_the_connection(images):  # type: ignore[no-untyped-def]
        vectors = real_embed(images)
        cut_connection(h.store)  # between reading the batch's rows and writing them
        return vectors

    h.embedder.embed_images = embed_then_lose_the_connection  # type: ignore[method-assign]
    image = write_image(h.root / "a.jpg", seed=1)
    h.upsert(image)
    assert list(h.rows()) == [str(image)]  # held, retried on a new connection, written once
    errors = h.metrics.registry.get_sample_value
    assert errors("clipwatch_errors_total", {"stage": "worker", "reason": "unexpected"}) == 0
    assert errors("clipwatch_errors_total", {"stage": "store", "reason": "store_error"}) >= 1
    assert h.metrics.registry.get_sample_value("clipwatch_store_up") == 1


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("failure", ["a bug", "the store"])
def test_the_index_sync_survives_any_error_retries_and_health_names_it(
        store_url: str, make_config: Callable[..., Config], failure: str):
    store = open_store(make_config(store_url))
    store.init_schema(512)
    metrics, clock = Metrics(), Clock()
    health = Health(metrics, sync_interval_s=0.05, clock=clock)
    sync = IndexSync(store, VectorIndex(512), "m", datetime(2000, 1, 1), 0.05,
                     References(make_config(store_url), Embedder("unused")), 3600.0, metrics, health, Decisions())
    failing = threading.Event()
    failing.set()
    real_now = store.now
    # Stand-ins: a bug (not a StoreError: say, in the index or a driver error that escaped), and the store
    # refusing (what every driver error becomes): the real outage is the MySQL test below.
    error = RuntimeError("a bug") if failure == "a bug" else StoreError("connection refused")
    shown = "RuntimeError: a bug" if failure == "a bug" else "connection refused"

    def now() -> datetime:
        if failing.is_set():
            raise error
        return real_now()

    store.now = now  # type: ignore[method-assign]
    stop = threading.Event()
    thread = threading.Thread(target=sync.run, args=(stop,), daemon=True)
    thread.start()
    try:
        errors = {"stage": "sync", "reason": "sync_error"}
        wait_until(lambda: metrics.registry.get_sample_value("clipwatch_errors_total", errors), what="a failed round")
        if failure == "the store":
            assert health.problems() == [f"the store is unreachable (index sync: {shown})"]
            assert metrics.registry.get_sample_value("clipwatch_store_up") == 0
        else:
            assert health.problems() == []  # not the store's fault: reported once the sync is stale
        clock.now += 11  # several intervals without success
        assert f"the index sync has not succeeded for 11 s (last error: {shown})" in health.problems()
        assert thread.is_alive()  # it goes on trying
        failing.clear()
        wait_until(lambda: not health.problems(), what="health to clear once the sync succeeds")
        assert metrics.registry.get_sample_value("clipwatch_store_up") == 1
    finally:
        stop.set()
        thread.join(5)
        store.close()


@pytest.mark.mysql
@pytest.mark.parametrize("store_url", ["mysql"], indirect=True)
@pytest.mark.timeout(180)
def test_an_idle_daemon_reports_a_database_that_went_away_and_came_back(daemon_env: dict[str, str], private_mysql):
    url, start_mysql, stop_mysql = private_mysql
    env = {**daemon_env, "CLIPWATCH_STORE__URL": url, "CLIPWATCH_INDEX__SYNC_INTERVAL_S": "0.5",
           "CLIPWATCH_METRICS__LISTEN": f"127.0.0.1:{free_port()}"}
    daemon = Daemon(env)
    try:
        wait_until(lambda: daemon.saw("scan_finished"), timeout=60, what="start-up")
        assert run_cli("health", env=env).returncode == 0
        stop_mysql()  # nothing is being ingested: only the index sync notices
        unhealthy = wait_until(lambda: (r := run_cli("health", env=env)).returncode == 1 and r, timeout=60,
                               what="health to report the database")
        assert "the store is unreachable (index sync: " in unhealthy.stdout  # type: ignore[union-attr]
        assert parse_store_url(url).redacted() in unhealthy.stdout  # type: ignore[union-attr]
        start_mysql()
        wait_until(lambda: run_cli("health", env=env).returncode == 0, timeout=60, what="health to recover")
    finally:
        assert daemon.stop() == 0
