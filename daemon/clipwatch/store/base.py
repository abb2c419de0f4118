"""The store interface, its operations, and the SQL both backends share.

One row per (instance, path). The worker turns a batch of file changes into a list of `Op`s and
hands them to `Store.apply`, which runs them in order in one transaction. Every statement is
parameterised; the only names put into SQL text are the table name (validated against
`config.IDENTIFIER`) and column names written here.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from itertools import groupby
from typing import Any

import numpy as np

from ..config import IDENTIFIER
from ..errors import SchemaMismatch, StoreError

COLUMNS = ("instance", "path", "sha256", "size", "mtime", "model", "embedding", "status", "match_id", "score",
           "label")


@dataclass(frozen=True)
class StoredFile:
    """What the worker and the scanner need to know of an existing row (no vector)."""

    id: int
    path: str
    sha256: str
    size: int
    mtime: float
    model: str
    status: str
    instance: str = ""  # filled by find_by_sha256 only, which looks across instances


@dataclass(frozen=True)
class Upsert:
    path: str
    sha256: str
    size: int
    mtime: float
    model: str
    embedding: np.ndarray
    status: str = "ok"
    match_id: int | None = None
    score: float | None = None
    label: str | None = None
    match_path: str | None = None  # the match is another row of the same batch: match_id is set on commit


@dataclass(frozen=True)
class Touch:
    """Same content as stored: only size and mtime change (no new embedding)."""

    path: str
    size: int
    mtime: float


@dataclass(frozen=True)
class Rename:
    src: str
    dest: str


@dataclass(frozen=True)
class Delete:
    path: str


@dataclass(frozen=True)
class DeleteTree:
    directory: str


Op = Upsert | Touch | Rename | Delete | DeleteTree


@dataclass
class Applied:
    """What a committed batch did, for the similarity index: ids of upserted paths, ids of deleted rows."""

    ids: dict[str, int] = field(default_factory=dict)
    deleted: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class Changes:
    """Rows changed (by any instance) and rows deleted since a point in time, for the index sync."""

    ids: np.ndarray  # int64
    vectors: np.ndarray  # (n, dim) float32
    other_model: list[int]  # changed rows whose vector comes from another model: not indexed
    deleted: list[int]
    until: datetime


@dataclass(frozen=True)
class StoreStatus:
    backend: str
    location: str
    table: str
    dimension: int | None
    counts: list[tuple[str, str, int]]  # (status, model, rows)


class Store(ABC):
    """A table of image rows. Not thread-safe: each thread opens its own."""

    backend: str

    def __init__(self, table: str, instance: str) -> None:
        if not IDENTIFIER.match(table):
            raise StoreError(f"invalid table name {table!r}")
        self.table, self.instance = table, instance
        self.dimension: int | None = None

    @abstractmethod
    def location(self) -> str: ...

    @abstractmethod
    def table_dimension(self) -> int | None:
        """The vector dimension the table was created for, or None when it does not exist."""

    @abstractmethod
    def create_table(self, dimension: int) -> None: ...

    @abstractmethod
    def create_aux_tables(self) -> None:
        """Tables beside the main one (tombstones of deleted rows); idempotent."""

    @abstractmethod
    def get_many(self, paths: Sequence[str]) -> dict[str, StoredFile]: ...

    @abstractmethod
    def find_by_sha256(self, sha256: str) -> list[StoredFile]:
        """Rows of every instance whose file has exactly these bytes, oldest first, with their instance."""

    @abstractmethod
    def iter_files(self, directory: str) -> Iterator[StoredFile]:
        """Every row of this instance whose path lies below `directory`."""

    @abstractmethod
    def apply(self, ops: Sequence[Op]) -> Applied:
        """Run the ops in order, in one transaction: all of them land or none does."""

    @abstractmethod
    def iter_vectors(self, model: str, chunk: int = 10_000) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Every row of `model`, all instances, as (ids, vectors) chunks; for loading the index."""

    @abstractmethod
    def count_vectors(self, model: str) -> int:
        """How many rows of `model` there are, all instances (to size the index once before loading it)."""

    @abstractmethod
    def changes_since(self, since: datetime, model: str) -> Changes: ...

    @abstractmethod
    def now(self) -> datetime:
        """The store's clock (UTC), the one updated_at is written with."""

    @abstractmethod
    def paths_of(self, ids: Sequence[int]) -> dict[int, str]: ...

    @abstractmethod
    def vector_of(self, row_id: int) -> np.ndarray | None: ...

    @abstractmethod
    def prune_tombstones(self, before: datetime) -> None:
        """Forget deletions older than any index sync could still need."""

    @abstractmethod
    def get_vector(self, path: str) -> np.ndarray | None: ...

    @abstractmethod
    def status(self) -> StoreStatus: ...

    @abstractmethod
    def close(self) -> None: ...

    def reconnect(self) -> None:
        """Re-open a dropped connection (best effort: a failure shows on the next call)."""
        return None  # noqa: B027 - embedded stores have no connection to lose

    def init_schema(self, dimension: int) -> bool:
        """Create the table when missing; refuse one made for another dimension. True if created."""
        existing = self.table_dimension()
        self.create_aux_tables()
        if existing is None:
            self.create_table(dimension)
            self.dimension = dimension
            return True
        if existing != dimension:
            raise SchemaMismatch(
                f"table {self.table!r} in {self.location()} holds {existing}-dimensional vectors, but the "
                f"configured model makes {dimension}-dimensional ones. Vectors of different models cannot be "
                f"compared: set store.table to a new table for this model (or drop the old one).")
        self.dimension = existing
        return False

    def check_vector(self, op: Upsert) -> bytes:
        vec = np.asarray(op.embedding)
        if vec.dtype != np.float32 or vec.shape != (self.dimension,):
            raise StoreError(f"refusing a vector of shape {vec.shape} ({vec.dtype}) for {op.path!r}: the table "
                             f"holds float32 vectors of dimension {self.dimension}")
        return vec.astype("<f4", copy=False).tobytes()


