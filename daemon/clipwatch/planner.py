"""The planner: a batch of changes, the rows the store holds and what the files hold, in; frozen plan out.

A pure function: no model, no database, no file system. Everything it needs is handed to it (the rows of
the paths involved, each file's sha256 and pixels as the decode pool read them, the stored rows that have
the same bytes, which of those rows' files are gone), so it is tested by the dozen in milliseconds.

Changes are applied in the order they were observed, path by path:

- same bytes as the row at that path: keep (only size and mtime follow), unless the file is *waiting* in
  an incoming directory of a publish gate: then it is an entry again, its stored vector reused (judged
  now, and published or quarantined by the committer);
- same bytes as one of our rows whose file is gone: a move that inotify could not pair (the row follows);
- anything else: an *entry*, a file whose row is written with a vector and a verdict. An entry remembers
  its *own row* (the row its path had: its earlier version), follows its file through later renames in
  the batch, and is dropped when a later change replaces or deletes its file;
- a rename moves the row; a delete removes it (`store.on_delete`).

Entries come out oldest first (mtime, then path): that is the order they are judged in, so that among
copies judged together the oldest is the original. An entry's vector comes from the model (its pixels),
from a stored row with the same bytes (no model call), or from an earlier entry with the same bytes.
`excluded` names the rows this batch rewrites or deletes: no file may be matched against them.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from .batcher import Loaded
from .changes import Change
from .embedder import Prepared
from .errors import FileRejected
from .files import name_problem
from .pdq import FileHashes
from .store import Delete, DeleteTree, Op, Rename, SameBytes, StoredFile, Touch
from .vocab import ChangeKind, Reason, Result


@dataclass(frozen=True)
class Entry:
    """A file (or a stored row judged again) whose row is written with a vector and a verdict."""

    key: int  # unique in its batch: the position of the change that made it
    path: str  # where its row goes: the file's last name in the batch
    sha256: str
    size: int
    mtime: float
    model: str
    own_id: int | None = None  # the row this entry rewrites: the file's earlier version
    pixels: Prepared | None = None  # for the model
    same_as_row: int | None = None  # take this stored row's vector (an exact copy, or the row judged again)
    same_as_entry: int | None = None  # take the vector of this earlier entry (an exact copy in the batch)
    vector: np.ndarray | None = None  # given (imports), or filled in once embedded
    rejudge: bool = False  # a stored row judged again: its file is not touched
    on_disk: bool = True  # False for imported vectors whose file is not on this machine
    hashes: FileHashes | None = None  # MD5 and PDQ of its bytes (None: imported without them)


@dataclass(frozen=True)
class Failure:
    path: str
    error: FileRejected


@dataclass(frozen=True)
class Plan:
    ops: tuple[Op, ...]  # renames, deletes and touches of stored rows, in observed order
    entries: tuple[Entry, ...]  # oldest first (mtime, then path): the judging order
    failures: tuple[Failure, ...] = ()
    excluded: frozenset[int] = frozenset()  # rows rewritten or deleted by this batch
    counts: Mapping[Result, int] = field(default_factory=dict)
    follow_up: tuple[str, ...] = ()  # files this batch could not place: ingest them in a batch of their own


@dataclass
class _Slot:
    """A path as the batch goes: our row there now, and the entry that will write it."""

    row: StoredFile | None = None
    entry: int | None = None


def needs_loading(changes: Sequence[Change], rows: Mapping[str, StoredFile],
                  dest_stats: Mapping[str, tuple[int, float] | None]) -> list[int]:
    """Positions of the renames whose destination must be read (the batcher reads only upserted files
    ahead): those whose source has no stored row or was removed or replaced earlier in the batch (the
    destination may be a new file to us), and those whose destination's (size, mtime) in `dest_stats`
    differs from the row's (the file changed before it was renamed: its bytes decide)."""
    touched: set[str] = set()
    trees: list[str] = []
    need = []
    for i, change in enumerate(changes):
        row = rows.get(change.path)
        if change.kind == ChangeKind.MOVE and (row is None or change.path in touched
                                               or any(change.path.startswith(t) for t in trees)
                                               or dest_stats.get(change.dest) != (row.size, row.mtime)):
            need.append(i)
        if change.kind in (ChangeKind.DELETE, ChangeKind.MOVE):
            touched.add(change.path)
        elif change.kind == ChangeKind.DELETE_TREE:
            trees.append(change.path.rstrip(os.sep) + os.sep)
    return need


def plan(changes: Sequence[Change], rows: Mapping[str, StoredFile], loaded: Sequence[Loaded | None],
         same_bytes: Mapping[str, Sequence[SameBytes]], gone: frozenset[str], *, model: str, instance: str,
         keep_deleted: bool = False, waiting: Callable[[str], object] = lambda path: False) -> Plan:
    """`rows`: this instance's rows of the paths involved. `loaded`: per change, the file at its path (its
    destination, for a rename in `needs_loading`). `same_bytes`: stored rows by sha256, oldest first.
    `gone`: the paths, among those of the batch's changes and of our rows under the roots with bytes seen
    in the batch, where no file exists now. `waiting`: whether a path is in an incoming directory."""
    return _Planner(rows, same_bytes, gone, model, instance, keep_deleted, changes, waiting).run(changes, loaded)


