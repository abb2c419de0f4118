"""How clipwatch talks to a SQL driver, and how a batch is written: the part MySQL and SQLite share.

Every statement is parameterised; the only names put into SQL text are the table name (validated against
`config.IDENTIFIER`) and column names written here. Every call to the driver goes through `_transaction`,
which turns any driver error (also one raised while opening a cursor, which pings MySQL, or while
beginning a transaction) into `StoreError` and rolls back: callers retry one exception type.
"""

from __future__ import annotations

import contextlib
import os
from abc import abstractmethod
from collections.abc import Iterator, Sequence
from itertools import groupby
from typing import Any

import numpy as np

from ..errors import StoreError
from ..pdq import FileHashes
from .base import Store
from .records import (
    Applied,
    Delete,
    DeleteTree,
    FinishMove,
    ForgetDecision,
    JournalMove,
    Op,
    RecordAction,
    RecordDecision,
    Rename,
    SetVerdict,
    Touch,
    Upsert,
)

COLUMNS = ("instance", "path", "sha256", "size", "mtime", "model", "embedding", "status", "match_id", "score",
           "label", "md5", "pdq", "pdq_quality", "signal", "pdq_distance")
# The last five were added by issue 21 (each backend's ADDED: their types, and what `create_aux_tables` adds to
# an older table). PDQ is kept as its 64 hex digits (Meta's format, readable in SQL); `signal` is quoted in
# every statement: a MySQL keyword.
DECISION_COLUMNS = ("kind", "sha256", "other", "decision", "decided_by", "score", "row_id", "path", "match_path")
CHUNK = 500  # values per IN (...) list


