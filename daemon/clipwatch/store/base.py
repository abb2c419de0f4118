"""The store interface: what the daemon and the CLI ask of a table of image rows.

One row per (instance, path). The worker turns a batch of file changes into a list of operations
(`records.Op`) and hands them to `Store.apply`, which runs them in order in one transaction. Beside the
table live three more: tombstones of deleted rows (`<table>_deleted`, for other instances' indexes),
decisions people took about verdicts (`<table>_decisions`, shared by every instance) and the journal of
file moves still to be done (`<table>_moves`, per instance). Every failure of the database reaches the
caller as `StoreError`, and nothing else.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime

import numpy as np

from ..config import IDENTIFIER
from ..errors import SchemaMismatch, StoreError
from ..vocab import Status
from .records import (
    ActionRecord,
    Applied,
    ChangePage,
    DecisionRecord,
    FlaggedRow,
    Op,
    PendingMove,
    Registration,
    ReviewItem,
    ReviewQuery,
    SameBytes,
    StoredFile,
    StoreStatus,
    Upsert,
)

PAGE = 1000  # rows per query wherever a result could grow with the table


class Store(ABC):
    """A table of image rows. Not thread-safe: each thread opens its own."""

    backend: str

    def __init__(self, table: str, instance: str) -> None:
        if not IDENTIFIER.match(table):
            raise StoreError(f"invalid table name {table!r}")
        self.table, self.instance = table, instance
        self.dimension: int | None = None
        self.vector_index_m = 0  # > 0: `create_table` gives the table a vector index with this M (dbindex.py)

    # --- connection and schema --------------------------------------------------------------------

    @abstractmethod
    def location(self) -> str: ...

    @abstractmethod
    def table_dimension(self) -> int | None:
        """The vector dimension the table was created for, or None when it does not exist."""

    @abstractmethod
    def create_table(self, dimension: int) -> None: ...

    @abstractmethod
    def create_aux_tables(self) -> None:
        """The tables beside the main one (tombstones, decisions, moves journal); idempotent."""

    @abstractmethod
    def instances(self) -> dict[str, int]:
        """Rows per instance name, every instance sharing the table ({} before the table exists)."""

    # --- the instance registry (registry.py; instance.py decides with it) ---------------------------

    @abstractmethod
    def registered(self) -> dict[str, Registration]:
        """Every instance a daemon claimed: its host, data directory, pid and age."""

    @abstractmethod
    def claim(self, host: str, data_dir: str, pid: int, allow: Callable[[Registration], bool]) -> Registration | None:
        """Claim this instance for this daemon; the standing registration when `allow` refuses to take it."""

    @abstractmethod
    def beat(self, host: str, data_dir: str, pid: int) -> bool:
        """Renew the claim; False when another daemon holds it now."""

    @abstractmethod
    def release(self, host: str, data_dir: str, pid: int) -> None:
        """Give the claim up at a clean stop (another daemon may take the name at once)."""

    @abstractmethod
    def instance_names(self) -> list[str]: ...

    @abstractmethod
    def holds_rows_under(self, instance: str, directory: str) -> bool: ...

    @abstractmethod
    def rows_at(self, paths: Sequence[str], instances: Sequence[str]) -> dict[str, list[int]]:
        """Ids of the rows these instances hold for these paths, by path."""

    @abstractmethod
    def close(self) -> None: ...

    def reconnect(self) -> None:  # noqa: B027 - a store with nothing to re-open keeps this
        """Re-open a dropped connection (best effort: a failure shows on the next call)."""

    @abstractmethod
    def status(self) -> StoreStatus: ...

    def init_schema(self, dimension: int) -> bool:
        """Create the tables when missing; refuse a table made for another dimension. True if created."""
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

    # --- the database's own similarity search (index.where = "database", dbindex.py) ---------------

    def vector_search_missing(self) -> str | None:
        """None when this server answers nearest-neighbour queries from a vector index; else why it cannot."""
        return f"{self.backend} has no vector index"

    def has_vector_index(self) -> bool:
        return False

    def add_vector_index(self, m: int) -> None:
        raise StoreError(f"{self.location()}: {self.vector_search_missing()}")

    def nearest(self, model: str, queries: np.ndarray, k: int, exclude: frozenset[int],
                ef_search: int) -> list[list[tuple[int, float]]]:
        """For each query (a unit vector), the k rows of `model` nearest to it by the server's vector index,
        leaving out `exclude`: (id, cosine similarity), best first."""
        raise StoreError(f"{self.location()}: {self.vector_search_missing()}")

    # --- rows -------------------------------------------------------------------------------------

    @abstractmethod
    def apply(self, ops: Sequence[Op]) -> Applied:
        """Run the ops in order, in one transaction: all of them land or none does."""

    @abstractmethod
    def get_many(self, paths: Sequence[str]) -> dict[str, StoredFile]:
        """This instance's rows of these paths."""

    @abstractmethod
    def iter_rows_under(self, directory: str) -> Iterator[StoredFile]:
        """This instance's rows below `directory`, a page at a time (memory does not grow with the table)."""

    @abstractmethod
    def has_rows_under(self, directory: str) -> bool: ...

    @abstractmethod
    def find_by_sha256(self, shas: Sequence[str]) -> dict[str, list[SameBytes]]:
        """Rows of every instance whose file has exactly these bytes, oldest first, with their vectors."""

    @abstractmethod
    def pdq_by_sha256(self, shas: Sequence[str], min_quality: int) -> dict[str, bytes]:
        """A stored PDQ hash of at least `min_quality` for each of these sha256 that has one (calibration)."""

    @abstractmethod
    def vectors_of(self, ids: Sequence[int]) -> dict[int, np.ndarray]: ...

    @abstractmethod
    def paths_of(self, ids: Sequence[int]) -> dict[int, str]: ...

    @abstractmethod
    def shas_of(self, ids: Sequence[int]) -> dict[int, str]: ...

    # --- the similarity index's feed ----------------------------------------------------------------

    @abstractmethod
    def iter_vectors(self, model: str, chunk: int = 10_000) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Every row of `model`, all instances, as (ids, vectors) chunks; for loading the index."""

    @abstractmethod
    def count_vectors(self, model: str) -> int:
        """How many rows of `model` there are, all instances (to size the index once before loading it)."""

    @abstractmethod
    def iter_hashes(self, model: str, chunk: int = 50_000) -> Iterator[list[tuple[int, str, int]]]:
        """The PDQ hash of every row of `model`, all instances, as chunks of (id, hex, quality); for loading
        the PDQ index."""

    @abstractmethod
    def iter_bank_keys(self, chunk: int = 20_000) -> Iterator[list[tuple[int, str, str | None, str | None,
                                                                         int | None]]]:
        """This instance's rows not already prohibited, any model, as chunks of (id, sha256, md5, pdq hex,
        quality): what a hash list is checked against (retro.py)."""

    @abstractmethod
    def iter_changes(self, since: datetime, model: str, page: int = PAGE, vectors: bool = True) -> Iterator[
            ChangePage]:
        """Rows changed and rows deleted (any instance) since `since`, `page` rows per query. Without
        `vectors`, only the changed rows' hashes (the PDQ index's feed when the vectors stay in the database)."""

    @abstractmethod
    def now(self) -> datetime:
        """The store's clock (UTC), the one updated_at is written with."""

    @abstractmethod
    def prune_tombstones(self, before: datetime) -> None:
        """Forget deletions older than any index sync could still need."""

    # --- verdicts, decisions, moves ---------------------------------------------------------------

    @abstractmethod
    def dependents(self, ids: Sequence[int], everywhere: bool = False) -> list[StoredFile]:
        """This instance's rows (every instance's, with `everywhere`) that are duplicates of these rows."""

    @abstractmethod
    def dangling(self, limit: int = PAGE) -> list[StoredFile]:
        """This instance's rows whose `match_id` names a row that no longer exists (at most `limit`)."""

    @abstractmethod
    def flagged(self, status: Status | None = None, page: int = PAGE) -> Iterator[FlaggedRow]:
        """Rows of every instance judged duplicate or prohibited (or only `status`), newest first."""

    @abstractmethod
    def review_queue(self, query: ReviewQuery, limit: int) -> list[ReviewItem]:
        """A page of the review queue: flagged rows of every instance, newest first, as `query` filters."""

    @abstractmethod
    def rows_by_id(self, ids: Sequence[int]) -> dict[int, FlaggedRow]:
        """These rows (any instance), with what they matched."""

    @abstractmethod
    def flagged_with(self, kind: Status, sha256: str, other: str) -> list[int]:
        """Rows (any instance) flagged for this pair: duplicates between files with bytes `sha256` and
        `other` (either way round), or prohibited with bytes `sha256` and label `other`."""

    @abstractmethod
    def decisions(self) -> list[DecisionRecord]:
        """Every decision, oldest first (a later decision about the same pair overrules an earlier one)."""

    @abstractmethod
    def decisions_version(self) -> tuple[int, int]:
        """(count, largest id) of the decisions table: cheap to ask whether there is anything new."""

    @abstractmethod
    def history(self, before: int | None, limit: int) -> list[ActionRecord]:
        """The history of actions, newest first; `before`: the id of the last entry of the previous page."""

    @abstractmethod
    def actions_by_id(self, ids: Sequence[int]) -> dict[int, ActionRecord]: ...

    @abstractmethod
    def last_quarantine(self, row_id: int) -> ActionRecord | None:
        """The newest quarantine of this row (where its file came from), if one was recorded."""

    @abstractmethod
    def pending_moves(self) -> list[PendingMove]:
        """This instance's journalled moves that were committed but not finished (after a crash)."""