class SQLStore(Store):
    """The SQL that MySQL and SQLite share; each backend fills in its dialect."""

    PARAM = "?"  # placeholder
    VECTOR_PARAM = "?"  # placeholder for a float32 little-endian vector
    PATH_MATCH = "path = ?"  # how one row is found by path
    NOW = "CURRENT_TIMESTAMP"
    UPSERT_TAIL = ""  # appended to the INSERT to make it an upsert
    DRIVER_ERRORS: tuple[type[BaseException], ...] = ()  # the driver's exceptions, reported as StoreError

    def __init__(self, table: str, instance: str) -> None:
        super().__init__(table, instance)
        self.t = self.quote(table)

    @abstractmethod
    def quote(self, name: str) -> str: ...

    @abstractmethod
    def _cursor(self) -> Any: ...

    @abstractmethod
    def _commit(self) -> None: ...

    @abstractmethod
    def _rollback(self) -> None: ...

    def _fetch(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        try:
            cur = self._cursor()
            try:
                cur.execute(sql, tuple(params))
                return list(cur.fetchall())
            finally:
                cur.close()
                self._commit()  # end the read's transaction, so the next read sees other writers' rows
        except self.DRIVER_ERRORS as exc:
            raise StoreError(f"{self.location()}: {exc}") from exc

    def get_many(self, paths: Sequence[str]) -> dict[str, StoredFile]:
        found: dict[str, StoredFile] = {}
        for where, params in self._where_paths(paths):
            rows = self._fetch(f"SELECT id, path, sha256, size, mtime, model, status FROM {self.t} "  # noqa: S608
                               f"WHERE {where}", params)
            found.update((r[1], StoredFile(*r)) for r in rows)
        return found

    def _where_paths(self, paths: Sequence[str], chunk: int = 500) -> Iterator[tuple[str, list[Any]]]:
        """WHERE clauses (and their parameters) for this instance's rows of `paths`, `chunk` paths each."""
        unique = list(dict.fromkeys(paths))
        for i in range(0, len(unique), chunk):
            part = unique[i:i + chunk]
            match = " OR ".join(f"({self.PATH_MATCH})" for _ in part)
            yield f"instance = {self.PARAM} AND ({match})", [self.instance, *part]

    def find_by_sha256(self, sha256: str) -> list[StoredFile]:
        rows = self._fetch(f"SELECT id, path, sha256, size, mtime, model, status, instance FROM {self.t} "  # noqa: S608
                           f"WHERE sha256 = {self.PARAM} ORDER BY id", [sha256])
        return [StoredFile(*r) for r in rows]

    def iter_files(self, directory: str) -> Iterator[StoredFile]:
        low, high = _prefix_range(directory)
        p = self.PARAM
        rows = self._fetch(f"SELECT id, path, sha256, size, mtime, model, status FROM {self.t} "  # noqa: S608
                           f"WHERE instance = {p} AND path >= {p} AND path < {p}", [self.instance, low, high])
        for r in rows:
            yield StoredFile(*r)

    def get_vector(self, path: str) -> np.ndarray | None:
        rows = self._fetch(f"SELECT embedding FROM {self.t} WHERE instance = {self.PARAM} "  # noqa: S608
                           f"AND {self.PATH_MATCH}", [self.instance, path])
        return _vectors([rows[0][0]])[0] if rows else None

    def vector_of(self, row_id: int) -> np.ndarray | None:
        rows = self._fetch(f"SELECT embedding FROM {self.t} WHERE id = {self.PARAM}", [row_id])  # noqa: S608
        return _vectors([rows[0][0]])[0] if rows else None

    def paths_of(self, ids: Sequence[int]) -> dict[int, str]:
        found: dict[int, str] = {}
        unique = list(dict.fromkeys(ids))
        for i in range(0, len(unique), 500):
            chunk = unique[i:i + 500]
            marks = ", ".join([self.PARAM] * len(chunk))
            found.update(self._fetch(f"SELECT id, path FROM {self.t} WHERE id IN ({marks})", chunk))  # noqa: S608
        return found

    def iter_vectors(self, model: str, chunk: int = 10_000) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        last = 0
        p = self.PARAM
        while True:  # keyset pagination: each page is one short query, however large the table
            rows = self._fetch(f"SELECT id, embedding FROM {self.t} WHERE model = {p} AND id > {p} "  # noqa: S608
                               f"ORDER BY id LIMIT {int(chunk)}", [model, last])
            if not rows:
                return
            last = rows[-1][0]
            yield np.array([r[0] for r in rows], dtype=np.int64), _vectors([r[1] for r in rows])

    def count_vectors(self, model: str) -> int:
        return int(self._fetch(f"SELECT COUNT(*) FROM {self.t} WHERE model = {self.PARAM}", [model])[0][0])  # noqa: S608

    def changes_since(self, since: datetime, model: str) -> Changes:
        until = self.now()
        p = self.PARAM
        rows = self._fetch(f"SELECT id, model, embedding FROM {self.t} WHERE updated_at >= {p}",  # noqa: S608
                           [self._timestamp(since)])
        ours = [r for r in rows if r[1] == model]
        deleted = self._fetch(f"SELECT id FROM {self.deleted_table} WHERE deleted_at >= {p}",  # noqa: S608
                              [self._timestamp(since)])
        return Changes(ids=np.array([r[0] for r in ours], dtype=np.int64),
                       vectors=_vectors([r[2] for r in ours]),
                       other_model=[r[0] for r in rows if r[1] != model],
                       deleted=[r[0] for r in deleted], until=until)

    def now(self) -> datetime:
        return self._parse_time(self._fetch(f"SELECT {self.NOW}")[0][0])  # noqa: S608

    def _timestamp(self, when: datetime) -> Any:
        return when

    def _parse_time(self, value: Any) -> datetime:
        assert isinstance(value, datetime)
        return value

    def prune_tombstones(self, before: datetime) -> None:
        cur = self._cursor()
        try:
            cur.execute(f"DELETE FROM {self.deleted_table} WHERE deleted_at < {self.PARAM}",  # noqa: S608
                        (self._timestamp(before),))
            self._commit()
        except self.DRIVER_ERRORS as exc:
            self._rollback()
            raise StoreError(f"{self.location()}: {exc}") from exc
        finally:
            cur.close()

    @property
    def deleted_table(self) -> str:
        """Tombstones: ids of deleted rows and when, so other instances' indexes can drop them."""
        return self.quote(self.table + "_deleted")

    def apply(self, ops: Sequence[Op]) -> Applied:
        applied = Applied()
        if not ops:
            return applied
        cur = self._cursor()
        try:
            for kind, run in groupby(ops, key=type):
                self._apply_run(cur, kind, list(run), applied)
            upserts = [o for o in ops if isinstance(o, Upsert)]
            if upserts:
                applied.ids = self._ids_of(cur, [o.path for o in upserts])
                for o in upserts:
                    if o.match_path is not None and o.match_path in applied.ids:
                        cur.execute(f"UPDATE {self.t} SET match_id = {self.PARAM} "  # noqa: S608
                                    f"WHERE instance = {self.PARAM} AND {self.PATH_MATCH}",
                                    (applied.ids[o.match_path], self.instance, o.path))
            self._commit()
        except BaseException as exc:
            self._rollback()
            if isinstance(exc, self.DRIVER_ERRORS):
                raise StoreError(f"{self.location()}: {exc}") from exc
            raise
        finally:
            cur.close()
        return applied

    def _ids_of(self, cur: Any, paths: list[str]) -> dict[str, int]:
        found: dict[str, int] = {}
        for where, params in self._where_paths(paths):
            cur.execute(f"SELECT path, id FROM {self.t} WHERE {where}", tuple(params))  # noqa: S608
            found.update(cur.fetchall())
        return found

    def _delete_where(self, cur: Any, condition: str, params: tuple[Any, ...], applied: Applied) -> None:
        """Delete rows, leaving a tombstone for each so other instances' indexes drop them too."""
        cur.execute(f"SELECT id FROM {self.t} WHERE {condition}", params)  # noqa: S608
        ids = [r[0] for r in cur.fetchall()]
        if not ids:
            return
        cur.executemany(f"INSERT INTO {self.deleted_table} (id, deleted_at) VALUES ({self.PARAM}, {self.NOW})",  # noqa: S608
                        [(i,) for i in ids])
        cur.execute(f"DELETE FROM {self.t} WHERE {condition}", params)  # noqa: S608
        applied.deleted.extend(ids)

    def _apply_run(self, cur: Any, kind: type, ops: list[Any], applied: Applied) -> None:
        p, inst, t, now, where = self.PARAM, self.instance, self.t, self.NOW, self.PATH_MATCH
        if kind is Upsert:
            values = ", ".join([p, p, p, p, p, p, self.VECTOR_PARAM, p, p, p, p])
            cur.executemany(
                f"INSERT INTO {t} ({', '.join(COLUMNS)}) VALUES ({values}){self.UPSERT_TAIL}",  # noqa: S608
                [(inst, o.path, o.sha256, o.size, o.mtime, o.model, self.check_vector(o), o.status, o.match_id,
                  o.score, o.label) for o in ops])
        elif kind is Touch:
            cur.executemany(f"UPDATE {t} SET size = {p}, mtime = {p}, updated_at = {now} "  # noqa: S608
                            f"WHERE instance = {p} AND {where}", [(o.size, o.mtime, inst, o.path) for o in ops])
        elif kind is Rename:
            for o in ops:  # one at a time: a rename may free the name the next one takes
                # Only when the source row is there: a batch retried after an ambiguous commit must not
                # delete the row it already renamed.
                cur.execute(f"SELECT id FROM {t} WHERE instance = {p} AND {where}", (inst, o.src))  # noqa: S608
                if not cur.fetchall():
                    continue
                self._delete_where(cur, f"instance = {p} AND {where}", (inst, o.dest), applied)
                cur.execute(f"UPDATE {t} SET path = {p}, updated_at = {now} "  # noqa: S608
                            f"WHERE instance = {p} AND {where}", (o.dest, inst, o.src))
        elif kind is Delete:
            for o in ops:
                self._delete_where(cur, f"instance = {p} AND {where}", (inst, o.path), applied)
        elif kind is DeleteTree:
            for o in ops:
                low, high = _prefix_range(o.directory)
                self._delete_where(cur, f"instance = {p} AND path >= {p} AND path < {p}", (inst, low, high),
                                   applied)

    def status(self) -> StoreStatus:
        dim = self.table_dimension()
        counts: list[tuple[str, str, int]] = []
        if dim is not None:
            rows = self._fetch(f"SELECT status, model, COUNT(*) FROM {self.t} "  # noqa: S608
                               "GROUP BY status, model ORDER BY status, model")
            counts = [(str(s), str(m), int(n)) for s, m, n in rows]
        return StoreStatus(self.backend, self.location(), self.table, dim, counts)


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

