"""The batch worker: queued changes in, one model call and one transaction per batch out.

The stages, each in a module of its own, in the order a batch goes through them:

    batcher    changes -> batches; files read, hashed and decoded ahead in a pool    (batcher.py)
    planner    changes + stored rows + loaded files -> plan (pure)                   (planner.py)
    vectors    one forward pass for what needs the model; copies reuse vectors       (here)
    judge      duplicate / prohibited verdicts                                       (judge.py)
    committer  one transaction, then the index, then files moved                     (committer.py)

This module runs them: the batcher in its own thread, the rest in the model thread (the caller of `run`).
It fetches what the pure stages need from the store, every call through one `Retrier` (a store outage
holds the batch and retries with backoff: nothing is lost or written twice). A bad file fails alone; an
unexpected error drops its batch (logged, counted; the files are still on disk and the next scan takes
them). When a batch deletes rows that other rows were duplicates of, those rows are judged again at once.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from dataclasses import replace

import numpy as np

from . import planner
from .batcher import Batcher, Formed, Loaded
from .changes import Change
from .committer import Committed, Committer
from .config import Config
from .dbindex import SimilarityIndex
from .embedder import Embedder
from .errors import FileRejected
from .files import PathFilter, name_problem
from .health import Health
from .instance import Peers
from .intake import Intake
from .judge import Evidence, Judge
from .logs import get_logger
from .metrics import Metrics
from .notify import Notifier
from .planner import Entry, Failure, Plan
from .publish import Echoes
from .retry import Retrier
from .store import SameBytes, Store, StoredFile
from .vocab import ChangeKind, Reason, Result, Source, Stage

log = get_logger(__name__)


class Worker:
    def __init__(self, config: Config, intake: Intake, store: Store, embedder: Embedder, paths: PathFilter,
                 metrics: Metrics, index: SimilarityIndex, judge: Judge, health: Health,
                 notifier: Notifier | None = None, echoes: Echoes | None = None) -> None:
        self.config, self.intake, self.store, self.embedder = config, intake, store, embedder
        self.paths, self.metrics, self.index, self.judge = paths, metrics, index, judge
        self.notifier = notifier or Notifier({})
        self.batcher = Batcher(config, intake.queue, embedder, paths, metrics)
        self.retry = Retrier(store, metrics, health, self.tick)
        self.committer = Committer(config, store, index, paths, intake, metrics, self.retry, embedder.identity,
                                   echoes, judge.copies)
        self.last_tick = time.monotonic()  # for health: the loop is alive
        self.peers = Peers(store)  # this host's other instances: their rows of a path are that same file

    def close(self) -> None:
        self.batcher.close()

    # --- the loop ---------------------------------------------------------------------------------

    def run(self, stop: threading.Event, inputs_done: threading.Event | None = None) -> None:
        """Process batches until `stop` (finish the batch in hand, then return) or, in burst mode, until
        `inputs_done` is set and the queue is empty. Batches taken but not processed when `stop` comes
        are dropped: their files are on disk, and the next start's scan takes them."""
        ready: queue.Queue[Formed | None] = queue.Queue(maxsize=1)  # one batch loading ahead of the model
        finished = threading.Event()

        def stopping() -> bool:
            return stop.is_set() or finished.is_set()

        feeder = threading.Thread(target=self.batcher.feed, args=(ready, stopping, inputs_done), name="batcher",
                                  daemon=True)
        feeder.start()
        try:
            while not stop.is_set():
                self.tick()
                try:
                    formed = ready.get(timeout=0.1)
                except queue.Empty:
                    continue
                if formed is None:
                    return
                self._process_guarded(*formed, stop)
        finally:
            finished.set()
            feeder.join()

    def tick(self) -> None:
        """The loop is alive: for /healthz, and systemd's watchdog (pinged from this loop, never from a
        thread of its own, so that a hung worker is restarted)."""
        self.last_tick = time.monotonic()
        self.notifier.heartbeat(f"watching {len(self.config.watch.paths)} roots, {len(self.index):,} images, "
                                f"queue {self.intake.queue.qsize()}")

    def _process_guarded(self, batch: list[Change], loads: list[Future[Loaded] | None],
                         stop: threading.Event) -> None:
        """The worker never dies of one batch: an unexpected error drops the batch (logged and counted);
        its files are still on disk and the next scan takes them again."""
        try:
            self.process(batch, loads, stop)
        except Exception:
            self.metrics.error(Stage.WORKER, Reason.UNEXPECTED)
            log.exception("batch_failed", files=len(batch), paths=[c.path for c in batch[:5]])

    # --- one batch --------------------------------------------------------------------------------

    def process(self, batch: list[Change], loads: Sequence[Future[Loaded] | None],
                stop: threading.Event | None) -> Committed | None:
        """One batch, start to finish. `loads`: its upserted files loading in the decode pool."""
        self.metrics.batch_size.observe(len(batch))
        self.metrics.batch_fill.observe(len(batch) / self.batcher.batch_size)
        self.metrics.in_flight.set(len(batch))
        try:
            committed = self._process(batch, loads, stop)
        finally:
            self.metrics.in_flight.set(0)
        if committed is not None:
            now = time.monotonic()
            for change in batch:
                self.metrics.latency.observe(now - change.seen_at)
            self._finished(committed, len(batch))
            self._repair(committed.applied.deleted, stop)
        return committed

    def _process(self, batch: list[Change], loads: Sequence[Future[Loaded] | None],
                 stop: threading.Event | None) -> Committed | None:
        involved = [p for c in batch for p in (c.path, c.dest) if p and name_problem(p) is None]
        rows = self.retry(lambda: self.store.get_many(involved), stop)
        if rows is None:
            return None  # stopping while the store is down: the next start's scan redoes this batch
        loaded = self._wait_for(batch, loads, rows)
        rejudged = [rows[c.path].sha256 for c in batch if c.kind == ChangeKind.REJUDGE and c.path in rows]
        shas = sorted({f.sha256 for f in loaded if f is not None and f.sha256} | set(rejudged))
        same_bytes = self.retry(lambda: self.store.find_by_sha256(shas), stop) if shas else {}
        if same_bytes is None:
            return None
        plan = planner.plan(batch, rows, loaded, same_bytes, self._gone(batch, same_bytes),
                            model=self.embedder.identity, instance=self.store.instance,
                            keep_deleted=self.config.store.on_delete == "keep", waiting=self.committer.gate.root_of)
        entries, failures = self._vectors(plan, same_bytes, stop)
        committed = self._judge_and_commit(plan, entries, failures, same_bytes, stop)
        if committed is not None and plan.follow_up:
            self.process([Change(ChangeKind.UPSERT, p) for p in plan.follow_up],
                          [self.batcher.submit(p) for p in plan.follow_up], stop)
        return committed

    def _wait_for(self, batch: list[Change], loads: Sequence[Future[Loaded] | None],
                  rows: Mapping[str, StoredFile]) -> list[Loaded | None]:
        """Each change's file as the decode pool read it; renames of unknown files are read now."""
        futures = list(loads)
        dests = {c.dest: _size_and_mtime(c.dest) for c in batch if c.kind == ChangeKind.MOVE}
        for i in planner.needs_loading(batch, rows, dests):
            futures[i] = self.batcher.submit(batch[i].dest)
        waiting = time.monotonic()  # the model thread holds a batch whose files may still be decoding
        with self.batcher.sizer.model_idle():
            loaded = [f.result() if f is not None else None for f in futures]
        self.metrics.pixel_wait.inc(time.monotonic() - waiting)
        done = [f for f in loaded if f is not None]
        self.metrics.stage_seconds.labels(Stage.READ).observe(sum(f.read_s for f in done))
        self.metrics.stage_seconds.labels(Stage.DECODE).observe(sum(f.decode_s for f in done))
        self.batcher.sizer.decoded([f.cpu_s for f in done])
        return loaded

    def _gone(self, batch: list[Change], same_bytes: Mapping[str, Sequence[SameBytes]]) -> frozenset[str]:
        """Where no file exists now: among the batch's paths and those of our rows under the roots whose
        bytes were seen in this batch (for the planner's rule on renames it was not told about)."""
        ours = [c.row.path for copies in same_bytes.values() for c in copies
                if c.row.instance == self.store.instance and self.paths.root_of(c.row.path)]
        return frozenset(p for p in {*ours, *(p for c in batch for p in (c.path, c.dest) if p)}
                         if not os.path.lexists(p))

    def _vectors(self, plan: Plan, same_bytes: Mapping[str, Sequence[SameBytes]],
                 stop: threading.Event | None) -> tuple[list[Entry], list[Failure]]:
        """Every entry with its vector: embedded (one forward pass), or taken from a stored row or an
        earlier entry with the same bytes. Entries the model fails on become failures."""
        failures: list[Failure] = []
        vectors = self._embed([e for e in plan.entries if e.pixels is not None], failures)
        stored = {c.row.id: c.vector for copies in same_bytes.values() for c in copies}
        stored.update(self._stored_vectors([e.same_as_row for e in plan.entries
                                            if e.same_as_row is not None and e.same_as_row not in stored], stop))
        entries = []
        for e in plan.entries:
            vector = (e.vector if e.vector is not None else vectors.get(e.key) if e.pixels is not None
                      else stored.get(e.same_as_row) if e.same_as_row is not None
                      else vectors.get(e.same_as_entry) if e.same_as_entry is not None else None)
            if vector is None:
                if not any(f.path == e.path for f in failures):
                    failures.append(Failure(e.path, FileRejected(Reason.EMBED_ERROR, "no vector for its bytes")))
                continue
            vectors[e.key] = vector
            entries.append(replace(e, vector=vector, pixels=None))
        return entries, failures

    def _stored_vectors(self, ids: Sequence[int], stop: threading.Event | None) -> dict[int, np.ndarray]:
        """Stored rows' vectors: from the index where it holds them, else from the store."""
        found = {i: v for i in ids if (v := self.index.get(i)) is not None}
        if missing := [i for i in ids if i not in found]:
            found.update(self.retry(lambda: self.store.vectors_of(missing), stop) or {})
        return found

    def _embed(self, pending: list[Entry], failures: list[Failure]) -> dict[int, np.ndarray]:
        """One forward pass for the whole batch; if it fails, one by one, so a bad image fails alone."""
        if not pending:
            return {}
        with self.metrics.stage_seconds.labels(Stage.EMBED).time():
            try:
                self.metrics.model_calls.inc()
                with self.batcher.sizer.model_running(len(pending)):
                    vectors = self.embedder.embed_images([e.pixels for e in pending])  # type: ignore[misc]
                return {e.key: v for e, v in zip(pending, vectors, strict=True)}
            except Exception:
                log.warning("batch_embed_failed", files=len(pending), action="retrying one by one", exc_info=True)
            found = {}
            for e in pending:
                try:
                    self.metrics.model_calls.inc()
                    found[e.key] = self.embedder.embed_images([e.pixels])[0]  # type: ignore[list-item]
                except Exception as exc:
                    failures.append(Failure(e.path, FileRejected(Reason.EMBED_ERROR, f"the model failed: {exc}")))
            return found

    def _judge_and_commit(self, plan: Plan, entries: list[Entry], failures: list[Failure],
                          same_bytes: Mapping[str, Sequence[SameBytes]],
                          stop: threading.Event | None) -> Committed | None:
        own = [e.own_id for e in entries if e.own_id is not None]
        copies = self.retry(lambda: self.store.dependents(own, everywhere=True), stop) if own else []
        if copies is None:
            return None
        copies_of: dict[int, set[int]] = {}
        for row in copies:
            copies_of.setdefault(row.match_id or 0, set()).add(row.id)
        same_file = self._same_file(entries, stop)
        if same_file is None:
            return None
        evidence = Evidence(same_bytes, plan.excluded, {k: frozenset(v) for k, v in copies_of.items()}, same_file)
        with self.metrics.stage_seconds.labels(Stage.CHECK).time():  # retried: the index may be the database's
            verdicts = self.retry(lambda: self.judge.judge(
                entries, evidence, lambda ids: self.retry(lambda: self.store.shas_of(ids), stop) or {},
                lambda ids: self._stored_vectors(ids, stop)), stop)
        if verdicts is None:
            return None
        for v in verdicts:
            if v.nearest is not None:
                self.metrics.best_match.observe(v.nearest)
        return self.committer.commit(plan, entries, verdicts, failures, stop)

    def _same_file(self, entries: list[Entry], stop: threading.Event | None) -> dict[str, frozenset[int]] | None:
        """The rows other instances of this host hold for the entries' paths: the same files (judge.py)."""
        peers = self.retry(self.peers.names, stop)
        if peers is None or not peers:
            return None if peers is None else {}
        found = self.retry(lambda: self.store.rows_at([e.path for e in entries if e.on_disk], peers), stop)
        return None if found is None else {p: frozenset(ids) for p, ids in found.items()}

    def _finished(self, committed: Committed, changes: int) -> None:
        self.metrics.last_commit.set_to_current_time()
        for result, n in committed.counts.items():
            if result != Result.FAILED:  # counted with its reason as each failure happened
                self.metrics.processed.labels(result).inc(n)
        log.info("batch_committed", changes=changes, **{str(k): v for k, v in committed.counts.items() if v})

    def _repair(self, deleted: Sequence[int], stop: threading.Event | None) -> None:
        """Rows of ours that were duplicates of a row this batch deleted are judged again now."""
        if not deleted:
            return
        orphans = self.retry(lambda: self.store.dependents(deleted), stop) or []
        if orphans:
            self.process([Change(ChangeKind.REJUDGE, r.path, source=Source.REPAIR) for r in orphans],
                         [None] * len(orphans), stop)

    # --- vectors from elsewhere (`clipwatch import`) -------------------------------------------------

    def import_entries(self, entries: Sequence[Entry], stop: threading.Event | None = None) -> Committed | None:
        """Judge and store vectors computed elsewhere (`clipwatch import`) like embedded ones. Of several
        entries for one path, the last counts."""
        latest = list({e.path: e for e in entries}.values())
        rows = self.retry(lambda: self.store.get_many([e.path for e in latest]), stop)
        same_bytes = self.retry(lambda: self.store.find_by_sha256([e.sha256 for e in latest if e.sha256]), stop)
        if rows is None or same_bytes is None:
            return None
        own = sorted((replace(e, own_id=rows[e.path].id if e.path in rows else None) for e in latest),
                     key=lambda e: (e.mtime, e.path))
        plan = Plan(ops=(), entries=tuple(own), excluded=frozenset(e.own_id for e in own if e.own_id is not None))
        committed = self._judge_and_commit(plan, own, [], same_bytes, stop)
        if committed is not None:
            self._finished(committed, len(own))
        return committed


def _size_and_mtime(path: str) -> tuple[int, float] | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime
