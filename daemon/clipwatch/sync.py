"""Keeping the similarity index in step with what other instances write to the shared table.

Every `index.sync_interval_s` the sync reads the rows changed since the last round (any instance:
`updated_at`) and the tombstones of deleted rows, a page of PAGE rows per query (after a long outage the
backlog streams through, it is never read whole), and applies them to the index. Each round re-reads a
safety window of SAFETY_S, because a row's `updated_at` is set when its statement runs but it becomes
visible only when its transaction commits a moment later; applying a row twice is harmless. The same
round re-reads the decisions table when it changed, and the prohibited references now and then.

With the search in the database (`index.where = "database"`, dbindex.py) there are no rows to follow: the
round only re-reads the index's row count (every RECOUNT_S: `index_size`), the decisions and references.

The daemon's sync also renews its claim on the instance name every `instance.BEAT_S` (`beat`). If the
registry names another daemon now (this one was silent for longer than `instance.STALE_S` and another took
the name over), it logs `instance_taken_over`, counts it and calls `on_lost`: the daemon stops (exit 2)
rather than run as one instance twice.

The thread survives any error: it logs it, counts it, reports it to `Health`, re-opens the connection and
tries again next round. `/healthz` names a store it cannot reach, and a sync that has not succeeded for
several intervals.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta

from .config import IndexConfig
from .dbindex import DatabaseIndex, SimilarityIndex, Where
from .decisions import Decisions
from .errors import StoreError
from .health import INDEX_SYNC, Health
from .index import VectorIndex
from .instance import BEAT_S
from .logs import get_logger
from .metrics import Metrics
from .pdqindex import PerceptualIndex
from .references import References
from .store import PAGE, Store
from .vocab import Reason, Stage

log = get_logger(__name__)
SAFETY_S = 10.0
TOMBSTONES_KEPT = timedelta(days=1)
RECOUNT_S = 30.0  # a COUNT(*) over millions of rows is not free


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


def open_index(store: Store, config: IndexConfig, where: Where, model: str, dimension: int) -> tuple[
        SimilarityIndex, datetime]:
    """The similarity index `dbindex.init_schema` chose: the database's (nothing to load, nothing to sync), or
    every vector loaded into memory. Returns it and the time to sync from."""
    if where == "database":
        index = DatabaseIndex(store, model, dimension, config.ef_search)
        index.recount(store)
        return index, datetime.min
    return load_index(store, model, dimension, config.approximate_above, config.nprobe)


class IndexSync:
    def __init__(self, store: Store, index: SimilarityIndex, model: str, since: datetime, interval_s: float,
                 references: References, refresh_s: float, metrics: Metrics, health: Health,
                 decisions: Decisions, page: int = PAGE, copies: PerceptualIndex | None = None,
                 beat: Callable[[Store], bool] | None = None, on_lost: Callable[[], None] | None = None) -> None:
        self.store, self.index, self.model, self.since = store, index, model, since
        self.copies = copies
        self.interval_s, self.references, self.refresh_s, self.metrics = interval_s, references, refresh_s, metrics
        self.health, self.decisions, self.page = health, decisions, page
        self._next_refresh = time.monotonic() + refresh_s
        self._next_prune = time.monotonic()
        self._next_recount = time.monotonic() + RECOUNT_S  # `open_index` has just counted
        self.beat, self.on_lost, self.lost_claim = beat, on_lost, False
        self._next_beat = time.monotonic()

    def sync_once(self) -> int:
        """Apply one round of changes; returns how many rows changed in the index."""
        self._renew_claim()
        until = self.store.now()
        changed = 0
        in_database = isinstance(self.index, DatabaseIndex)
        if in_database and time.monotonic() >= self._next_recount:
            self.index.recount(self.store)  # type: ignore[union-attr]
            self._next_recount = time.monotonic() + RECOUNT_S
        if not in_database or self.copies is not None:  # the database's vector index needs no rows followed
            for page in self.store.iter_changes(self.since, self.model, self.page, vectors=not in_database):
                if len(page.ids):
                    self.index.upsert(page.ids, page.vectors)
                if not in_database:
                    self.index.remove(page.other_model + page.deleted)
                if self.copies is not None:
                    self.copies.upsert_hex(page.hashes)
                    self.copies.remove(page.other_model + page.deleted)
                changed += (len(page.hashes) if in_database else len(page.ids)) + len(page.deleted)
            self.since = until - timedelta(seconds=SAFETY_S)
        self.metrics.index_size.set(len(self.index))
        self.decisions.refresh(self.store)
        if time.monotonic() >= self._next_prune:
            self.store.prune_tombstones(until - TOMBSTONES_KEPT)
            self._next_prune = time.monotonic() + 3600
        return changed

    def _renew_claim(self) -> None:
        if self.beat is None or self.lost_claim or time.monotonic() < self._next_beat:
            return
        if self.beat(self.store):
            self._next_beat = time.monotonic() + BEAT_S
            return
        self.lost_claim = True
        self.metrics.error(Stage.SYNC, Reason.INSTANCE_TAKEN)
        log.error("instance_taken_over", instance=self.store.instance,
                  action="stopping: another daemon runs as this instance now (clipwatch db status names it)")
        if self.on_lost is not None:
            self.on_lost()

    def run(self, stop: threading.Event) -> None:
        self.health.sync_started()
        while not stop.wait(self.interval_s):
            self.round()

    def round(self) -> None:
        """One round; never raises."""
        try:
            self.sync_once()
        except Exception as exc:  # nothing ends the sync: the failure is reported and tried again
            error = f"{type(exc).__name__}: {exc}" if not isinstance(exc, StoreError) else str(exc)
            self.health.sync_failed(error)
            if isinstance(exc, StoreError):  # the store did not answer (anything else is a stale sync only)
                self.health.store_failed(INDEX_SYNC, error)
            self.metrics.error(Stage.SYNC, Reason.SYNC_ERROR)
            log.warning("index_sync_failed", error=error, retry_in_s=self.interval_s,
                        exc_info=not isinstance(exc, StoreError))
            self.store.reconnect()
        else:
            self.health.sync_ok()
        if time.monotonic() >= self._next_refresh:
            self._next_refresh = time.monotonic() + self.refresh_s
            try:
                if self.references.refresh():
                    self.metrics.references.set(len(self.references))
            except Exception:
                log.exception("references_refresh_failed")
