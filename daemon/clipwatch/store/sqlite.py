"""SQLite, the embedded default store: a file under the data directory, vectors as float32 BLOBs."""

from __future__ import annotations

import os
import sqlite3
from datetime import datetime
from typing import Any

from ..errors import StoreError
from .base import SQLStore

META = "clipwatch_meta"  # per-table facts SQLite cannot hold in the schema (the vector dimension)


class SQLiteStore(SQLStore):
    backend = "sqlite"
    DRIVER_ERRORS = (sqlite3.Error,)
    NOW = "strftime('%Y-%m-%d %H:%M:%f', 'now')"
    UPSERT_TAIL = (
        " ON CONFLICT (instance, path) DO UPDATE SET sha256 = excluded.sha256, size = excluded.size, "
        "mtime = excluded.mtime, model = excluded.model, embedding = excluded.embedding, status = excluded.status, "
        "match_id = excluded.match_id, score = excluded.score, label = excluded.label, "
        "updated_at = strftime('%Y-%m-%d %H:%M:%f', 'now')"
    )

    def __init__(self, path: str, table: str, instance: str) -> None:
        super().__init__(table, instance)
        self.path = path
        try:
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            # autocommit is handled by us: every apply() is one explicit transaction
            self.conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
            self.conn.execute("PRAGMA journal_mode = WAL")
            self.conn.execute("PRAGMA synchronous = NORMAL")
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open the SQLite store {path!r}: {exc}") from None

    def location(self) -> str:
        return f"sqlite://{self.path}"

    def quote(self, name: str) -> str:
        return f'"{name}"'

    def _cursor(self) -> Any:
        cur = self.conn.cursor()
        if not self.conn.in_transaction:
            cur.execute("BEGIN")
        return cur

    def _commit(self) -> None:
        if self.conn.in_transaction:
            self.conn.commit()

    def _rollback(self) -> None:
        if self.conn.in_transaction:
            self.conn.rollback()

    def table_dimension(self) -> int | None:
        self.conn.execute(f"CREATE TABLE IF NOT EXISTS {META} (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        row = self.conn.execute(f"SELECT value FROM {META} WHERE key = ?",  # noqa: S608 - META is a constant
                                (f"{self.table}.dimension",)).fetchone()
        exists = self.conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                                   (self.table,)).fetchone()
        return int(row[0]) if row and exists else None

    def create_table(self, dimension: int) -> None:
        t = self.t
        self.conn.executescript(f"""
            BEGIN;
            CREATE TABLE IF NOT EXISTS {t} (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                instance TEXT NOT NULL,
                path TEXT NOT NULL,
                sha256 TEXT NOT NULL,
                size INTEGER NOT NULL,
                mtime REAL NOT NULL,
                model TEXT NOT NULL,
                embedding BLOB NOT NULL CHECK (length(embedding) = {4 * int(dimension)}),
                status TEXT NOT NULL DEFAULT 'ok',
                match_id INTEGER,
                score REAL,
                label TEXT,
                created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')),
                updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')),
                UNIQUE (instance, path)
            );
            CREATE INDEX IF NOT EXISTS "{self.table}_sha256" ON {t} (sha256);
            CREATE INDEX IF NOT EXISTS "{self.table}_updated_at" ON {t} (updated_at);
            CREATE INDEX IF NOT EXISTS "{self.table}_model_id" ON {t} (model, id);
            COMMIT;
        """)
        self.conn.execute(f"INSERT OR REPLACE INTO {META} (key, value) VALUES (?, ?)",  # noqa: S608
                          (f"{self.table}.dimension", str(int(dimension))))

    def create_aux_tables(self) -> None:
        self.conn.execute(f"CREATE TABLE IF NOT EXISTS {self.deleted_table} "
                          "(id INTEGER PRIMARY KEY, deleted_at TEXT NOT NULL)")
        self.conn.execute(f'CREATE INDEX IF NOT EXISTS "{self.table}_deleted_at" ON {self.deleted_table} (deleted_at)')

    def _timestamp(self, when: datetime) -> str:
        return when.strftime("%Y-%m-%d %H:%M:%S.") + f"{when.microsecond // 1000:03d}"

    def _parse_time(self, value: Any) -> datetime:
        return datetime.strptime(value, "%Y-%m-%d %H:%M:%S.%f")

    def close(self) -> None:
        self.conn.close()
