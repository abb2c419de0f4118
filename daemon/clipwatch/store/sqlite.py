"""SQLite, the embedded default store: a file under the data directory, vectors as float32 BLOBs."""

from __future__ import annotations

import os
import sqlite3
from datetime import datetime
from typing import Any

from ..errors import StoreError
from .sql import SQLStore

META = "clipwatch_meta"  # per-table facts SQLite cannot hold in the schema (the vector dimension)
NOW = "strftime('%Y-%m-%d %H:%M:%f', 'now')"

AUX_TABLES = {
    "deleted": "id INTEGER PRIMARY KEY, deleted_at TEXT NOT NULL",
    "decisions": """id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, sha256 TEXT NOT NULL,
        other TEXT NOT NULL, decision TEXT NOT NULL, decided_by TEXT NOT NULL, score REAL, row_id INTEGER,
        path TEXT NOT NULL, match_path TEXT, decided_at TEXT NOT NULL""",
    "moves": """id INTEGER PRIMARY KEY AUTOINCREMENT, instance TEXT NOT NULL, src TEXT NOT NULL,
        dest TEXT NOT NULL, action TEXT NOT NULL, sha256 TEXT NOT NULL, created_at TEXT NOT NULL""",
    "actions": """id INTEGER PRIMARY KEY AUTOINCREMENT, instance TEXT NOT NULL, deed TEXT NOT NULL, row_id INTEGER,
        path TEXT NOT NULL, dest TEXT, restore TEXT, undoes INTEGER, decided_by TEXT NOT NULL,
        decided_at TEXT NOT NULL""",
    "instances": """name TEXT PRIMARY KEY, host TEXT NOT NULL, data_dir TEXT NOT NULL, pid INTEGER NOT NULL,
        started_at TEXT NOT NULL, seen_at TEXT NOT NULL""",
}
# The columns issue 21 added, as created with a new table and added to an older one.
ADDED = {"md5": "TEXT", "pdq": "TEXT", "pdq_quality": "INTEGER", "signal": "TEXT", "pdq_distance": "INTEGER"}
AUX_INDEXES = {"deleted": "deleted_at", "decisions": "sha256", "moves": "instance", "actions": "row_id",
               "instances": "host"}


class SQLiteStore(SQLStore):
    backend = "sqlite"
    DRIVER_ERRORS = (sqlite3.Error,)
    NOW = NOW
    UPSERT_TAIL = (
        " ON CONFLICT (instance, path) DO UPDATE SET sha256 = excluded.sha256, size = excluded.size, "
        "mtime = excluded.mtime, model = excluded.model, embedding = excluded.embedding, status = excluded.status, "
        "match_id = excluded.match_id, score = excluded.score, label = excluded.label, md5 = excluded.md5, "
        "pdq = excluded.pdq, pdq_quality = excluded.pdq_quality, signal = excluded.signal, "
        f"pdq_distance = excluded.pdq_distance, updated_at = {NOW}"
    )

    def __init__(self, path: str, table: str, instance: str) -> None:
        super().__init__(table, instance)
        self.path = path
        self.conn = self._connect()

    def _connect(self) -> sqlite3.Connection:
        try:
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            # autocommit is handled by us: every write is one explicit transaction
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open the SQLite store {self.path!r}: {exc}") from None
        return conn

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
        try:
            if self.conn.in_transaction:
                self.conn.rollback()
        except sqlite3.Error:
            pass  # a closed or broken connection has nothing left to roll back

    def reconnect(self) -> None:
        try:
            self.conn.close()
        except sqlite3.Error:
            pass
        try:
            self.conn = self._connect()
        except StoreError:
            pass  # the next call fails again, and says why

    def table_dimension(self) -> int | None:
        self._fetch(f"CREATE TABLE IF NOT EXISTS {META} (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        row = self._fetch(f"SELECT value FROM {META} WHERE key = ?",
                          (f"{self.table}.dimension",))
        exists = self._fetch("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (self.table,))
        return int(row[0][0]) if row and exists else None

    def create_table(self, dimension: int) -> None:
        t = self.t
        with self._transaction() as cur:
            cur.execute(f"""
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
                    label TEXT,{"".join(f" {name} {kind}," for name, kind in ADDED.items())}
                    created_at TEXT NOT NULL DEFAULT ({NOW}),
                    updated_at TEXT NOT NULL DEFAULT ({NOW}),
                    UNIQUE (instance, path)
                )""")
            for columns in ("sha256", "updated_at", "model, id", "status, updated_at"):
                name = f"{self.table}_{columns.replace(', ', '_')}"
                cur.execute(f'CREATE INDEX IF NOT EXISTS "{name}" ON {t} ({columns})')
            cur.execute(f"INSERT OR REPLACE INTO {META} (key, value) VALUES (?, ?)",
                        (f"{self.table}.dimension", str(int(dimension))))
        self._add_match_index()

    def create_aux_tables(self) -> None:
        with self._transaction() as cur:
            for suffix, columns in AUX_TABLES.items():
                name = self.table + "_" + suffix
                cur.execute(f"CREATE TABLE IF NOT EXISTS {self.quote(name)} ({columns})")
                cur.execute(f'CREATE INDEX IF NOT EXISTS "{name}_{AUX_INDEXES[suffix]}" ON {self.quote(name)} '
                            f"({AUX_INDEXES[suffix]})")
        if self._fetch("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (self.table,)):
            self._add_match_index()
            have = {r[1] for r in self._fetch(f"PRAGMA table_info({self.t})")}
            with self._transaction() as cur:  # tables made before file hashes and signals were kept
                for name, kind in ADDED.items():
                    if name not in have:
                        cur.execute(f"ALTER TABLE {self.t} ADD COLUMN {name} {kind}")

    def _add_match_index(self) -> None:
        self._fetch(f'CREATE INDEX IF NOT EXISTS "{self.table}_match_id" ON {self.t} (match_id)')

    def _timestamp(self, when: datetime) -> str:
        return when.strftime("%Y-%m-%d %H:%M:%S.") + f"{when.microsecond // 1000:03d}"

    def _parse_time(self, value: Any) -> datetime:
        try:
            return datetime.strptime(value, "%Y-%m-%d %H:%M:%S.%f")
        except (TypeError, ValueError):
            raise StoreError(f"{self.location()}: expected a timestamp, got {value!r}") from None

    def close(self) -> None:
        self.conn.close()
