"""Keeping the similarity index in step with what other instances write to the shared table.

Every `index.sync_interval_s` the sync reads the rows changed since the last round (any instance:
`updated_at`) and the tombstones of deleted rows, and applies them to the index. Each round re-reads
a safety window of SAFETY_S, because a row's `updated_at` is set when its statement runs but it becomes
visible only when its transaction commits a moment later; applying a row twice is harmless.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta

from .errors import StoreError
from .index import VectorIndex
from .logs import get_logger
from .metrics import Metrics
from .references import References
from .store import Store

log = get_logger(__name__)
SAFETY_S = 10.0
TOMBSTONES_KEPT = timedelta(days=1)


def load_index(store: Store, model: str, dimension: int, approximate_above: int = 0,
               nprobe: int = 32) -> tuple[VectorIndex, datetime]:
    """Every stored vector of `model`, all instances, streamed page by page into a matrix sized once.
    Returns the index and the time to sync from."""
    started = store.now()
    index = VectorIndex(dimension, approximate_above=approximate_above, nprobe=nprobe)
    index.reserve(store.count_vectors(model))
    for ids, vectors in store.iter_vectors(model):
        index.upsert(ids, vectors)
    return index, started - timedelta(seconds=SAFETY_S)


class IndexSync:
    def __init__(self, store: Store, index: VectorIndex, model: str, since: datetime, interval_s: float,
                 references: References, refresh_s: float, metrics: Metrics) -> None:
        self.store, self.index, self.model, self.since = store, index, model, since
        self.interval_s, self.references, self.refresh_s, self.metrics = interval_s, references, refresh_s, metrics
        self._next_refresh = time.monotonic() + refresh_s
        self._next_prune = time.monotonic()

    def sync_once(self) -> int:
        """Apply one round of changes; returns how many rows changed in the index."""
        changes = self.store.changes_since(self.since, self.model)
        if len(changes.ids):
            self.index.upsert(changes.ids, changes.vectors)
        self.index.remove(changes.other_model + changes.deleted)
        self.since = changes.until - timedelta(seconds=SAFETY_S)
        self.metrics.index_size.set(len(self.index))
        if time.monotonic() >= self._next_prune:
            self.store.prune_tombstones(changes.until - TOMBSTONES_KEPT)
            self._next_prune = time.monotonic() + 3600
        return len(changes.ids) + len(changes.deleted)

    def run(self, stop: threading.Event) -> None:
        while not stop.wait(self.interval_s):
            try:
                self.sync_once()
            except StoreError as exc:
                log.warning("index_sync_failed", error=str(exc), retry_in_s=self.interval_s)
                self.store.reconnect()
            if time.monotonic() >= self._next_refresh:
                self._next_refresh = time.monotonic() + self.refresh_s
                try:
                    if self.references.refresh():
                        self.metrics.references.set(len(self.references))
                except Exception:
                    log.exception("references_refresh_failed")
