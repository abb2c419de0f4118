"""MariaDB 11.7+ (11.8 LTS is Debian 13's): MySQL 9's store with MariaDB's dialect.

The same wire protocol, driver, tables and `_binary` float32 vector parameters as MySQL 9 (mysql.py); what
differs: the upsert names the new values with `VALUES(col)` (MariaDB has no `INSERT ... AS new`), a stored
generated column takes no `NOT NULL`, and `VECTOR(N)` is exact (a vector of another length is refused by
the server as well as by `Store.check_vector`). Versions before 11.7 have no VECTOR type: refused at start
with the version found.

MariaDB also has a vector index (HNSW, `VECTOR INDEX (embedding) M=.. DISTANCE=cosine`), which answers
`ORDER BY VEC_DISTANCE_COSINE(embedding, x) LIMIT n`: `nearest` is what `index.where = "database"` asks
(dbindex.py). The index sees only committed rows of every instance: no sync needed. It is approximate
(HNSW): `mhnsw_ef_search`, set per query, trades time for recall (docs/benchmarks.md).
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from ..config import StoreURL
from ..errors import StoreError
from .mysql import MySQLStore, _text

VECTOR_INDEX = "embedding_hnsw"
COLUMNS_UPDATED = ("sha256", "size", "mtime", "model", "embedding", "status", "match_id", "score", "label", "md5",
                   "pdq", "pdq_quality", "`signal`", "pdq_distance")


class MariaDBStore(MySQLStore):
    backend = "mariadb"
    GENERATED_NOT_NULL = ""
    UPSERT_TAIL = (" ON DUPLICATE KEY UPDATE " + ", ".join(f"{c} = VALUES({c})" for c in COLUMNS_UPDATED)
                   + ", updated_at = UTC_TIMESTAMP(6)")

    def __init__(self, url: StoreURL, password: str, table: str, instance: str, connect_timeout_s: int = 10,
                 conn: Any = None) -> None:
        super().__init__(url, password, table, instance, connect_timeout_s, conn)
        server = _text(self.conn.server_info)  # what the handshake said: open_server read it already
        version = tuple(int(n) for n in re.findall(r"\d+", server)[:2])
        if version < (11, 7):
            self.close()
            raise StoreError(f"{url.redacted()} is MariaDB {server}: clipwatch needs MariaDB 11.7 or later "
                             "(the VECTOR type; 11.8 LTS is Debian 13's mariadb-server)")

    # --- the vector index (index.where = "database") ------------------------------------------------

    def vector_search_missing(self) -> str | None:
        try:  # a probe, not the version string: a build without the vector functions says so here
            self._fetch("SELECT VEC_DISTANCE_COSINE(VEC_FromText('[1,0]'), VEC_FromText('[0,1]'))")
        except StoreError as exc:
            return f"this MariaDB server has no vector functions: {exc}"
        return None

    def has_vector_index(self) -> bool:
        return bool(self._fetch("SELECT 1 FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = DATABASE() "
                                "AND TABLE_NAME = %s AND INDEX_TYPE = 'VECTOR' AND COLUMN_NAME = 'embedding'",
                                (self.table,)))

    def _vector_index_ddl(self) -> str:
        m = int(self.vector_index_m)
        return f",\n                VECTOR INDEX {VECTOR_INDEX} (embedding) M={m} DISTANCE=cosine" if m else ""

    def add_vector_index(self, m: int) -> None:
        self._fetch(f"ALTER TABLE {self.t} ADD VECTOR INDEX {VECTOR_INDEX} (embedding) M={int(m)} DISTANCE=cosine")

    def nearest(self, model: str, queries: np.ndarray, k: int, exclude: frozenset[int],
                ef_search: int) -> list[list[tuple[int, float]]]:
        # One statement per query, all in one round of the connection. The vector index (EXPLAIN: type
        # `index`, key embedding_hnsw) is walked in order of its own, approximate distance and the model
        # filter applied as it goes; the distances returned are exact, on the stored vectors. That walk's
        # order is not always the exact one: measured on 11.8, the exact copy sometimes comes third behind
        # two unrelated rows (docs/benchmarks.md). So the LIMIT asks for more rows than wanted (room for the
        # rows to exclude, then k more, at least 10) and they are sorted here by their exact distance.
        fetch = int(k) + len(exclude) + max(int(k), 10)
        sql = (f"SELECT id, VEC_DISTANCE_COSINE(embedding, _binary %s) AS d FROM {self.t} WHERE model = %s "
               f"ORDER BY d LIMIT {fetch}")
        found = []
        with self._transaction() as cur:
            cur.execute("SET SESSION mhnsw_ef_search = %s", (int(ef_search),))
            for query in np.asarray(queries, dtype="<f4"):
                cur.execute(sql, (query.tobytes(), model))
                rows = sorted((float(d), int(i)) for i, d in cur.fetchall() if int(i) not in exclude)
                found.append([(i, 1.0 - d) for d, i in rows[:k]])
        return found