class SQLBase(Store):
    """The driver's dialect, its one guarded way in, and `apply`."""

    PARAM = "?"  # placeholder
    VECTOR_PARAM = "?"  # placeholder for a float32 little-endian vector
    PATH_MATCH = "path = ?"  # how one row is found by path
    NOW = "CURRENT_TIMESTAMP"
    UPSERT_TAIL = ""  # appended to the INSERT to make it an upsert
    DRIVER_ERRORS: tuple[type[BaseException], ...] = ()  # the driver's exceptions, reported as StoreError

    def __init__(self, table: str, instance: str) -> None:
        super().__init__(table, instance)
        self.t = self.quote(table)
        self.deleted_table = self.quote(table + "_deleted")
        self.decisions_table = self.quote(table + "_decisions")
        self.moves_table = self.quote(table + "_moves")
        self.actions_table = self.quote(table + "_actions")
        self.signal = self.quote("signal")

    @abstractmethod
    def quote(self, name: str) -> str: ...

    @abstractmethod
    def _cursor(self) -> Any: ...

    @abstractmethod
    def _commit(self) -> None: ...

    @abstractmethod
    def _rollback(self) -> None: ...

    def _describe(self, exc: BaseException) -> str:
        return str(exc)

    # --- the one way to the driver ----------------------------------------------------------------

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[Any]:
        """A cursor whose statements commit together at the end; any failure rolls them back. Every driver
        error, from opening the cursor to the commit, leaves as StoreError."""
        guarded: tuple[type[BaseException], ...] = (*self.DRIVER_ERRORS, OSError)
        try:
            cur = self._cursor()
            try:
                yield cur
                self._commit()
            except BaseException:
                self._rollback()
                raise
            finally:
                with contextlib.suppress(*guarded):
                    cur.close()
        except guarded as exc:
            raise StoreError(f"{self.location()}: {self._describe(exc)}") from exc

    def _fetch(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """One statement; its rows. The read's transaction ends, so the next read sees other writers' rows."""
        with self._transaction() as cur:
            cur.execute(sql, tuple(params))
            return list(cur.fetchall()) if cur.description else []

    def instances(self) -> dict[str, int]:
        if self.table_dimension() is None:
            return {}
        return {str(i): int(n) for i, n in self._fetch(f"SELECT instance, COUNT(*) FROM {self.t} GROUP BY instance")}

    def _marks(self, n: int) -> str:
        return ", ".join([self.PARAM] * n)

    def _by_chunks(self, sql: str, values: Sequence[Any], extra: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """`sql` with `{marks}` standing for an IN list, run for CHUNK values at a time."""
        rows: list[tuple[Any, ...]] = []
        unique = list(dict.fromkeys(values))
        for i in range(0, len(unique), CHUNK):
            part = unique[i:i + CHUNK]
            rows += self._fetch(sql.format(marks=self._marks(len(part))), [*extra, *part])
        return rows

    def _where_paths(self, paths: Sequence[str]) -> Iterator[tuple[str, list[Any]]]:
        """WHERE clauses (and their parameters) for this instance's rows of `paths`, CHUNK paths each."""
        unique = list(dict.fromkeys(paths))
        for i in range(0, len(unique), CHUNK):
            part = unique[i:i + CHUNK]
            match = " OR ".join(f"({self.PATH_MATCH})" for _ in part)
            yield f"instance = {self.PARAM} AND ({match})", [self.instance, *part]

    # --- writing: one batch, one transaction ----------------------------------------------------

    def apply(self, ops: Sequence[Op]) -> Applied:
        applied = Applied()
        if not ops:
            return applied
        with self._transaction() as cur:
            for kind, run in groupby(ops, key=type):
                self._apply_run(cur, kind, list(run), applied)
            upserts = [o for o in ops if isinstance(o, Upsert)]
            if upserts:
                applied.ids.update(self._ids_of(cur, [o.path for o in upserts]))
                for o in upserts:
                    if o.match_path is not None and o.match_path in applied.ids:
                        cur.execute(f"UPDATE {self.t} SET match_id = {self.PARAM} "
                                    f"WHERE instance = {self.PARAM} AND {self.PATH_MATCH}",
                                    (applied.ids[o.match_path], self.instance, o.path))
        return applied

    def _ids_of(self, cur: Any, paths: list[str]) -> dict[str, int]:
        found: dict[str, int] = {}
        for where, params in self._where_paths(paths):
            cur.execute(f"SELECT path, id FROM {self.t} WHERE {where}", tuple(params))
            found.update(cur.fetchall())
        return found

    def _delete_where(self, cur: Any, condition: str, params: tuple[Any, ...], applied: Applied) -> None:
        """Delete rows, leaving a tombstone for each so other instances' indexes drop them too."""
        cur.execute(f"SELECT id FROM {self.t} WHERE {condition}", params)
        ids = [r[0] for r in cur.fetchall()]
        if not ids:
            return
        cur.executemany(f"INSERT INTO {self.deleted_table} (id, deleted_at) VALUES ({self.PARAM}, {self.NOW})",
                        [(i,) for i in ids])
        cur.execute(f"DELETE FROM {self.t} WHERE {condition}", params)
        applied.deleted.extend(ids)

    def _apply_run(self, cur: Any, kind: type, ops: list[Any], applied: Applied) -> None:
        p, inst, t, now, where = self.PARAM, self.instance, self.t, self.NOW, self.PATH_MATCH
        if kind is Upsert:
            values = ", ".join([p] * 6 + [self.VECTOR_PARAM] + [p] * (len(COLUMNS) - 7))
            cur.executemany(
                f"INSERT INTO {t} ({', '.join(map(self.quote, COLUMNS))}) VALUES ({values}){self.UPSERT_TAIL}",
                [(inst, o.path, o.sha256, o.size, o.mtime, o.model, self.check_vector(o), o.status, o.match_id,
                  o.score, o.label, *_hash_values(o.hashes), o.signal, o.pdq_distance) for o in ops])
        elif kind is Touch:
            plain, hashed = [o for o in ops if o.hashes is None], [o for o in ops if o.hashes is not None]
            cur.executemany(f"UPDATE {t} SET size = {p}, mtime = {p}, updated_at = {now} "
                            f"WHERE instance = {p} AND {where}", [(o.size, o.mtime, inst, o.path) for o in plain])
            cur.executemany(f"UPDATE {t} SET size = {p}, mtime = {p}, md5 = {p}, pdq = {p}, pdq_quality = {p}, "
                            f"updated_at = {now} WHERE instance = {p} AND {where}",
                            [(o.size, o.mtime, *_hash_values(o.hashes), inst, o.path) for o in hashed])
        elif kind is Rename:
            for o in ops:  # one at a time: a rename may free the name the next one takes
                # Only when the source row is there: a batch retried after an ambiguous commit must not
                # delete the row it already renamed.
                cur.execute(f"SELECT id FROM {t} WHERE instance = {p} AND {where}", (inst, o.src))
                if not cur.fetchall():
                    continue
                self._delete_where(cur, f"instance = {p} AND {where}", (inst, o.dest), applied)
                cur.execute(f"UPDATE {t} SET path = {p}, updated_at = {now} "
                            f"WHERE instance = {p} AND {where}", (o.dest, inst, o.src))
        elif kind is Delete:
            for o in ops:
                self._delete_where(cur, f"instance = {p} AND {where}", (inst, o.path), applied)
        elif kind is DeleteTree:
            for o in ops:
                low, high = _prefix_range(o.directory)
                self._delete_where(cur, f"instance = {p} AND path >= {p} AND path < {p}", (inst, low, high),
                                   applied)
        else:
            self._apply_bookkeeping(cur, ops, applied)

    def _apply_bookkeeping(self, cur: Any, ops: list[Any], applied: Applied) -> None:
        """The journal of moves, decisions and dismissed verdicts."""
        p = self.PARAM
        for o in ops:
            if isinstance(o, JournalMove):
                cur.execute(f"INSERT INTO {self.moves_table} (instance, src, dest, action, sha256, created_at) "
                            f"VALUES ({p}, {p}, {p}, {p}, {p}, {self.NOW})", (self.instance, o.src, o.dest, o.action,
                                                                          o.sha256))
                applied.moves[o.dest] = int(cur.lastrowid)
            elif isinstance(o, FinishMove):
                cur.execute(f"DELETE FROM {self.moves_table} WHERE id = {p}", (o.id,))
            elif isinstance(o, RecordDecision):
                d = o.decision
                cur.execute(f"INSERT INTO {self.decisions_table} ({', '.join(DECISION_COLUMNS)}, decided_at) "
                            f"VALUES ({self._marks(len(DECISION_COLUMNS))}, {self.NOW})",
                            tuple(getattr(d, c) for c in DECISION_COLUMNS))
            elif isinstance(o, SetVerdict):
                cur.execute(f"UPDATE {self.t} SET status = {p}, match_id = {p}, score = {p}, label = {p}, "
                            f"{self.signal} = {p}, pdq_distance = {p}, updated_at = {self.NOW} WHERE id = {p}",
                            (o.status, o.match_id, o.score, o.label, o.signal, o.pdq_distance, o.row_id))
            elif isinstance(o, RecordAction):
                a = o.action
                cur.execute(f"INSERT INTO {self.actions_table} (instance, deed, row_id, path, dest, restore, undoes, "
                            f"decided_by, decided_at) VALUES ({self._marks(8)}, {self.NOW})",
                            (self.instance, a.deed, a.row_id, a.path, a.dest, a.restore, a.undoes, a.decided_by))
                applied.actions.append(int(cur.lastrowid))
            elif isinstance(o, ForgetDecision):
                cur.execute(f"SELECT MAX(id) FROM {self.decisions_table} WHERE row_id = {p} AND decision = {p}",
                            (o.row_id, o.decision))
                newest = cur.fetchone()[0]
                cur.execute(f"DELETE FROM {self.decisions_table} WHERE id = {p}", (newest,))
            else:
                raise TypeError(f"not a store operation: {o!r}")


def _hash_values(hashes: FileHashes | None) -> tuple[str | None, str | None, int | None]:
    """(md5, pdq as hex, pdq_quality) as the columns hold them."""
    if hashes is None:
        return None, None, None
    return hashes.md5, hashes.pdq_hex, hashes.pdq_quality


def _vectors(blobs: Sequence[Any]) -> np.ndarray:
    """Stored vectors (bytes, or array('f') from MySQL's VECTOR) as one (n, dim) float32 matrix."""
    if not blobs:
        return np.zeros((0, 0), dtype=np.float32)
    data = b"".join(blobs)  # each is a buffer of little-endian float32s
    return np.frombuffer(data, dtype="<f4").reshape(len(blobs), -1).astype(np.float32)


def _prefix_range(directory: str) -> tuple[str, str]:
    """Paths strictly below `directory` are exactly those in [dir + "/", dir + "0"): "0" follows "/"."""
    prefix = directory.rstrip(os.sep) + os.sep
    return prefix, prefix[:-1] + chr(ord(os.sep) + 1)
