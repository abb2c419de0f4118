"""Both stores (SQLite and the real MySQL 9) keep the same promises: the row, the upsert, exact names."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from clipwatch.errors import SchemaMismatch, StoreError
from clipwatch.store import Delete, DeleteTree, Rename, Store, Touch, Upsert
from conftest import vector_at

HOSTILE_NAMES = [
    "/srv/img/plain.jpg",
    "/srv/img/it's \"quoted\".jpg",
    "/srv/img/back\\slash; DROP TABLE images; --.jpg",
    "/srv/img/100%_off_%s_%%.jpg",
    "/srv/img/new\nline.jpg",
    "/srv/img/ünïcødé 猫 🐈.jpg",
    "/srv/img/" + "é" * 120 + ".jpg",  # 255 bytes of name
]


def unit(seed: int, dim: int = 512) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


def upsert(path: str, seed: int, sha: str | None = None) -> Upsert:
    return Upsert(path, sha or f"{seed:064x}", 1000 + seed, 1_700_000_000.123456 + seed, "tiny-clip", unit(seed))


def test_hostile_names_and_vectors_round_trip_exactly(store_url: str, open_test_store: Callable[..., Store]):
    store = open_test_store(store_url)
    store.apply([upsert(p, i) for i, p in enumerate(HOSTILE_NAMES)])
    rows = store.get_many(HOSTILE_NAMES)
    assert sorted(rows) == sorted(HOSTILE_NAMES)
    for i, path in enumerate(HOSTILE_NAMES):
        assert rows[path].sha256 == f"{i:064x}"
        assert rows[path].mtime == 1_700_000_000.123456 + i  # exact, so scans can compare
        assert np.array_equal(vector_at(store, path), unit(i))


def test_vector_bytes_containing_percent_survive(store_url: str, open_test_store: Callable[..., Store]):
    vec = np.full(512, np.frombuffer(b"%%%%", dtype="<f4")[0], dtype=np.float32)  # every byte is 0x25
    store = open_test_store(store_url)
    store.apply([Upsert("/a/percent.jpg", "0" * 64, 1, 1.0, "m", vec)])
    assert vector_at(store, "/a/percent.jpg").tobytes() == vec.tobytes()


def test_upsert_same_path_updates_in_place(store_url: str, open_test_store: Callable[..., Store]):
    store = open_test_store(store_url)
    store.apply([upsert("/a/x.jpg", 1)])
    first = store.get_many(["/a/x.jpg"])["/a/x.jpg"]
    store.apply([upsert("/a/x.jpg", 2)])
    second = store.get_many(["/a/x.jpg"])["/a/x.jpg"]
    assert second.id == first.id
    assert second.sha256 == f"{2:064x}"
    assert np.array_equal(vector_at(store, "/a/x.jpg"), unit(2))
    assert sum(n for *_, n in store.status().counts) == 1


def test_rename_keeps_row_and_vector_and_replaces_target(store_url: str, open_test_store: Callable[..., Store]):
    store = open_test_store(store_url)
    store.apply([upsert("/a/x.jpg", 1), upsert("/a/y.jpg", 2)])
    before = store.get_many(["/a/x.jpg"])["/a/x.jpg"]
    store.apply([Rename("/a/x.jpg", "/a/y.jpg")])  # mv x.jpg y.jpg over an existing y.jpg
    rows = store.get_many(["/a/x.jpg", "/a/y.jpg"])
    assert list(rows) == ["/a/y.jpg"]
    assert rows["/a/y.jpg"].id == before.id
    assert np.array_equal(vector_at(store, "/a/y.jpg"), unit(1))


def test_touch_changes_only_size_and_mtime(store_url: str, open_test_store: Callable[..., Store]):
    store = open_test_store(store_url)
    store.apply([upsert("/a/x.jpg", 1)])
    store.apply([Touch("/a/x.jpg", 4242, 1_800_000_000.5)])
    row = store.get_many(["/a/x.jpg"])["/a/x.jpg"]
    assert (row.size, row.mtime, row.sha256) == (4242, 1_800_000_000.5, f"{1:064x}")
    assert np.array_equal(vector_at(store, "/a/x.jpg"), unit(1))


def test_delete_tree_removes_only_that_directory(store_url: str, open_test_store: Callable[..., Store]):
    paths = ["/r/d/a.jpg", "/r/d/sub/b.jpg", "/r/d_other/c.jpg", "/r/d%/e.jpg", "/r/d.jpg", "/r/dd/f.jpg"]
    store = open_test_store(store_url)
    store.apply([upsert(p, i) for i, p in enumerate(paths)])
    store.apply([DeleteTree("/r/d")])
    assert sorted(store.get_many(paths)) == sorted(["/r/d_other/c.jpg", "/r/d%/e.jpg", "/r/d.jpg", "/r/dd/f.jpg"])
    assert sorted(f.path for f in store.iter_rows_under("/r")) == sorted(store.get_many(paths))


def test_instances_sharing_a_table_do_not_see_each_others_paths(store_url: str, make_config, table: str):
    from clipwatch.store import open_store

    a, b = (open_store(make_config(store_url, store__instance=name)) for name in ("server-a", "server-b"))
    try:
        a.init_schema(512)
        b.init_schema(512)
        a.apply([upsert("/srv/up/x.jpg", 1)])
        b.apply([upsert("/srv/up/x.jpg", 2), Delete("/srv/up/x.jpg")])
        assert a.get_many(["/srv/up/x.jpg"])["/srv/up/x.jpg"].sha256 == f"{1:064x}"
        assert b.get_many(["/srv/up/x.jpg"]) == {}
    finally:
        a.close()
        b.close()


def test_a_failing_batch_writes_nothing(store_url: str, open_test_store: Callable[..., Store]):
    store = open_test_store(store_url)
    store.apply([upsert("/a/keep.jpg", 1)])
    bad = Upsert("/a/bad.jpg", "0" * 64, 1, 1.0, "m", unit(3)[:511])  # short vector: refused
    with pytest.raises(StoreError, match="dimension 512"):
        store.apply([upsert("/a/new.jpg", 2), Delete("/a/keep.jpg"), bad])
    assert list(store.get_many(["/a/keep.jpg", "/a/new.jpg", "/a/bad.jpg"])) == ["/a/keep.jpg"]


def test_table_of_another_dimension_is_refused(store_url: str, open_test_store: Callable[..., Store]):
    store = open_test_store(store_url, dimension=512)
    assert store.init_schema(512) is False  # already there: nothing to do
    with pytest.raises(SchemaMismatch, match="512-dimensional.*768-dimensional"):
        store.init_schema(768)


@pytest.mark.parametrize("store_url", ["mysql", "mariadb"], indirect=True)
def test_a_table_made_on_the_other_server_kind_is_refused_with_the_reason(
        store_url: str, open_test_store: Callable[..., Store]):
    """MySQL 9 and MariaDB tables say which made them; one restored or replicated across is not used."""
    store = open_test_store(store_url, dimension=512)
    other = "mysql" if store.backend == "mariadb" else "mariadb"
    store._fetch(f"ALTER TABLE {store.t} COMMENT = 'clipwatch {other}'")  # type: ignore[attr-defined]
    with pytest.raises(StoreError, match=f"created by clipwatch on {other}.*is {store.backend}"):
        store.init_schema(512)


def test_status_counts_rows_by_status_and_model(store_url: str, open_test_store: Callable[..., Store]):
    store = open_test_store(store_url)
    store.apply([upsert("/a/1.jpg", 1), upsert("/a/2.jpg", 2),
                 Upsert("/a/3.jpg", "3" * 64, 1, 1.0, "other-model", unit(3))])
    status = store.status()
    assert status.dimension == 512
    assert sorted(status.counts) == [("ok", "other-model", 1), ("ok", "tiny-clip", 2)]


@pytest.mark.mysql
def test_mysql_column_is_a_vector_of_the_model_dimension(open_test_store: Callable[..., Store], table: str):
    from conftest import mysql_url

    store = open_test_store(mysql_url())
    store.apply([upsert("/a/x.jpg", 7)])
    rows = store._fetch(  # type: ignore[attr-defined]
        f"SELECT VECTOR_DIM(embedding), COLUMN_TYPE FROM `{table}`, "  # noqa: S608 - a name made by the fixture
                                "information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() "
                                "AND TABLE_NAME = %s AND COLUMN_NAME = 'embedding'", (table,))
    assert rows == [(512, "vector(512)")]


def test_replaying_a_committed_batch_changes_nothing(store_url: str, open_test_store: Callable[..., Store]):
    # A batch is retried when its commit's outcome is unknown (the connection dropped): replaying it
    # after it did commit must not lose the renamed row or duplicate anything.
    store = open_test_store(store_url)
    store.apply([upsert("/a/x.jpg", 1)])
    batch = [Rename("/a/x.jpg", "/a/y.jpg"), upsert("/a/z.jpg", 2), Delete("/a/gone.jpg")]
    store.apply(batch)
    store.apply(batch)
    rows = store.get_many(["/a/x.jpg", "/a/y.jpg", "/a/z.jpg"])
    assert sorted(rows) == ["/a/y.jpg", "/a/z.jpg"]
    assert np.array_equal(vector_at(store, "/a/y.jpg"), unit(1))


@pytest.mark.mysql
@pytest.mark.mariadb
def test_the_server_kind_is_asked_of_the_server_not_taken_from_the_url(make_config: Callable[..., object]):
    from clipwatch.store import open_store
    from conftest import mariadb_url, mysql_url

    with pytest.raises(StoreError, match="that server is MySQL .*, not MariaDB: write mysql://"):
        open_store(make_config(mysql_url().replace("mysql://", "mariadb://", 1)))  # type: ignore[arg-type]
    detected = open_store(make_config(mariadb_url().replace("mariadb://", "mysql://", 1)))  # type: ignore[arg-type]
    try:
        assert detected.backend == "mariadb" and detected.location().startswith("mysql://")
    finally:
        detected.close()
