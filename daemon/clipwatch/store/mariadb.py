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
