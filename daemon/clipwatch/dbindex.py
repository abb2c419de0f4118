"""The similarity search in the database: `index.where = "database"` (and `"auto"` where the server can).

With the in-memory index (index.py) every daemon loads every vector at start and follows the other
instances through the index sync. With `"database"` the nearest-neighbour questions (the duplicate check
of a batch, `clipwatch search`, `POST /search`) are asked of the database's vector index instead
(`Store.nearest`: MariaDB 11.7+'s HNSW), so the daemon holds no vectors, starts in constant time, and a row
committed by one server is found by the next query of every other: nothing to sync. Only the comparison of
a batch's new images with each other stays in memory (the judge's).

`DatabaseIndex` has the narrow interface of `VectorIndex` that the judge, the worker, the committer and the
search use: `search_many`, `search`, `get`, `upsert`, `remove`, `len`. It asks through the store it is
given, so each thread asks on its own connection (the worker on the worker's, whose `Retrier` re-opens
it; the HTTP threads on theirs, under their lock). `len` is the row count read by the index sync now and
then, not a query per heartbeat.

Choosing (`choose`): `"memory"` always works. `"database"` needs a server whose vector search a probe
finds (MySQL 9 Community and SQLite have none; HeatWave / MySQL AI are detected and named, but not used:
untested) and builds the vector index if the table lacks it. `"auto"` takes the database when the server
can and the table has the index or is being created now; an existing table without one stays in memory
(building the index on millions of rows takes many minutes: that is for an explicit `"database"`).
"""

from __future__ import annotations

import time
from collections.abc import Collection, Iterable
from typing import Literal

import numpy as np

from .config import IndexConfig
from .errors import ConfigError, StoreError
from .index import VectorIndex
from .logs import get_logger
from .notify import Notifier
from .store import Store

log = get_logger(__name__)
Where = Literal["memory", "database"]
BUILD_TIMEOUT_S = 4 * 3600.0  # systemd's start timeout, extended while a vector index is built on stored rows


class DatabaseIndex:
    """Nearest rows of one model, answered by the database's vector index through `store`. Approximate
    (HNSW): the true nearest row can be missed; every similarity it reports is exact (docs/benchmarks.md)."""

    def __init__(self, store: Store, model: str, dimension: int, ef_search: int, size: list[int] | None = None):
        self.store, self.model, self.dimension, self.ef_search = store, model, dimension, ef_search
        self._size = size if size is not None else [0]  # shared by the copies `bound` to other connections

    def bound(self, store: Store) -> DatabaseIndex:
        """The same index asked through another connection (for another thread)."""
        return DatabaseIndex(store, self.model, self.dimension, self.ef_search, self._size)

    def __len__(self) -> int:
        return self._size[0]

    def recount(self, store: Store) -> int:
        """Read the number of rows searched (the index sync calls this now and then, on its own connection)."""
        self._size[0] = store.count_vectors(self.model)
        return self._size[0]

    def search(self, query: np.ndarray, k: int = 5, exclude: Collection[int] = ()) -> list[tuple[int, float]]:
        return self.search_many(np.asarray(query, dtype=np.float32).reshape(1, self.dimension), k, exclude)[0]

    def search_many(self, queries: np.ndarray, k: int = 5,
                    exclude: Collection[int] = ()) -> list[list[tuple[int, float]]]:
        """As `VectorIndex.search_many`. Raises StoreError when the database does not answer."""
        queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dimension)
        if k <= 0 or not len(queries):
            return [[] for _ in queries]
        return self.store.nearest(self.model, queries, k, frozenset(exclude), self.ef_search)

    def get(self, row_id: int) -> np.ndarray | None:
        return None  # no vectors held here: the worker reads the ones it needs from the store

    def upsert(self, ids: Iterable[int], vectors: np.ndarray) -> None:
        """Nothing to do: the committed rows are in the database's index already."""

    def remove(self, ids: Iterable[int]) -> None:
        """Nothing to do: deleted rows left the database's index with their transaction."""


SimilarityIndex = VectorIndex | DatabaseIndex


def init_schema(store: Store, config: IndexConfig, dimension: int, notifier: Notifier | None = None) -> tuple[
        Where, bool]:
    """`Store.init_schema` for the chosen index: where nearest-neighbour questions will be answered, and
    whether the table was created. With `"database"`, a new table is created with its vector index, and one
    without is given it now (the start waits: `notifier` tells systemd)."""
    where = choose(store, config)
    created = store.init_schema(dimension)
    if created:
        log.info("table_created", store=store.location(), table=store.table, dimension=dimension,
                 vector_index=where == "database")
    if where == "database" and not store.has_vector_index():
        started = time.monotonic()
        log.warning("vector_index_building", table=store.table, m=config.hnsw_m,
                    note="once, for the rows already stored: the start waits for it")
        if notifier is not None:
            notifier.extend_timeout(BUILD_TIMEOUT_S)
            notifier.status("building the vector index")
        try:
            store.add_vector_index(config.hnsw_m)
        except StoreError:
            if not store.has_vector_index():  # else another instance built it meanwhile
                raise
        log.info("vector_index_built", table=store.table, seconds=round(time.monotonic() - started, 1))
    return where, created


def choose(store: Store, config: IndexConfig) -> Where:
    """Where nearest-neighbour questions are answered, decided against the server (see the module's doc)."""
    if config.where == "memory":
        return "memory"
    missing = store.vector_search_missing()
    if missing is not None:
        if config.where == "database":
            raise ConfigError(f"index.where = \"database\": {missing}. Use index.where = \"memory\" (or \"auto\") "
                              "with this server, or MariaDB 11.7+ for the search in the database")
        log.info("index_in_memory", reason=missing)
        return "memory"
    if config.where == "auto" and store.table_dimension() is not None and not store.has_vector_index():
        log.warning("index_in_memory", reason=f"table {store.table!r} has no vector index",
                    fix="set index.where = \"database\" to build it once at the next start (minutes for "
                        "millions of rows), then every start is immediate")
        return "memory"
    store.vector_index_m = config.hnsw_m
    return "database"
