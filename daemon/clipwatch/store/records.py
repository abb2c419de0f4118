"""What goes into a store and what comes out of it: frozen rows, the operations of a batch, pages of changes.

A leaf of the store package: the worker, the planner and the CLI import these without importing a driver.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import numpy as np

from ..pdq import FileHashes
from ..vocab import Action, Decision, Deed, Signal, Status


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
    instance: str = ""
    match_id: int | None = None
    md5: str | None = None  # None: hashed before PDQ and MD5 were kept (the next scan adds them)
    pdq: bytes | None = None
    pdq_quality: int | None = None

    @property
    def hashes(self) -> FileHashes | None:
        return None if self.md5 is None else FileHashes(self.md5, self.pdq, self.pdq_quality)


@dataclass(frozen=True)
class SameBytes:
    """A stored row (any instance) whose file has given bytes, with its vector: an exact copy's evidence."""

    row: StoredFile
    vector: np.ndarray


@dataclass(frozen=True)
class FlaggedRow:
    """A row with its verdict and what it matched, for `clipwatch verdicts`, `dismiss` and `confirm`."""

    id: int
    instance: str
    path: str
    sha256: str
    status: Status
    match_id: int | None
    match_path: str | None
    match_sha256: str | None
    score: float | None
    label: str | None
    updated_at: datetime
    signal: Signal | None = None  # what decided a duplicate verdict
    pdq_distance: int | None = None  # PDQ bits between the two files, where both have a usable hash


@dataclass(frozen=True)
class ReviewQuery:
    """What the review queue shows: flagged rows, newest first, filtered; `before` is the (updated_at, id)
    of the last row of the previous page (keyset paging: as fast on page 1,000 as on page 1)."""

    status: Status | None = None
    label: str | None = None
    min_score: float | None = None
    max_score: float | None = None
    instance: str | None = None
    before: tuple[datetime, int] | None = None


@dataclass(frozen=True)
class ReviewItem:
    """A flagged row with what the review page shows of both files."""

    row: FlaggedRow
    size: int
    mtime: float
    match_size: int | None
    match_mtime: float | None
    match_instance: str | None


@dataclass(frozen=True)
class DecisionRecord:
    """One decision a person took about a verdict. Keyed by content: the flagged file's sha256 and the
    match's sha256 (duplicates) or the reference's label (prohibited)."""

    kind: Status
    sha256: str
    other: str
    decision: Decision
    decided_by: str
    score: float | None = None
    row_id: int | None = None
    path: str = ""
    match_path: str | None = None
    id: int = 0  # set when read back
    decided_at: datetime | None = None  # set when read back


@dataclass(frozen=True)
class PendingMove:
    """A journalled move of a judged file into the quarantine, committed with its batch and not yet done."""

    id: int
    src: str
    dest: str
    action: Action
    sha256: str


# --- the operations of a batch (Store.apply runs them in order, in one transaction) ---------------------


@dataclass(frozen=True)
class Upsert:
    path: str
    sha256: str
    size: int
    mtime: float
    model: str
    embedding: np.ndarray
    status: Status = Status.OK
    match_id: int | None = None
    score: float | None = None
    label: str | None = None
    match_path: str | None = None  # the match is another row of the same batch: match_id is set on commit
    hashes: FileHashes | None = None  # None: the file's bytes are not here (imported vectors)
    signal: Signal | None = None
    pdq_distance: int | None = None


@dataclass(frozen=True)
class Touch:
    """Same content as stored: only size and mtime change (no new embedding); `hashes` given where the row
    was stored without them."""

    path: str
    size: int
    mtime: float
    hashes: FileHashes | None = None


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


@dataclass(frozen=True)
class JournalMove:
    """Record that the file at `src` is to be moved to `dest` once this batch commits (the moves journal)."""

    src: str
    dest: str
    action: Action
    sha256: str


@dataclass(frozen=True)
class FinishMove:
    """The journalled move `id` is done (or will never be): forget it."""

    id: int


@dataclass(frozen=True)
class RecordDecision:
    decision: DecisionRecord


@dataclass(frozen=True)
class SetVerdict:
    """A row's (any instance's) verdict changes, and nothing else: a dismissed verdict cleared (`ok`), or a
    copy left by a dismissal pointed at its twin."""

    row_id: int
    status: Status = Status.OK
    match_id: int | None = None
    score: float | None = None
    label: str | None = None
    signal: Signal | None = None
    pdq_distance: int | None = None


@dataclass(frozen=True)
class ActionRecord:
    """One entry of the history: what was done to a row's verdict or file, by whom, and how to undo it.
    `dest`: where a quarantine or a release moved the file. `restore`: JSON of the verdicts a dismissal
    cleared (what an undo puts back). `undoes`: the entry an undo took back."""

    deed: Deed
    row_id: int | None
    path: str
    decided_by: str
    dest: str | None = None
    restore: str | None = None
    undoes: int | None = None
    id: int = 0
    instance: str = ""
    decided_at: datetime | None = None


@dataclass(frozen=True)
class RecordAction:
    """Add to the history."""

    action: ActionRecord


@dataclass(frozen=True)
class ForgetDecision:
    """Undo: remove the newest decision `decision` recorded about row `row_id`."""

    row_id: int
    decision: Decision


Op = (Upsert | Touch | Rename | Delete | DeleteTree | JournalMove | FinishMove | RecordDecision | SetVerdict
      | RecordAction | ForgetDecision)


@dataclass(frozen=True)
class Applied:
    """What a committed batch did: ids of upserted paths, ids of deleted rows, ids of journalled moves."""

    ids: dict[str, int] = field(default_factory=dict)
    deleted: list[int] = field(default_factory=list)
    moves: dict[str, int] = field(default_factory=dict)  # dest -> journal id
    actions: list[int] = field(default_factory=list)  # ids of the history entries added


@dataclass(frozen=True)
class ChangePage:
    """One page of rows changed (by any instance) since a point in time, for the index sync."""

    ids: np.ndarray  # int64, rows of the configured model
    vectors: np.ndarray  # (n, dim) float32
    other_model: list[int]  # changed rows whose vector comes from another model: not indexed
    deleted: list[int]
    hashes: list[tuple[int, str | None, int | None]] = field(default_factory=list)  # (id, pdq, quality), our model


@dataclass(frozen=True)
class StoreStatus:
    backend: str
    location: str
    table: str
    dimension: int | None
    counts: list[tuple[str, str, int]]  # (status, model, rows)


@dataclass(frozen=True)
class Registration:
    """Who runs as an instance: the registry row its daemon keeps (`<table>_instances`, instance.py)."""

    name: str
    host: str
    data_dir: str
    pid: int
    seen_s: float  # seconds since its daemon last said it was alive, by the store's clock
