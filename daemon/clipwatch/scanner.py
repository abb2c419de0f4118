"""Reconcile a root with the store: queue what is new or changed, delete rows whose file is gone.

Cheap by design: a file whose size and mtime match its row (and whose row was made by the configured
model, and which has its file hashes) is not read at all; the worker hashes what is queued and embeds
only new content. Used at
start-up, by the periodic rescan, and by `clipwatch scan`.

Memory does not grow with the root: the walk is compared with the store CHUNK files at a time (one query
each), then the root's rows are streamed a page at a time and each row whose file is gone becomes a
delete. So a scan costs two `stat`s per file and a query per CHUNK files.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice

from .changes import Change
from .files import PathFilter
from .intake import Intake
from .logs import get_logger
from .metrics import Metrics
from .store import Store
from .vocab import ChangeKind, Reason, Source, Stage

log = get_logger(__name__)
CHUNK = 500  # files compared with the store per query


@dataclass
class ScanCounts:
    files: int = 0  # image files found
    queued: int = 0  # new or changed: sent to the worker
    gone: int = 0  # rows whose file no longer exists: sent as deletes
    repaired: int = 0  # verdicts whose matched row is gone: sent to be judged again
    stopped: bool = False


def reconcile(root: str, store: Store, paths: PathFilter, intake: Intake, model: str, metrics: Metrics,
              counts: ScanCounts | None = None, source: Source = Source.SCAN, settle: bool = True,
              incoming: bool = False) -> ScanCounts:
    """`settle`: a file modified within watch.settle_ms (or stamped in the future) waits until it holds
    still, since it may still be being written; a one-shot scan (no settle loop runs) takes it as it is.
    `incoming`: an incoming directory of a publish gate, whose every file is waiting to be published, so
    taken also when its row is current (unless it was refused and has not changed since)."""
    counts = counts or ScanCounts()
    if not os.path.isdir(root):  # unmounted, or removed: its rows wait for it to come back
        log.warning("root_missing", root=root, action="rows kept; checked again at the next rescan")
        metrics.error(Stage.WATCH, Reason.ROOT_MISSING)
        return counts
    found_before = counts.files
    for chunk in _chunks(_stats(paths, root), CHUNK):
        rows = store.get_many([path for path, _ in chunk])
        for path, st in chunk:
            counts.files += 1
            row = rows.get(path)
            current = (row is not None and row.size == st.st_size and row.mtime == st.st_mtime and row.model == model
                       and row.md5 is not None)  # a row stored before file hashes were kept is read once more
            if current and not incoming:
                continue
            if (row is None or incoming) and intake.refused_unchanged(path, st.st_size, st.st_mtime_ns):
                continue  # refused before, unchanged since: not tried again
            counts.queued += 1
            metrics.discovered.labels(source).inc()
            if settle and st.st_mtime > time.time() - intake.settle_s:
                intake.wait_for_settle(path, source=source)  # modified moments ago: may still be written
            elif not intake.put(Change(ChangeKind.UPSERT, path, source=source)):
                counts.stopped = True
                return counts
    if counts.files == found_before and store.has_rows_under(root):
        # An empty root with rows is far more often an unmounted share than a deliberate wipe (deletions
        # made while we watch arrive as events): keep the rows rather than delete them all.
        log.warning("root_empty", root=root, action="rows kept; delete files while the daemon runs, or remove "
                    "the rows yourself, if the directory is really empty")
        return counts
    for row in store.iter_rows_under(root):  # rows whose file the walk may not have seen
        if os.path.lexists(row.path) and paths.accepts(row.path):
            continue  # there (also when the walk could not see it: an unreadable directory): keep the row
        counts.gone += 1
        if not intake.put(Change(ChangeKind.DELETE, row.path, source=source)):
            counts.stopped = True
            return counts
    return counts


def repair_verdicts(store: Store, intake: Intake, counts: ScanCounts) -> None:
    """Rows of ours that are duplicates of a row that no longer exists (its deletion was not followed by
    a re-judgement: a crash, or another instance deleted it) are judged again."""
    for row in store.dangling():
        counts.repaired += 1
        if not intake.put(Change(ChangeKind.REJUDGE, row.path, source=Source.REPAIR)):
            counts.stopped = True
            return


def _stats(paths: PathFilter, root: str) -> Iterator[tuple[str, os.stat_result]]:
    for entry in paths.walk(root):
        try:
            yield entry.path, entry.stat(follow_symlinks=False)
        except OSError:
            continue


def _chunks(items: Iterator[tuple[str, os.stat_result]], size: int) -> Iterator[list[tuple[str, os.stat_result]]]:
    while chunk := list(islice(items, size)):
        yield chunk
