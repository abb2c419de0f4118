"""The similarity search in the database (`index.where`, dbindex.py): who answers, and that the answers
are the in-memory index's, on real servers (MariaDB 11.8's vector index; MySQL 9 and SQLite, which have
none)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from clipwatch.config import Config
from clipwatch.dbindex import DatabaseIndex, choose, init_schema
from clipwatch.errors import ConfigError
from clipwatch.index import VectorIndex
from clipwatch.store import Delete, Upsert, open_store
from conftest import Harness, drop_mysql_table, write_image


def _unit(rng: np.random.Generator, n: int, dim: int = 512) -> np.ndarray:
    v = rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.mark.parametrize("store_url", ["sqlite", "mysql"], indirect=True)
def test_servers_without_a_vector_index_keep_it_in_memory_and_refuse_database_with_the_reason(
        store_url: str, make_config: Callable[..., Config]):
    store = open_store(make_config(store_url))
    try:
        assert choose(store, make_config(store_url, index__where="auto").index) == "memory"
        with pytest.raises(ConfigError, match="no vector (distance function and no vector )?index"):
            choose(store, make_config(store_url, index__where="database").index)
    finally:
        store.close()


@pytest.mark.mariadb
@pytest.mark.parametrize("store_url", ["mariadb"], indirect=True)
def test_auto_takes_mariadbs_index_for_a_new_table_but_not_for_an_old_one_without_it(
        store_url: str, make_config: Callable[..., Config]):
    config = make_config(store_url)
    store = open_store(config)
    try:
        store.init_schema(512)  # made before, without a vector index: building one can take minutes
        assert not store.has_vector_index()
        assert choose(store, config.index) == "memory"
        assert choose(store, make_config(store_url, index__where="memory").index) == "memory"
        where, created = init_schema(store, make_config(store_url, index__where="database").index, 512)
        assert (where, created) == ("database", False) and store.has_vector_index()  # built, as asked
        assert choose(store, config.index) == "database"  # auto, from now on
    finally:
        store.close()
    fresh = open_store(make_config(store_url, store__table=config.store.table + "_new"))
    try:
        assert init_schema(fresh, config.index, 512) == ("database", True) and fresh.has_vector_index()
    finally:
        fresh.close()
        drop_mysql_table(fresh.table, store_url)


@pytest.mark.mariadb
@pytest.mark.parametrize("store_url", ["mariadb"], indirect=True)
def test_the_database_answers_what_the_memory_index_answers(store_url: str, make_config: Callable[..., Config]):
    config = make_config(store_url)
    store = open_store(config)
    try:
        init_schema(store, config.index, 512)
        rng = np.random.default_rng(5)
        vectors = _unit(rng, 300)
        applied = store.apply([Upsert(f"/r/{i}.jpg", f"{i:064x}", 1, 1.0, "m", v) for i, v in enumerate(vectors)]
                              + [Upsert("/r/other.jpg", "f" * 64, 1, 1.0, "other-model", vectors[0])])
        ids = np.asarray([applied.ids[f"/r/{i}.jpg"] for i in range(300)])
        store.apply([Delete("/r/7.jpg")])
        memory = VectorIndex(512)
        memory.upsert(np.delete(ids, 7), np.delete(vectors, 7, axis=0))
        database = DatabaseIndex(store, "m", 512, ef_search=config.index.ef_search)
        assert database.recount(store) == len(database) == 299  # the other model's row is not counted

        near = vectors[[0, 7, 42, 299]] + 0.02 * rng.standard_normal((4, 512)).astype(np.float32) / np.sqrt(512)
        near /= np.linalg.norm(near, axis=1, keepdims=True)
        exclude = {int(ids[42])}  # as the judge excludes the rows its batch rewrites
        got, expected = database.search_many(near, 3, exclude), memory.search_many(near, 3, exclude)
        # The nearest row is the exact one; the rows after it (unrelated, at cosine ~0.1) are the approximate
        # index's and may differ from exact search's, but each carries its exact score, best first (MariaDB's
        # own order is sometimes not: store/mariadb.py).
        assert [hits[0][0] for hits in got] == [hits[0][0] for hits in expected]
        assert [hits[0][1] for hits in got] == pytest.approx([hits[0][1] for hits in expected], abs=1e-5)
        position = {int(row_id): n for n, row_id in enumerate(ids)}
        for query, hits in zip(near, got, strict=True):
            assert len(hits) == 3 and [s for _, s in hits] == sorted((s for _, s in hits), reverse=True)
            exact = [float(vectors[position[i]] @ query) for i, _ in hits]
            assert [s for _, s in hits] == pytest.approx(exact, abs=1e-5)
        assert got[0][0][0] == ids[0]  # not the other model's row with the same vector
        assert all(int(ids[7]) not in [i for i, _ in hits] for hits in got)  # deleted: gone with its transaction
        assert database.search(vectors[5], 1) == [(int(ids[5]), pytest.approx(1.0, abs=1e-6))]
        assert database.search_many(near, 0) == [[], [], [], []]
    finally:
        store.close()


@pytest.mark.mariadb
@pytest.mark.parametrize("store_url", ["mariadb"], indirect=True)
def test_a_connection_lost_during_the_duplicate_check_is_retried_and_the_copy_still_flagged(
        make_harness: Callable[..., Harness], tmp_path: Path):
    """The database answers the duplicate check on the worker's connection; when that connection dies at
    that very moment (killed by the server, as a restart or a network cut would), the worker re-opens it
    and asks again: the batch is neither lost nor judged without its match."""
    h = make_harness()
    index = h.service.index
    assert isinstance(index, DatabaseIndex)
    original = write_image(h.root / "original.jpg", seed=3)
    h.upsert(original)
    asked = index.store.nearest
    killed = []

    def killed_first(*args, **kwargs):  # a real KILL from another connection, at the moment of the query
        if not killed:
            admin = open_store(h.config)
            try:
                admin._fetch(f"KILL CONNECTION {int(index.store.conn.connection_id)}")
            finally:
                admin.close()
            killed.append(True)
        return asked(*args, **kwargs)

    index.store.nearest = killed_first  # type: ignore[method-assign]
    copy = h.root / "copy.jpg"
    copy.write_bytes(original.read_bytes() + b"\0")  # other bytes, same picture: found by the vector index
    h.upsert(copy)
    v = h.verdicts()
    assert killed and v[str(copy)][1:3] == ("duplicate", v[str(original)].id)
    assert h.metrics.registry.get_sample_value("clipwatch_errors_total",
                                               {"stage": "store", "reason": "store_error"}) == 1