class _Planner:
    def __init__(self, rows: Mapping[str, StoredFile], same_bytes: Mapping[str, Sequence[SameBytes]],
                 gone: frozenset[str], model: str, instance: str, keep_deleted: bool,
                 changes: Sequence[Change], waiting: Callable[[str], object]) -> None:
        self.waiting = waiting
        self.slots = {path: _Slot(row) for path, row in rows.items()}
        self.where = {row.id: path for path, row in rows.items()}  # row id -> its path as the batch goes
        self.renamed_from: dict[str, list[int]] = {}  # path -> positions of the renames away from it
        for i, c in enumerate(changes):
            if c.kind == ChangeKind.MOVE:
                self.renamed_from.setdefault(c.path, []).append(i)
        self.same_bytes, self.gone, self.model, self.instance = same_bytes, gone, model, instance
        self.keep_deleted = keep_deleted
        self.entries: dict[int, Entry] = {}
        self.decode_errors: dict[int, FileRejected] = {}
        self.ops: list[Op | None] = []  # None: a delete taken back (its file turned up under another name)
        self.vacated: dict[str, tuple[int, StoredFile]] = {}  # path -> (its Delete's position, the row)
        self.failures: list[Failure] = []
        self.counts: Counter[Result] = Counter()
        self.deleted: set[int] = set()
        self.follow_up: list[str] = []

    def run(self, changes: Sequence[Change], loaded: Sequence[Loaded | None]) -> Plan:
        for key, (change, file) in enumerate(zip(changes, loaded, strict=True)):
            if change.kind == ChangeKind.UPSERT:
                self._upsert(key, change.path, _given(file, change))
            elif change.kind == ChangeKind.MOVE:
                self._move(key, change, file)
            elif change.kind == ChangeKind.DELETE:
                self._delete(change.path)
            elif change.kind == ChangeKind.DELETE_TREE:
                self._delete_tree(change.path)
            elif change.kind == ChangeKind.REJUDGE:
                self._rejudge(key, change.path)
        return self._finish()

    def _slot(self, path: str) -> _Slot:
        return self.slots.setdefault(path, _Slot())

    def _drop(self, slot: _Slot) -> None:
        """The entry at this path is superseded (a newer version of the file, or no file any more)."""
        if slot.entry is not None:
            del self.entries[slot.entry]
            self.decode_errors.pop(slot.entry, None)
            slot.entry = None

    def _upsert(self, key: int, path: str, file: Loaded) -> None:
        slot = self._slot(path)
        self._drop(slot)
        if file.error is not None:
            if file.error.reason == Reason.NOT_FOUND:  # renamed or deleted since: its own event follows
                self.counts[Result.VANISHED] += 1
            else:
                self.failures.append(Failure(path, file.error))
            return
        row = slot.row
        if row is not None and row.sha256 == file.sha256 and row.model == self.model:
            if self.waiting(path):  # stored, but not yet published: judged again on its stored vector
                self.entries[key] = Entry(key, path, file.sha256, file.size, file.mtime, self.model, own_id=row.id,
                                          same_as_row=row.id, hashes=file.hashes or row.hashes)
                slot.entry = key
                return
            # same content: keep the vector; a row stored before hashes were kept gets them (no model call)
            self.ops.append(Touch(path, file.size, file.mtime, file.hashes if row.md5 is None else None))
            self.counts[Result.UNCHANGED] += 1
            return
        moved_from = self._moved_from(key, path, file) if row is None else None
        if moved_from is not None:  # a rename whose events were not paired: the row follows its bytes
            self.ops += [Rename(moved_from.path, path), Touch(path, file.size, file.mtime)]
            self.counts[Result.MOVED] += 1
            self.slots[moved_from.path] = _Slot()
            self.slots[path] = _Slot(replace(moved_from, path=path))
            self.where[moved_from.id] = path
            return
        self.entries[key] = Entry(key, path, file.sha256, file.size, file.mtime, self.model,
                                  own_id=row.id if row else None, pixels=file.pixels, hashes=file.hashes)
        if file.decode_error is not None:
            self.decode_errors[key] = file.decode_error
        slot.entry = key

    def _moved_from(self, key: int, path: str, file: Loaded) -> StoredFile | None:
        """One of our rows with these bytes, size and mtime (a rename keeps them; a copy gets a new mtime),
        at its place as the batch goes, whose file there is gone and which no later rename of the batch
        accounts for: inotify pairs a rename only when both directories are watched, and moves made while
        the daemon was down produce no event at all. A row this batch deleted comes back: its file was not
        deleted, it was renamed. Returned with the path it is at now."""
        for copy in self.same_bytes.get(file.sha256, ()):
            row = copy.row
            here = self.where.get(row.id, row.path)
            if (row.instance != self.instance or row.model != self.model or here == path or here not in self.gone
                    or (row.size, row.mtime) != (file.size, file.mtime)
                    or any(later > key for later in self.renamed_from.get(here, ()))):
                continue
            slot = self.slots.get(here)
            if slot is None or (slot.row is not None and slot.row.id == row.id):
                return replace(row, path=here)
            if here in self.vacated and self.vacated[here][1].id == row.id:
                self._undelete(here)
                return replace(row, path=here)
        return None

    def _undelete(self, path: str) -> None:
        position, row = self.vacated.pop(path)
        self.ops[position] = None
        self.counts[Result.DELETED] -= 1
        self.deleted.discard(row.id)

    def _move(self, key: int, change: Change, file: Loaded | None) -> None:
        src_path, dest_path = change.path, change.dest
        src = self._slot(src_path)
        if src.row is None and src.entry is None:  # nothing known under the old name: a new file
            if file is None:  # not read with the batch: a batch of its own reads it (never the case today)
                self.follow_up.append(dest_path)
            else:
                self._upsert(key, dest_path, file)
            return
        problem = name_problem(dest_path)
        if problem is not None:  # renamed to a name the store cannot hold: gone, as far as rows go
            self._delete(src_path)
            self.failures.append(Failure(dest_path, problem))
            return
        dest = self._slot(dest_path)
        self._drop(dest)  # overwritten by the rename
        self.vacated.pop(dest_path, None)  # a row deleted there stays deleted: the name is taken now
        row = dest.row
        if src.row is not None:
            self.ops.append(Rename(src_path, dest_path))
            self.counts[Result.MOVED] += 1
            if dest.row is not None:
                self.deleted.add(dest.row.id)  # the rename replaces it
            row = replace(src.row, path=dest_path)
        entry = src.entry
        self.slots[src_path], self.slots[dest_path] = _Slot(), _Slot(row, entry)
        if row is not None:
            self.where[row.id] = dest_path
        if entry is not None:  # written, then renamed: the row goes under the final name
            self.entries[entry] = replace(self.entries[entry], path=dest_path, own_id=row.id if row else None)
        elif file is not None and row is not None and (file.sha256, self.model) == (row.sha256, row.model):
            self.ops.append(Touch(dest_path, file.size, file.mtime))  # read to be sure; the same bytes after all
        elif file is not None:  # the file was read under its new name: it changed before the rename
            self._upsert(key, dest_path, file)

    def _delete(self, path: str) -> None:
        slot = self._slot(path)
        self._drop(slot)
        if slot.row is not None and not self.keep_deleted:
            self.vacated[path] = (len(self.ops), slot.row)
            self.ops.append(Delete(path))
            self.counts[Result.DELETED] += 1
            self.deleted.add(slot.row.id)
            slot.row = None

    def _delete_tree(self, directory: str) -> None:
        prefix = directory.rstrip(os.sep) + os.sep
        for path in [p for p in self.vacated if p.startswith(prefix)]:
            del self.vacated[path]  # the directory's delete runs later: a row taken back would be deleted
        for path, slot in self.slots.items():
            if path.startswith(prefix):
                self._drop(slot)
                if slot.row is not None and not self.keep_deleted:
                    self.deleted.add(slot.row.id)
                    slot.row = None
        if not self.keep_deleted:
            self.ops.append(DeleteTree(directory))

    def _rejudge(self, key: int, path: str) -> None:
        slot = self._slot(path)
        row = slot.row
        if row is None or slot.entry is not None or row.model != self.model:
            return  # gone, rewritten by this batch anyway, or made by another model (re-embedded by a scan)
        self.entries[key] = Entry(key, path, row.sha256, row.size, row.mtime, row.model, own_id=row.id,
                                  same_as_row=row.id, rejudge=True, hashes=row.hashes)
        slot.entry = key

    def _finish(self) -> Plan:
        """Pick each entry's vector source, oldest entry first."""
        entries = sorted(self.entries.values(), key=lambda e: (e.mtime, e.path))
        excluded = frozenset({e.own_id for e in entries if e.own_id is not None} | self.deleted)
        first_with: dict[str, int] = {}  # sha256 -> the entry of this batch that is embedded for it
        chosen: list[Entry] = []
        for entry in entries:
            if not entry.rejudge and entry.same_as_row is None:
                stored = next((c.row.id for c in self.same_bytes.get(entry.sha256, ())
                               if c.row.model == entry.model and c.row.id not in excluded), None)
                if stored is not None:
                    entry = replace(entry, same_as_row=stored, pixels=None)
                elif entry.sha256 in first_with:
                    entry = replace(entry, same_as_entry=first_with[entry.sha256], pixels=None)
                elif entry.key in self.decode_errors:
                    self.failures.append(Failure(entry.path, self.decode_errors[entry.key]))
                    continue
                else:
                    first_with[entry.sha256] = entry.key
            chosen.append(entry)
        return Plan(tuple(op for op in self.ops if op is not None), tuple(chosen), tuple(self.failures), excluded,
                    {k: v for k, v in self.counts.items() if v}, tuple(self.follow_up))


def _given(file: Loaded | None, change: Change) -> Loaded:
    if file is None:
        raise ValueError(f"the planner needs the loaded file for {change!r}")
    return file
