"""Reconcile a root with the store: queue what is new or changed, delete rows whose file is gone.

Cheap by design: a file whose size and mtime match its row (and whose row was made by the configured
model) is not read at all. The worker hashes what is queued and embeds only new content.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from .changes import Change
from .files import PathFilter
from .intake import Intake
from .metrics import Metrics
from .store import Store


@dataclass
class ScanCounts:
    files: int = 0  # image files found
    queued: int = 0  # new or changed: sent to the worker
    gone: int = 0  # rows whose file no longer exists: sent as deletes
    stopped: bool = False


def reconcile(root: str, store: Store, paths: PathFilter, intake: Intake, model: str, metrics: Metrics,
              counts: ScanCounts | None = None) -> ScanCounts:
    counts = counts or ScanCounts()
    known = {row.path: row for row in store.iter_files(root)}
    recent = time.time() - intake.settle_s
    for entry in paths.walk(root):
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        counts.files += 1
        row = known.pop(entry.path, None)
        if row is not None and row.size == st.st_size and row.mtime == st.st_mtime and row.model == model:
            continue
        counts.queued += 1
        metrics.discovered.labels("scan").inc()
        if st.st_mtime > recent:  # modified moments ago: may still be being written
            intake.wait_for_settle(entry.path, source="scan")
        elif not intake.put(Change("upsert", entry.path, source="scan")):
            counts.stopped = True
            return counts
    for path in known:  # rows with no file found by the walk
        if os.path.lexists(path) and paths.accepts(path):
            continue  # there, but the walk could not see it (an unreadable directory): keep the row
        counts.gone += 1
        if not intake.put(Change("delete", path, source="scan")):
            counts.stopped = True
            return counts
    return counts
