"""MariaDB 11.7+ (11.8 LTS is Debian 13's): MySQL 9's store with MariaDB's dialect.

The same wire protocol, driver, tables and `_binary` float32 vector parameters as MySQL 9 (mysql.py); what
differs: the upsert names the new values with `VALUES(col)` (MariaDB has no `INSERT ... AS new`), a stored
generated column takes no `NOT NULL`, and `VECTOR(N)` is exact (a vector of another length is refused by
the server as well as by `Store.check_vector`). Versions before 11.7 have no VECTOR type: refused at start
with the version found.
"""

from __future__ import annotations

import re
from typing import Any

from ..config import StoreURL
from ..errors import StoreError
from .mysql import MySQLStore, _text

COLUMNS_UPDATED = ("sha256", "size", "mtime", "model", "embedding", "status", "match_id", "score", "label")


class MariaDBStore(MySQLStore):
    backend = "mariadb"
    UPSERT_TAIL = (" ON DUPLICATE KEY UPDATE " + ", ".join(f"{c} = VALUES({c})" for c in COLUMNS_UPDATED)
                   + ", updated_at = UTC_TIMESTAMP(6)")

    def __init__(self, url: StoreURL, password: str, table: str, instance: str, connect_timeout_s: int = 10,
                 conn: Any = None) -> None:
        super().__init__(url, password, table, instance, connect_timeout_s, conn)
        server = _text(self._fetch("SELECT VERSION()")[0][0])
        version = tuple(int(n) for n in re.findall(r"\d+", server)[:2])
        if version < (11, 7):
            self.close()
            raise StoreError(f"{url.redacted()} is MariaDB {server}: clipwatch needs MariaDB 11.7 or later "
                             "(the VECTOR type; 11.8 LTS is Debian 13's mariadb-server)")

    def create_table(self, dimension: int) -> None:
        # DDL cannot be parameterised: the table name is a validated identifier, the dimension an int.
        self._fetch(f"""
            CREATE TABLE IF NOT EXISTS {self.t} (
                id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
                instance VARCHAR(255) NOT NULL,
                path VARCHAR(4096) NOT NULL,
                path_hash BINARY(32) AS (UNHEX(SHA2(path, 256))) STORED,
                sha256 CHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
                size BIGINT UNSIGNED NOT NULL,
                mtime DOUBLE NOT NULL,
                model VARCHAR(255) NOT NULL,
                embedding VECTOR({int(dimension)}) NOT NULL,
                status VARCHAR(16) CHARACTER SET ascii NOT NULL DEFAULT 'ok',
                match_id BIGINT UNSIGNED NULL,
                score FLOAT NULL,
                label VARCHAR(255) NULL,
                created_at DATETIME(6) NOT NULL DEFAULT (UTC_TIMESTAMP(6)),
                updated_at DATETIME(6) NOT NULL DEFAULT (UTC_TIMESTAMP(6)),
                UNIQUE KEY instance_path (instance, path_hash),
                KEY instance_path_prefix (instance, path(255)),
                KEY sha256 (sha256),
                KEY updated_at (updated_at),
                KEY model_id (model, id),
                KEY match_id (match_id),
                KEY status_updated (status, updated_at)
            ) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin COMMENT = 'clipwatch mariadb'
        """)
