"""The instance registry (`<table>_instances`): which host and data directory each instance's daemon runs
from, and when it last said it was alive. instance.py decides with it; this module only reads and writes it.

A daemon claims its name at start and renews the claim every few seconds (`beat`). The claim is one
transaction: a row that does not exist is inserted, one that does is read (locked on MySQL and MariaDB) and
taken over only as `claim`'s caller allows. Times are the store's own clock, so servers whose clocks
disagree still agree on how old a claim is.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from .records import Registration
from .sqlbase import CHUNK, SQLBase, _prefix_range

REGISTRY_COLUMNS = "name, host, data_dir, pid, seen_at"


class Registry(SQLBase):
    """The registry's reads and writes, for both SQL backends."""

    INSERT_IGNORE = "INSERT OR IGNORE"  # SQLite's; MySQL's is INSERT IGNORE
    LOCK_ROW = ""  # MySQL: FOR UPDATE (SQLite's writers are serialised already)
    TABLE_EXISTS = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?"
    # SQLite reads every index entry for a DISTINCT; this walk asks the (instance, path) index once per name.
    # MySQL and MariaDB answer DISTINCT from that index with a loose index scan.
    DISTINCT_INSTANCES = ("WITH RECURSIVE n(i) AS (SELECT MIN(instance) FROM {t} UNION ALL SELECT (SELECT "
                          "MIN(instance) FROM {t} WHERE instance > n.i) FROM n WHERE n.i IS NOT NULL) "
                          "SELECT i FROM n WHERE i IS NOT NULL")

    def __init__(self, table: str, instance: str) -> None:
        super().__init__(table, instance)
        self.registry_table = self.quote(table + "_instances")

    @abstractmethod
    def _parse_time(self, value: Any) -> datetime: ...

    def registered(self) -> dict[str, Registration]:
        """Every instance a daemon ever claimed ({} before the registry exists)."""
        if not self._registry_exists():
            return {}
        now = self.now()
        rows = self._fetch(f"SELECT {REGISTRY_COLUMNS} FROM {self.registry_table}")
        return {str(r[0]): self._registration(r, now) for r in rows}

    def claim(self, host: str, data_dir: str, pid: int, allow: Callable[[Registration], bool]) -> Registration | None:
        """Register this instance's daemon. None when claimed; else the registration that stands because
        `allow` refused to take it over."""
        p = self.PARAM
        mine = (self.instance, host, data_dir, pid)
        with self._transaction() as cur:
            cur.execute(f"{self.INSERT_IGNORE} INTO {self.registry_table} (name, host, data_dir, pid, started_at, "
                        f"seen_at) VALUES ({p}, {p}, {p}, {p}, {self.NOW}, {self.NOW})", mine)
            if cur.rowcount == 1:
                return None
            cur.execute(f"SELECT {REGISTRY_COLUMNS}, {self.NOW} FROM {self.registry_table} WHERE name = {p}"
                        f"{self.LOCK_ROW}", (self.instance,))
            row = cur.fetchone()
            held = self._registration(row[:5], self._parse_time(row[5]))
            if not allow(held):
                return held
            cur.execute(f"UPDATE {self.registry_table} SET host = {p}, data_dir = {p}, pid = {p}, "
                        f"started_at = {self.NOW}, seen_at = {self.NOW} WHERE name = {p}", (*mine[1:], self.instance))
        return None

    def beat(self, host: str, data_dir: str, pid: int) -> bool:
        """Renew this daemon's claim. False when the registry names another holder (or none) now."""
        p = self.PARAM
        with self._transaction() as cur:
            cur.execute(f"UPDATE {self.registry_table} SET seen_at = {self.NOW} WHERE name = {p} AND host = {p} "
                        f"AND data_dir = {p} AND pid = {p}", (self.instance, host, data_dir, pid))
            return bool(cur.rowcount)

    def release(self, host: str, data_dir: str, pid: int) -> None:
        """This daemon stopped cleanly: its name may be claimed at once (pid 0; the host stays on record)."""
        p = self.PARAM
        self._fetch(f"UPDATE {self.registry_table} SET pid = 0 WHERE name = {p} AND host = {p} AND data_dir = {p} "
                    f"AND pid = {p}", (self.instance, host, data_dir, pid))

    def instance_names(self) -> list[str]:
        """Every instance holding rows (the index on (instance, path) answers without reading the rows)."""
        if self.table_dimension() is None:
            return []
        return [str(r[0]) for r in self._fetch(self.DISTINCT_INSTANCES.format(t=self.t))]

    def holds_rows_under(self, instance: str, directory: str) -> bool:
        """Whether `instance` has a row for a file below `directory`."""
        low, high = _prefix_range(directory)
        p = self.PARAM
        return bool(self._fetch(f"SELECT 1 FROM {self.t} WHERE instance = {p} AND path >= {p} AND path < {p} "
                                "LIMIT 1", [instance, low, high]))

    def rows_at(self, paths: Sequence[str], instances: Sequence[str]) -> dict[str, list[int]]:
        """The ids of the rows these instances hold for these paths, by path."""
        found: dict[str, list[int]] = {}
        p, unique = self.PARAM, list(dict.fromkeys(paths))
        for name in instances:
            for i in range(0, len(unique), CHUNK):
                part = unique[i:i + CHUNK]
                match = " OR ".join(f"({self.PATH_MATCH})" for _ in part)
                for row_id, path in self._fetch(f"SELECT id, path FROM {self.t} WHERE instance = {p} AND ({match})",
                                                [name, *part]):
                    found.setdefault(str(path), []).append(int(row_id))
        return found

    def _registry_exists(self) -> bool:
        return bool(self._fetch(self.TABLE_EXISTS, [self.table + "_instances"]))

    def _registration(self, row: Sequence[Any], now: Any) -> Registration:
        seen = self._parse_time(row[4])
        return Registration(name=str(row[0]), host=str(row[1]), data_dir=str(row[2]), pid=int(row[3]),
                            seen_s=max(0.0, (now - seen).total_seconds()))
