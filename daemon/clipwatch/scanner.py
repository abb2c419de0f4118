"""Reconcile a root with the store: queue what is new or changed, delete rows whose file is gone.

Cheap by design: a file whose size and mtime match its row (and whose row was made by the configured
model) is not read at all. The worker hashes what is queued and embeds only new content. Used at
start-up, by the periodic rescan, and by `clipwatch scan`.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from .changes import Change, Source
from .files import PathFilter
from .intake import Intake
from .logs import get_logger
from .metrics import Metrics
from .store import Store

log = get_logger(__name__)


@dataclass
class ScanCounts:
    files: int = 0  # image files found
    queued: int = 0  # new or changed: sent to the worker
    gone: int = 0  # rows whose file no longer exists: sent as deletes
    stopped: bool = False


def reconcile(root: str, store: Store, paths: PathFilter, intake: Intake, model: str, metrics: Metrics,
              counts: ScanCounts | None = None, source: Source = "scan") -> ScanCounts:
    counts = counts or ScanCounts()
    if not os.path.isdir(root):  # unmounted, or removed: its rows wait for it to come back
        log.warning("root_missing", root=root, action="rows kept; checked again at the next rescan")
        metrics.errors.labels("watch", "root_missing").inc()
        return counts
    known = {row.path: row for row in store.iter_files(root)}
    recent = time.time() - intake.settle_s
    found = 0
    for entry in paths.walk(root):
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        counts.files += 1
        found += 1
        row = known.pop(entry.path, None)
        if row is not None and row.size == st.st_size and row.mtime == st.st_mtime and row.model == model:
            continue
        if row is None and intake.refused_unchanged(entry.path, st.st_size, st.st_mtime_ns):
            continue  # refused before, unchanged since: not tried again
        counts.queued += 1
        metrics.discovered.labels(source).inc()
        if st.st_mtime > recent:  # modified moments ago: may still be being written
            intake.wait_for_settle(entry.path, source=source)
        elif not intake.put(Change("upsert", entry.path, source=source)):
            counts.stopped = True
            return counts
    if found == 0 and known:
        # An empty root with rows is far more often an unmounted share than a deliberate wipe (deletions
        # made while we watch arrive as events): keep the rows rather than delete them all.
        log.warning("root_empty", root=root, rows=len(known), action="rows kept; delete files while the daemon "
                    "runs, or remove the rows yourself, if the directory is really empty")
        return counts
    for path in known:  # rows with no file found by the walk
        if os.path.lexists(path) and paths.accepts(path):
            continue  # there, but the walk could not see it (an unreadable directory): keep the row
        counts.gone += 1
        if not intake.put(Change("delete", path, source=source)):
            counts.stopped = True
            return counts
    return counts
