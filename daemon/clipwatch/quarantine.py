"""Moving a file out of the watched tree into a quarantine directory, keeping its path below its root
(and, with a publish gate, a file that passed from incoming into the publish directory: publish.py).

A judged file is moved only after its batch committed, and the move is journalled in the same transaction
(`<table>_moves`: source, destination, sha256). `complete` does or finishes one journalled move and says
how it ended; it is the same code at run time and when the journal is replayed at start after a crash:

- the file is at the source, nothing at the destination: move it (`moved`);
- the destination holds it already (a move done before a crash; a hard link made but the source not yet
  unlinked): finish (`already_moved`);
- the source holds other bytes now (a new upload took the name) or nothing: the move will never happen
  (`changed`, `vanished`);
- the move fails (permissions, disk full, a foreign file at the destination): `failed`, nothing moved.

A move never replaces a file at the destination: it is a hard link then an unlink (both names are the same
file in between), or, across file systems, a copy under a hidden temporary name in the destination's
directory, linked into place, then the source unlinked. A file is never lost and never left in two places
once `complete` returns.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
from enum import StrEnum

from .files import PathFilter
from .logs import get_logger
from .store import Delete, FinishMove, Op, PendingMove, Rename, Store, Upsert
from .vocab import Action

log = get_logger(__name__)

NO_HARD_LINKS = (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EMLINK)


class Outcome(StrEnum):
    MOVED = "moved"
    ALREADY_MOVED = "already_moved"
    CHANGED = "changed"
    VANISHED = "vanished"
    FAILED = "failed"


def reserve(path: str, paths: PathFilter, quarantine_dir: str, taken: set[str]) -> str:
    """A free name for `path` in quarantine_dir: its path below its root, with a numeric suffix when that
    is taken on disk or by `taken` (names reserved earlier in the same batch; the new one is added).
    Creates the directories. Raises OSError if they cannot be made."""
    root = paths.root_of(path)
    relative = os.path.relpath(path, root) if root else os.path.basename(path)
    dest = os.path.join(quarantine_dir, relative)
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    stem, ext = os.path.splitext(dest)
    n = 0
    while os.path.lexists(dest) or dest in taken:
        n += 1
        dest = f"{stem}.{n}{ext}"
    taken.add(dest)
    return dest


def move(src: str, dest: str) -> None:
    """Move without ever replacing `dest` (FileExistsError if it exists). Raises OSError, leaving the file
    at `src` only."""
    try:
        os.link(src, dest, follow_symlinks=False)
    except OSError as exc:
        if exc.errno == errno.EXDEV:
            _copy_into_place(src, dest)
        elif exc.errno in NO_HARD_LINKS:  # a file system without hard links: check, then rename
            if os.path.lexists(dest):
                raise FileExistsError(errno.EEXIST, "the destination exists", dest) from None
            os.rename(src, dest)
            return
        else:
            raise
    try:
        os.unlink(src)
    except OSError:
        os.unlink(dest)  # the source stays (a read-only directory, say): never leave the file in two places
        raise


def partial_name(dest: str) -> str:
    """Where a copy across file systems is written before it is linked into place (hidden: never ingested)."""
    return os.path.join(os.path.dirname(dest), f".{os.path.basename(dest)}.clipwatch-partial")


def _copy_into_place(src: str, dest: str) -> None:
    partial = partial_name(dest)
    try:
        with open(src, "rb") as r, open(partial, "wb") as w:
            shutil.copyfileobj(r, w, 1 << 20)
            w.flush()
            os.fsync(w.fileno())
        shutil.copystat(src, partial)
        os.link(partial, dest)
    finally:
        if os.path.lexists(partial):
            os.unlink(partial)


def complete(pending: PendingMove) -> tuple[Outcome, str]:
    """Do or finish one journalled move; returns how it ended and, when it failed, why."""
    src, dest = pending.src, pending.dest
    try:
        if os.path.lexists(partial_name(dest)):
            os.unlink(partial_name(dest))  # a copy across file systems cut short: the source is still whole
        if os.path.lexists(dest) and os.path.lexists(src):
            if not (_same_file(src, dest) or _sha256(dest) == pending.sha256 == _sha256(src)):
                return Outcome.FAILED, f"{dest!r} already holds another file"
            os.unlink(src)  # linked (or copied) but not yet unlinked when the daemon stopped
    except OSError as exc:
        return _undone(dest, src, exc)
    if os.path.lexists(dest):
        return Outcome.ALREADY_MOVED, ""
    if not os.path.lexists(src):
        return Outcome.VANISHED, ""
    if _sha256(src) != pending.sha256:
        return Outcome.CHANGED, ""
    try:
        move(src, dest)
    except OSError as exc:
        return Outcome.FAILED, f"{exc.strerror or exc}"
    return Outcome.MOVED, ""


def _undone(dest: str, src: str, exc: OSError) -> tuple[Outcome, str]:
    """Finishing failed with the file still at `src`: remove a second name at `dest` (same file) if any."""
    if os.path.lexists(src) and _same_file(src, dest):
        try:
            os.unlink(dest)
        except OSError:
            pass  # both names stay; the journal entry stays too, and the next start tries again
    return Outcome.FAILED, f"{exc.strerror or exc}"


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _sha256(path: str) -> str | None:
    try:
        with open(path, "rb", opener=lambda p, flags: os.open(p, flags | os.O_NOFOLLOW | os.O_NONBLOCK)) as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except OSError:
        return None


def settle(pending: PendingMove, outcome: Outcome, row: Upsert | None = None) -> list[Op]:
    """The store operations that go with a journalled move's outcome, the journal entry's end included.

    `row`: for a rejected file whose move failed, the row to store in its place (flagged where it is);
    without it (when the journal is replayed at start) the file gets its row from the next scan."""
    ops: list[Op] = []
    follows = pending.action in (Action.QUARANTINE, Action.PUBLISH)  # the file's row was written at dest
    if outcome == Outcome.FAILED and follows:
        ops.append(Rename(pending.dest, pending.src))  # the row goes back with the file, its verdict kept
    elif outcome == Outcome.FAILED and row is not None:
        ops.append(row)
    elif outcome in (Outcome.CHANGED, Outcome.VANISHED) and follows:
        ops.append(Delete(pending.dest))  # its bytes are nowhere any more: a new file at src has its own event
    return [*ops, FinishMove(pending.id)]


def recover(store: Store) -> int:
    """Replay the moves journal after a crash: every committed move is done, or undone. Returns how many."""
    pending = store.pending_moves()
    for move_ in pending:
        outcome, why = complete(move_)
        store.apply(settle(move_, outcome))
        log.info("quarantine_move_recovered", src=move_.src, dest=move_.dest, action=move_.action,
                 outcome=outcome, error=why or None)
    return len(pending)
