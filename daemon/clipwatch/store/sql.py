"""What clipwatch reads from a SQL store: rows, vectors, changes for the index, verdicts, decisions, moves.

Every query whose answer could grow with the table is paginated (keyset, PAGE rows per query).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

import numpy as np

from ..errors import StoreError
from ..vocab import Action, Decision, Deed, Signal, Status
from .base import PAGE
from .records import (
    ActionRecord,
    ChangePage,
    DecisionRecord,
    FlaggedRow,
    PendingMove,
    ReviewItem,
    ReviewQuery,
    SameBytes,
    StoredFile,
    StoreStatus,
)
from .registry import Registry
from .sqlbase import DECISION_COLUMNS, _prefix_range, _vectors

FILE_COLUMNS = "id, path, sha256, size, mtime, model, status, instance, match_id, md5, pdq, pdq_quality"  # _stored
FLAGGED = ("SELECT a.id, a.instance, a.path, a.sha256, a.status, a.match_id, b.path, b.sha256, a.score, a.label, "
           "a.updated_at, a.{signal}, a.pdq_distance FROM {t} a LEFT JOIN {t} b ON b.id = a.match_id")
ACTION_COLUMNS = "id, instance, deed, row_id, path, dest, restore, undoes, decided_by, decided_at"
REVIEW = FLAGGED.replace(" FROM", ", a.size, a.mtime, b.size, b.mtime, b.instance FROM", 1)


class SQLStore(Registry):
    """The reads both backends share."""

    # --- rows -------------------------------------------------------------------------------------

    def get_many(self, paths: Sequence[str]) -> dict[str, StoredFile]:
        found: dict[str, StoredFile] = {}
        for where, params in self._where_paths(paths):
            rows = self._fetch(f"SELECT {FILE_COLUMNS} FROM {self.t} WHERE {where}", params)
            found.update((r[1], _stored(r)) for r in rows)
        return found

    def iter_rows_under(self, directory: str) -> Iterator[StoredFile]:
        low, high = _prefix_range(directory)
        p, last = self.PARAM, 0
        while True:  # keyset pagination by id: each page is one short query, however large the root
            rows = self._fetch(f"SELECT {FILE_COLUMNS} FROM {self.t} WHERE instance = {p} AND path >= {p} "
                               f"AND path < {p} AND id > {p} ORDER BY id LIMIT {PAGE}",
                               [self.instance, low, high, last])
            yield from (_stored(r) for r in rows)
            if len(rows) < PAGE:
                return
            last = rows[-1][0]

    def has_rows_under(self, directory: str) -> bool:
        low, high = _prefix_range(directory)
        p = self.PARAM
        return bool(self._fetch(f"SELECT 1 FROM {self.t} WHERE instance = {p} AND path >= {p} AND path < {p} "
                                "LIMIT 1", [self.instance, low, high]))

    def find_by_sha256(self, shas: Sequence[str]) -> dict[str, list[SameBytes]]:
        found: dict[str, list[SameBytes]] = {}
        rows = self._by_chunks(f"SELECT {FILE_COLUMNS}, embedding FROM {self.t} "
                               "WHERE sha256 IN ({marks}) ORDER BY id", [s for s in shas if s])
        for r in sorted(rows, key=lambda r: r[0]):
            found.setdefault(r[2], []).append(SameBytes(_stored(r[:-1]), _vectors([r[-1]])[0]))
        return found

    def pdq_by_sha256(self, shas: Sequence[str], min_quality: int) -> dict[str, bytes]:
        rows = self._by_chunks(f"SELECT sha256, pdq FROM {self.t} WHERE pdq_quality >= {self.PARAM} "
                               "AND sha256 IN ({marks})", shas, extra=[min_quality])
        return {str(s): bytes.fromhex(h) for s, h in rows}

    def vectors_of(self, ids: Sequence[int]) -> dict[int, np.ndarray]:
        rows = self._by_chunks(f"SELECT id, embedding FROM {self.t} WHERE id IN ({{marks}})", ids)
        return {int(r[0]): v for r, v in zip(rows, _vectors([r[1] for r in rows]), strict=True)}

    def paths_of(self, ids: Sequence[int]) -> dict[int, str]:
        return {int(i): str(p) for i, p in
                self._by_chunks(f"SELECT id, path FROM {self.t} WHERE id IN ({{marks}})", ids)}

    def shas_of(self, ids: Sequence[int]) -> dict[int, str]:
        return {int(i): str(s) for i, s in
                self._by_chunks(f"SELECT id, sha256 FROM {self.t} WHERE id IN ({{marks}})", ids)}

    # --- the similarity index's feed ----------------------------------------------------------------

    def iter_vectors(self, model: str, chunk: int = 10_000) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        last = 0
        p = self.PARAM
        while True:  # keyset pagination: each page is one short query, however large the table
            rows = self._fetch(f"SELECT id, embedding FROM {self.t} WHERE model = {p} AND id > {p} "
                               f"ORDER BY id LIMIT {int(chunk)}", [model, last])
            if not rows:
                return
            last = rows[-1][0]
            yield np.array([r[0] for r in rows], dtype=np.int64), _vectors([r[1] for r in rows])

    def count_vectors(self, model: str) -> int:
        return int(self._fetch(f"SELECT COUNT(*) FROM {self.t} WHERE model = {self.PARAM}", [model])[0][0])

    def iter_hashes(self, model: str, chunk: int = 50_000) -> Iterator[list[tuple[int, str, int]]]:
        last, p = 0, self.PARAM
        while True:
            rows = self._fetch(f"SELECT id, pdq, pdq_quality FROM {self.t} WHERE model = {p} AND id > {p} "
                               f"AND pdq IS NOT NULL ORDER BY model, id LIMIT {int(chunk)}", [model, last])
            if not rows:
                return
            last = rows[-1][0]
            yield [(int(i), str(h), int(q)) for i, h, q in rows]

    def iter_bank_keys(self, chunk: int = 20_000) -> Iterator[list[tuple[int, str, str | None, str | None,
                                                                         int | None]]]:
        last, p = 0, self.PARAM
        while True:
            rows = self._fetch(f"SELECT id, sha256, md5, pdq, pdq_quality FROM {self.t} WHERE id > {p} AND "
                               f"instance = {p} AND status <> {p} ORDER BY id LIMIT {int(chunk)}",
                               [last, self.instance, Status.PROHIBITED])
            if not rows:
                return
            last = rows[-1][0]
            yield [(int(i), str(sha), md5, pdq, None if q is None else int(q)) for i, sha, md5, pdq, q in rows]

    def iter_changes(self, since: datetime, model: str, page: int = PAGE, vectors: bool = True) -> Iterator[
            ChangePage]:
        embedding = "embedding" if vectors else "NULL"
        changed = self._pages_since(f"SELECT id, model, {embedding}, pdq, pdq_quality, updated_at FROM {self.t}",
                                    "updated_at", since, page)
        for rows in changed:
            ours = [r for r in rows if r[1] == model]
            yield ChangePage(ids=np.array([r[0] for r in ours if vectors], dtype=np.int64),
                             vectors=_vectors([r[2] for r in ours if vectors]),
                             other_model=[r[0] for r in rows if r[1] != model], deleted=[],
                             hashes=[(int(r[0]), r[3], r[4]) for r in ours])
        for rows in self._pages_since(f"SELECT id, deleted_at FROM {self.deleted_table}", "deleted_at",
                                      since, page):
            yield ChangePage(ids=np.zeros(0, np.int64), vectors=np.zeros((0, 0), np.float32), other_model=[],
                             deleted=[r[0] for r in rows])

    def _pages_since(self, select: str, column: str, since: datetime, page: int) -> Iterator[list[tuple[Any, ...]]]:
        """Rows of `select` whose `column` >= since, in (column, id) order, `page` at a time (keyset).
        `column` is the last one selected, id the first."""
        p = self.PARAM
        last_time, last_id = self._timestamp(since), -1
        while True:
            rows = self._fetch(f"{select} WHERE {column} >= {p} AND ({column} > {p} OR id > {p}) "
                               f"ORDER BY {column}, id LIMIT {int(page)}", [last_time, last_time, last_id])
            if rows:
                yield rows
            if len(rows) < page:
                return
            last_time, last_id = rows[-1][-1], rows[-1][0]

    def now(self) -> datetime:
        return self._parse_time(self._fetch(f"SELECT {self.NOW}")[0][0])

    def _timestamp(self, when: datetime) -> Any:
        return when

    def _parse_time(self, value: Any) -> datetime:
        if not isinstance(value, datetime):
            raise StoreError(f"{self.location()}: expected a timestamp, got {value!r}")
        return value

    def prune_tombstones(self, before: datetime) -> None:
        with self._transaction() as cur:
            cur.execute(f"DELETE FROM {self.deleted_table} WHERE deleted_at < {self.PARAM}",
                        (self._timestamp(before),))

    # --- verdicts, decisions, moves ---------------------------------------------------------------

    def dependents(self, ids: Sequence[int], everywhere: bool = False) -> list[StoredFile]:
        ours = "" if everywhere else f"instance = {self.PARAM} AND "
        rows = self._by_chunks(f"SELECT {FILE_COLUMNS} FROM {self.t} WHERE {ours}match_id IN ({{marks}})",
                               ids, extra=[] if everywhere else [self.instance])
        return [_stored(r) for r in rows]

    def dangling(self, limit: int = PAGE) -> list[StoredFile]:
        rows = self._fetch(f"SELECT {', '.join('a.' + c for c in FILE_COLUMNS.split(', '))} FROM {self.t} a "
                           f"WHERE a.instance = {self.PARAM} AND a.match_id IS NOT NULL AND NOT EXISTS "
                           f"(SELECT 1 FROM {self.t} b WHERE b.id = a.match_id) LIMIT {int(limit)}", [self.instance])
        return [_stored(r) for r in rows]

    def flagged(self, status: Status | None = None, page: int = PAGE) -> Iterator[FlaggedRow]:
        before = None
        while True:
            items = self.review_queue(ReviewQuery(status=status, before=before), page)
            yield from (item.row for item in items)
            if len(items) < page:
                return
            before = (items[-1].row.updated_at, items[-1].row.id)

    def review_queue(self, query: ReviewQuery, limit: int) -> list[ReviewItem]:
        """One query per status, each walking the (status, updated_at) index backwards, merged: an
        `IN (...)` over both would make SQLite sort every flagged row for each page."""
        p = self.PARAM
        where, params = [f"a.status = {p}"], list[Any]()
        for clause, value in ((f"a.label = {p}", query.label), (f"a.score >= {p}", query.min_score),
                              (f"a.score <= {p}", query.max_score), (f"a.instance = {p}", query.instance)):
            if value is not None:
                where.append(clause)
                params.append(value)
        if query.before is not None:
            when = self._timestamp(query.before[0])
            where.append(f"(a.updated_at < {p} OR (a.updated_at = {p} AND a.id < {p}))")
            params += [when, when, query.before[1]]
        rows: list[tuple[Any, ...]] = []
        for status in [query.status] if query.status else [Status.DUPLICATE, Status.PROHIBITED]:
            rows += self._fetch(f"{REVIEW.format(t=self.t, signal=self.signal)} WHERE {' AND '.join(where)} "
                                f"ORDER BY a.updated_at DESC, a.id DESC LIMIT {int(limit)}", [status, *params])
        items = [ReviewItem(self._flagged_row(r), int(r[13]), float(r[14]), None if r[15] is None else int(r[15]),
                            r[16], r[17]) for r in rows]
        return sorted(items, key=lambda i: (i.row.updated_at, i.row.id), reverse=True)[:limit]

    def rows_by_id(self, ids: Sequence[int]) -> dict[int, FlaggedRow]:
        rows = self._by_chunks(FLAGGED.format(t=self.t, signal=self.signal) + " WHERE a.id IN ({marks})", ids)
        return {int(r[0]): self._flagged_row(r) for r in rows}

    def _flagged_row(self, r: tuple[Any, ...]) -> FlaggedRow:
        return FlaggedRow(int(r[0]), r[1], r[2], r[3], Status(r[4]), r[5], r[6], r[7], r[8], r[9],
                          self._parse_time(r[10]), Signal(r[11]) if r[11] else None, r[12])

    def flagged_with(self, kind: Status, sha256: str, other: str) -> list[int]:
        p = self.PARAM
        if kind == Status.PROHIBITED:
            rows = self._fetch(f"SELECT id FROM {self.t} WHERE status = {p} AND sha256 = {p} AND label = {p}",
                               [kind, sha256, other])
        else:
            pair = (f"SELECT a.id FROM {self.t} a JOIN {self.t} b ON b.id = a.match_id "
                    f"WHERE a.status = {p} AND a.sha256 = {p} AND b.sha256 = {p}")
            rows = self._fetch(pair, [kind, sha256, other])  # either way round; an OR of both scans the table
            rows += self._fetch(pair, [kind, other, sha256]) if other != sha256 else []
        return [int(r[0]) for r in rows]

    def decisions(self) -> list[DecisionRecord]:
        rows = self._fetch(f"SELECT {', '.join(DECISION_COLUMNS)}, id, decided_at FROM {self.decisions_table} "
                           "ORDER BY id")
        return [DecisionRecord(kind=Status(r[0]), sha256=r[1], other=r[2], decision=Decision(r[3]), decided_by=r[4],
                               score=r[5], row_id=r[6], path=r[7], match_path=r[8], id=int(r[9]),
                               decided_at=self._parse_time(r[10])) for r in rows]

    def decisions_version(self) -> tuple[int, int]:
        count, largest = self._fetch(f"SELECT COUNT(*), MAX(id) FROM {self.decisions_table}")[0]
        return int(count), int(largest or 0)

    def history(self, before: int | None, limit: int) -> list[ActionRecord]:
        after = f"WHERE id < {self.PARAM} " if before is not None else ""
        rows = self._fetch(f"SELECT {ACTION_COLUMNS} FROM {self.actions_table} {after}ORDER BY id DESC "
                           f"LIMIT {int(limit)}", [before] if before is not None else [])
        return [self._action(r) for r in rows]

    def actions_by_id(self, ids: Sequence[int]) -> dict[int, ActionRecord]:
        rows = self._by_chunks(f"SELECT {ACTION_COLUMNS} FROM {self.actions_table} WHERE id IN ({{marks}})", ids)
        return {int(r[0]): self._action(r) for r in rows}

    def last_quarantine(self, row_id: int) -> ActionRecord | None:
        rows = self._fetch(f"SELECT {ACTION_COLUMNS} FROM {self.actions_table} WHERE row_id = {self.PARAM} AND "
                           f"deed = {self.PARAM} ORDER BY id DESC LIMIT 1", [row_id, Deed.QUARANTINED])
        return self._action(rows[0]) if rows else None

    def _action(self, r: tuple[Any, ...]) -> ActionRecord:
        return ActionRecord(id=int(r[0]), instance=r[1], deed=Deed(r[2]), row_id=None if r[3] is None else int(r[3]),
                            path=r[4], dest=r[5], restore=r[6], undoes=None if r[7] is None else int(r[7]),
                            decided_by=r[8], decided_at=self._parse_time(r[9]))

    def pending_moves(self) -> list[PendingMove]:
        rows = self._fetch(f"SELECT id, src, dest, action, sha256 FROM {self.moves_table} "
                           f"WHERE instance = {self.PARAM} ORDER BY id", [self.instance])
        return [PendingMove(int(r[0]), r[1], r[2], Action(r[3]), r[4]) for r in rows]

    def status(self) -> StoreStatus:
        dim = self.table_dimension()
        counts: list[tuple[str, str, int]] = []
        if dim is not None:
            rows = self._fetch(f"SELECT status, model, COUNT(*) FROM {self.t} "
                               "GROUP BY status, model ORDER BY status, model")
            counts = [(str(s), str(m), int(n)) for s, m, n in rows]
        return StoreStatus(self.backend, self.location(), self.table, dim, counts)


def _stored(r: Sequence[Any]) -> StoredFile:
    """A row of FILE_COLUMNS."""
    return StoredFile(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], md5=r[9],
                      pdq=None if r[10] is None else bytes.fromhex(r[10]),
                      pdq_quality=None if r[11] is None else int(r[11]))
