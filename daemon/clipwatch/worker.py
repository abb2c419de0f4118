"""The batch worker: queued changes in, one model call and one transaction per batch out.

A batch is up to `model.batch_size` changes, or fewer when `model.max_wait_ms` passes after the first
one arrived. Two threads share the work, so the model never waits for pixels while files are queued:

- the feeder takes changes off the queue into batches and hands each file to the decode pool
  (`model.decode_workers` threads) the moment it is taken: read once, sha256, pixels (`load`);
- the model thread (the caller of `run`) takes the next formed batch and goes through these steps:

1. plan: changes become row operations, in the order they were observed (a write followed by a rename
   lands under the final name). Each file is read once: its sha256 and its pixels come from the same
   bytes. Same bytes as the row at that path: nothing to embed. Same bytes as a row whose file is gone:
   a move. Same bytes as a row elsewhere: an exact duplicate that reuses the stored vector. (Pixels are
   decoded ahead for every file, also those that turn out not to need them: the decoding runs beside
   the model, and planning first would stall it.)
2. embed: every image that still needs a vector, in one forward pass.
3. judge: duplicate and prohibited verdicts (`checker.py`), then the configured action (flag,
   quarantine, reject).
4. write: all row operations in one transaction; then the similarity index follows.

A bad file fails alone; a store outage is retried with capped backoff, holding the batch, so nothing
is lost or written twice. `import_vectors` runs steps 3 and 4 for vectors that come from outside.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import numpy as np

from .changes import Change
from .checker import Checker, Earlier, Verdict
from .config import Config
from .embedder import Embedder, Prepared, cpu_count
from .errors import FileRejected, StoreError
from .files import PathFilter, check_name, read_file
from .index import VectorIndex
from .intake import Intake
from .logs import get_logger
from .metrics import Metrics
from .notify import Notifier
from .quarantine import quarantine_file
from .store import Applied, Delete, DeleteTree, Op, Rename, Store, StoredFile, Touch, Upsert

log = get_logger(__name__)
T = TypeVar("T")
BACKOFF_S = (0.5, 1, 2, 4, 8, 15, 30)
# Refused files that errors.quarantine_dir takes; directories, FIFOs, links and unreadable files stay put.
MOVABLE = frozenset({"empty", "too_large", "bad_name", "not_an_image", "decode_error", "too_many_pixels",
                     "embed_error"})


@dataclass
class _Known:
    """What the store holds (or will hold, once this batch commits) for one path."""

    sha256: str
    model: str


@dataclass
class Loaded:
    """One file as the decode pool leaves it: its bytes' identity, and its pixels or why there are none."""

    sha256: str = ""
    size: int = 0
    mtime: float = 0.0
    pixels: Prepared | None = None
    error: FileRejected | None = None  # unreadable: nothing else is set
    decode_error: FileRejected | None = None  # readable, but not an image the model can take
    read_s: float = 0.0
    decode_s: float = 0.0


@dataclass
class Item:
    """One image that gets a row with a vector: a file from disk, or an imported vector."""

    path: str
    sha256: str
    size: int
    mtime: float
    model: str
    image: Any = None  # decoded pixels, when the model must embed it
    vector: np.ndarray | None = None
    exact_id: int | None = None  # a stored row with the same bytes
    exact_path: str | None = None  # an earlier item of this batch with the same bytes
    on_disk: bool = True  # False for imported vectors whose file is not on this machine
    verdict: Verdict = field(default_factory=Verdict)
    rejected: bool = False


@dataclass
class BatchPlan:
    ops: list[Op | Item] = field(default_factory=list)
    committed: bool = False
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("embedded", "unchanged", "moved", "deleted", "failed", "rejected"), 0))


# A batch as the feeder hands it over: its changes, and each upserted file loading in the decode pool.
Formed = tuple[list[Change], list[Future[Loaded] | None]]


class Worker:
    def __init__(self, config: Config, intake: Intake, store: Store, embedder: Embedder,
                 paths: PathFilter, metrics: Metrics, index: VectorIndex, checker: Checker,
                 notifier: Notifier | None = None) -> None:
        self.config, self.intake, self.store, self.embedder = config, intake, store, embedder
        self.changes = intake.queue
        self.notifier = notifier or Notifier({})
        self.paths, self.metrics, self.index, self.checker = paths, metrics, index, checker
        self.batch_size = config.model.batch_size
        self.max_wait_s = config.model.max_wait_ms / 1000
        self.decode_workers = config.model.decode_workers or _auto_decode_workers(embedder.device)
        self._pool = ThreadPoolExecutor(self.decode_workers, thread_name_prefix="decode")
        self.last_tick = time.monotonic()  # for health: the loop is alive

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    # --- the loop ---------------------------------------------------------------------------------

    def run(self, stop: threading.Event, inputs_done: threading.Event | None = None) -> None:
        """Process batches until `stop` (finish the batch in hand, then return) or, in burst mode, until
        `inputs_done` is set and the queue is empty. Batches taken but not processed when `stop` comes
        are dropped: their files are on disk, and the next start's scan takes them."""
        ready: queue.Queue[Formed | None] = queue.Queue(maxsize=1)  # one batch loading ahead of the model
        finished = threading.Event()

        def stopping() -> bool:
            return stop.is_set() or finished.is_set()

        feeder = threading.Thread(target=self._feed, args=(ready, stopping, inputs_done), name="batcher",
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

    def _feed(self, ready: queue.Queue[Formed | None], stopping: Callable[[], bool],
              inputs_done: threading.Event | None) -> None:
        """The feeder thread: form batches (their files start loading at once), hand them to the model
        thread; in burst mode, None once the inputs are done and the queue is empty."""
        while not stopping():
            batch, loads = self.next_batch(stopping, inputs_done)
            if batch:
                _put(ready, (batch, loads), stopping)
            elif inputs_done is not None and inputs_done.is_set() and self.changes.empty():
                _put(ready, None, stopping)
                return

    def next_batch(self, stopping: Callable[[], bool], inputs_done: threading.Event | None = None) -> Formed:
        """Wait for a first change, then collect more until batch_size or max_wait_ms after the first.
        Each upserted file starts loading in the decode pool as soon as it is taken."""
        batch: list[Change] = []
        loads: list[Future[Loaded] | None] = []

        def take(change: Change) -> None:
            self.metrics.queue_wait.observe(max(time.monotonic() - change.seen_at, 0.0))
            batch.append(change)
            loads.append(self._pool.submit(self.load, change.path) if change.kind == "upsert" else None)

        while not batch:
            if stopping() or (inputs_done is not None and inputs_done.is_set() and self.changes.empty()):
                return [], []
            try:
                take(self.changes.get(timeout=0.1))
            except queue.Empty:
                continue
        deadline = time.monotonic() + self.max_wait_s
        while len(batch) < self.batch_size:
            remaining = deadline - time.monotonic()
            try:
                take(self.changes.get(timeout=remaining) if remaining > 0 else self.changes.get_nowait())
            except queue.Empty:
                break
        self.metrics.queue_depth.set(self.changes.qsize())
        return batch, loads

    def load(self, path: str) -> Loaded:
        """Read a file once, hash it and prepare its pixels (in a decode thread). Never raises."""
        loaded = Loaded()
        started = time.perf_counter()
        try:
            if not self.paths.resolves_inside(path):
                raise FileRejected("not_a_file", "its directory is a symbolic link out of the watched root")
            file = read_file(path, self.config.watch.max_file_bytes)
        except FileRejected as exc:
            loaded.error = exc
            return loaded
        except Exception as exc:  # an unexpected failure stays with this file
            loaded.error = FileRejected("unreadable", f"{type(exc).__name__}: {exc}")
            return loaded
        loaded.sha256, loaded.size, loaded.mtime = file.sha256, file.size, file.mtime
        decoding = time.perf_counter()
        loaded.read_s = decoding - started
        try:
            loaded.pixels = self.embedder.prepare(file.data, self.config.model.max_image_pixels)
        except FileRejected as exc:
            loaded.decode_error = exc
        except Exception as exc:
            loaded.decode_error = FileRejected("decode_error", f"broken image data ({type(exc).__name__}: {exc})")
        loaded.decode_s = time.perf_counter() - decoding
        return loaded

    def tick(self) -> None:
        """The loop is alive: for /healthz, and systemd's watchdog (pinged from this loop, never from a
        thread of its own, so that a hung worker is restarted)."""
        self.last_tick = time.monotonic()
        self.notifier.heartbeat(f"watching {len(self.config.watch.paths)} roots, {len(self.index):,} images, "
                                f"queue {self.changes.qsize()}")

    def _process_guarded(self, batch: list[Change], loads: list[Future[Loaded] | None],
                         stop: threading.Event) -> None:
        """The worker never dies of one batch: an unexpected error drops the batch (logged and counted);
        its files are still on disk and the next scan takes them again."""
        try:
            self.process(batch, stop, loads)
        except Exception:
            self.metrics.errors.labels("worker", "unexpected").inc()
            log.exception("batch_failed", files=len(batch), paths=[c.path for c in batch[:5]])

    # --- one batch --------------------------------------------------------------------------------

    def process(self, batch: list[Change], stop: threading.Event | None = None,
                loads: list[Future[Loaded] | None] | None = None) -> BatchPlan:
        """One batch, start to finish. `loads` are its files loading in the decode pool (started here
        when not given)."""
        if loads is None:
            loads = [self._pool.submit(self.load, c.path) if c.kind == "upsert" else None for c in batch]
        self.metrics.batch_size.observe(len(batch))
        self.metrics.batch_fill.observe(len(batch) / self.batch_size)
        self.metrics.in_flight.set(len(batch))
        try:
            plan = self._process(batch, loads, stop)
        finally:
            self.metrics.in_flight.set(0)
        if plan.committed:
            now = time.monotonic()
            for change in batch:
                self.metrics.latency.observe(now - change.seen_at)
        return plan

    def _process(self, batch: list[Change], loads: list[Future[Loaded] | None],
                 stop: threading.Event | None) -> BatchPlan:
        involved = [p for c in batch for p in (c.path, c.dest) if p and _storable(p)]
        known_rows = self._with_retry(lambda: self.store.get_many(involved), stop)
        if known_rows is None:
            return BatchPlan()  # stopping while the store is down: the next start's scan redoes this batch
        waiting = time.monotonic()  # the model thread holds a batch whose files may still be decoding
        loaded = [f.result() if f is not None else None for f in loads]
        self.metrics.pixel_wait.inc(time.monotonic() - waiting)
        done = [x for x in loaded if x is not None]
        self.metrics.stage_seconds.labels("read").observe(sum(x.read_s for x in done))
        self.metrics.stage_seconds.labels("decode").observe(sum(x.decode_s for x in done))
        plan = self.plan(batch, known_rows, loaded)
        self._embed(plan)
        return self._judge_and_write(plan, stop)

    def import_vectors(self, items: list[Item], stop: threading.Event | None = None) -> BatchPlan:
        """Judge and store vectors computed elsewhere (`clipwatch import`), like embedded ones."""
        plan = BatchPlan(ops=list(items))
        for item in items:
            self._find_exact(item, plan.ops)
        return self._judge_and_write(plan, stop)

    def _judge_and_write(self, plan: BatchPlan, stop: threading.Event | None) -> BatchPlan:
        self._judge(plan)
        ops = self._finish_ops(plan)
        with self.metrics.stage_seconds.labels("write").time():
            applied = self._with_retry(lambda: self.store.apply(ops), stop)
        if applied is None:
            return BatchPlan()
        plan.committed = True
        self._follow_in_index(plan, applied)
        self.metrics.last_commit.set_to_current_time()
        for result, n in plan.counts.items():
            if result != "failed":
                self.metrics.processed.labels(result).inc(n)
        log.info("batch_committed", changes=len(plan.ops), **{k: v for k, v in plan.counts.items() if v})
        return plan

    def plan(self, batch: list[Change], rows: dict[str, StoredFile], loaded: list[Loaded | None]) -> BatchPlan:
        """Turn changes into ordered row operations; `loaded` holds each upserted file's bytes' identity
        and pixels, in batch order."""
        plan = BatchPlan()
        state: dict[str, _Known | None] = {p: _Known(r.sha256, r.model) for p, r in rows.items()}
        for change, load in zip(batch, loaded, strict=True):
            if change.kind == "upsert":
                self._plan_upsert(change.path, state, plan, load or self.load(change.path))
            elif change.kind == "move":
                self._plan_move(change, state, plan)
            elif change.kind == "delete":
                if state.get(change.path) and self.config.store.on_delete == "delete":
                    plan.ops.append(Delete(change.path))
                    plan.counts["deleted"] += 1
                state[change.path] = None
            elif change.kind == "delete_tree" and self.config.store.on_delete == "delete":
                plan.ops.append(DeleteTree(change.path))
                prefix = change.path.rstrip(os.sep) + os.sep
                for p in [p for p in state if p.startswith(prefix)]:
                    state[p] = None
        return plan

    def _plan_move(self, change: Change, state: dict[str, _Known | None], plan: BatchPlan) -> None:
        row = state.get(change.path) if _storable(change.path) else None
        if row is None or not _storable(change.dest):
            # nothing stored under the old name: ingest the new one (loaded here: moves are not decoded ahead)
            self._plan_upsert(change.dest, state, plan, self.load(change.dest))
            return
        plan.ops.append(Rename(change.path, change.dest))
        plan.counts["moved"] += 1
        state[change.dest], state[change.path] = row, None

    def _plan_upsert(self, path: str, state: dict[str, _Known | None], plan: BatchPlan, file: Loaded) -> None:
        model = self.embedder.identity
        try:
            if file.error is not None:
                raise file.error
            known = state.get(path)
            if known is not None and known.sha256 == file.sha256 and known.model == model:
                plan.ops.append(Touch(path, file.size, file.mtime))  # same content: keep the vector
                plan.counts["unchanged"] += 1
                return
            item = Item(path, file.sha256, file.size, file.mtime, model)
            same_bytes = self._find_exact(item, plan.ops)
            moved_from = self._moved_from(item, same_bytes, state) if known is None else None
            if moved_from is not None:  # a rename whose events we did not see paired: keep the row
                plan.ops += [Rename(moved_from, path), Touch(path, file.size, file.mtime)]
                plan.counts["moved"] += 1
                state[path], state[moved_from] = state.get(moved_from) or _Known(file.sha256, model), None
                return
            if item.vector is None and item.exact_path is None:
                if file.decode_error is not None:
                    raise file.decode_error
                item.image = file.pixels
        except FileRejected as exc:
            self._rejected(path, exc, plan)
            return
        plan.ops.append(item)
        state[path] = _Known(file.sha256, model)

    def _find_exact(self, item: Item, earlier: list[Op | Item]) -> list[StoredFile]:
        """Look for the same bytes stored (any instance) or earlier in this batch; an exact duplicate takes
        that vector and skips the model. Returns the stored rows with these bytes (for move detection)."""
        if not item.sha256:
            return []
        for other in earlier:
            if isinstance(other, Item) and other.sha256 == item.sha256 and other.path != item.path:
                item.exact_path, item.vector = other.path, other.vector  # None until the forward pass: see _embed
                return []
        try:
            rows = self.store.find_by_sha256(item.sha256)
        except StoreError:
            return []  # the lookup saves work; without it the file is embedded and judged by similarity
        for row in rows:
            if row.path == item.path or row.model != item.model:
                continue
            vector = self.index.get(row.id)
            if vector is None:  # stored by another instance a moment ago: not synced into the index yet
                try:
                    vector = self.store.vector_of(row.id)
                except StoreError:
                    continue
            if vector is not None:
                item.exact_id, item.vector = row.id, vector
                break
        return rows

    def _moved_from(self, item: Item, same_bytes: list[StoredFile], state: dict[str, _Known | None]) -> str | None:
        """The path of one of our rows with these exact bytes whose file is gone: the file was moved here.

        inotify pairs a rename only when both directories are watched; a directory created a moment
        before a file is moved into it is not watched yet, and moves made while the daemon was down
        produce no event at all. Recognising the content keeps the row, its id and its vector."""
        for row in same_bytes:
            still_there = row.path not in state or state[row.path] is not None  # not moved or deleted in this batch
            if (row.instance == self.store.instance and row.path != item.path and row.model == item.model
                    and still_there and self.paths.root_of(row.path) and not os.path.lexists(row.path)):
                return row.path
        return None

    def _embed(self, plan: BatchPlan) -> None:
        """One forward pass for every image of the batch that needs one; if it fails, embed them one by
        one so a bad image fails alone."""
        pending = [op for op in plan.ops if isinstance(op, Item) and op.vector is None and op.exact_path is None]
        if pending:
            with self.metrics.stage_seconds.labels("embed").time():
                try:
                    self.metrics.model_calls.inc()
                    vectors = self.embedder.embed_images([p.image for p in pending])
                    for p, v in zip(pending, vectors, strict=True):
                        p.vector = v
                except Exception:
                    log.warning("batch_embed_failed", files=len(pending), action="retrying one by one",
                                exc_info=True)
                    for p in pending:
                        try:
                            self.metrics.model_calls.inc()
                            p.vector = self.embedder.embed_images([p.image])[0]
                        except Exception as exc:
                            self._rejected(p.path, FileRejected("embed_error", f"the model failed: {exc}"), plan)
        by_path = {op.path: op for op in plan.ops if isinstance(op, Item)}
        for op in plan.ops:  # copies earlier in the batch: the vector of the first
            if isinstance(op, Item) and op.exact_path is not None and op.vector is None:
                op.vector = by_path[op.exact_path].vector
            if isinstance(op, Item):
                op.image = None  # the pixels are no longer needed: free them before the write

    def _judge(self, plan: BatchPlan) -> None:
        earlier: list[Earlier] = []
        with self.metrics.stage_seconds.labels("check").time():
            judged = [op for op in plan.ops if isinstance(op, Item) and op.vector is not None
                      and op.model == self.embedder.identity]
            vectors = [cast(np.ndarray, i.vector) for i in judged]
            nearest = dict(zip(map(id, judged), self.index.nearest_many(np.stack(vectors)), strict=True)) \
                if vectors else {}
            for item in plan.ops:
                if not isinstance(item, Item) or item.vector is None:
                    continue
                if item.model == self.embedder.identity:
                    item.verdict = self.checker.judge(item.vector, nearest[id(item)], earlier, item.exact_id,
                                                      item.exact_path)
                self._act(item, plan)
                if not item.rejected:
                    earlier.append(Earlier(item.path, item.vector))

    def _act(self, item: Item, plan: BatchPlan) -> None:
        verdict = item.verdict
        if verdict.nearest is not None:
            self.metrics.best_match.observe(verdict.nearest)
        if verdict.status == "ok":
            return
        action = (self.config.duplicates.action if verdict.status == "duplicate"
                  else self.config.prohibited.action)
        original = item.path
        if action in ("quarantine", "reject") and item.on_disk:
            try:
                item.path = quarantine_file(item.path, self.paths, self.config.quarantine.dir)
            except OSError as exc:
                log.error("quarantine_failed", path=original, error=str(exc), action="flag instead")
                action = "flag"
        item.rejected = action == "reject"
        plan.counts["rejected"] += item.rejected
        self.metrics.verdicts.labels(verdict.status, action).inc()
        matched = verdict.match_path
        if verdict.match_id is not None:
            matched = self._path_of(verdict.match_id)
        log.info("verdict", path=original, status=verdict.status, label=verdict.label,
                 score=None if verdict.score is None else round(verdict.score, 4), matched_path=matched,
                 match_id=verdict.match_id, action=action, moved_to=item.path if item.path != original else None)

    def _path_of(self, row_id: int) -> str | None:
        try:
            return self.store.paths_of([row_id]).get(row_id)
        except StoreError:
            return None

    def _finish_ops(self, plan: BatchPlan) -> list[Op]:
        ops: list[Op] = []
        for op in plan.ops:
            if not isinstance(op, Item):
                ops.append(op)
            elif op.vector is not None and not op.rejected:
                v = op.verdict
                ops.append(Upsert(op.path, op.sha256, op.size, op.mtime, op.model, op.vector, v.status,
                                  v.match_id, v.score, v.label, v.match_path))
                plan.counts["embedded"] += 1
                log.debug("stored", path=op.path, sha256=op.sha256, status=v.status)
        return ops

    def _follow_in_index(self, plan: BatchPlan, applied: Applied) -> None:
        """The index learns this batch's rows at once (other instances' rows come through the sync)."""
        self.index.remove(applied.deleted)
        items = [op for op in plan.ops if isinstance(op, Item) and op.model == self.embedder.identity
                 and op.path in applied.ids and op.vector is not None]
        if items:
            vectors = np.stack([cast(np.ndarray, i.vector) for i in items])
            self.index.upsert([applied.ids[i.path] for i in items], vectors)
        self.metrics.index_size.set(len(self.index))

    def _rejected(self, path: str, exc: FileRejected, plan: BatchPlan) -> None:
        if exc.reason == "not_found":  # renamed or deleted since it was queued: its own event follows
            log.debug("file_gone", path=path)
            return
        plan.counts["failed"] += 1
        self.metrics.rejected(exc)
        moved_to = None
        if self.config.errors.quarantine_dir and exc.reason in MOVABLE:
            try:
                moved_to = quarantine_file(path, self.paths, self.config.errors.quarantine_dir)
            except OSError as move_error:
                log.error("quarantine_failed", path=path, error=str(move_error), action="left in place")
        if moved_to is None:
            self.intake.remember_refused(path)  # not tried again until it changes
        log.warning("file_rejected", path=path, reason=exc.reason, error=str(exc), moved_to=moved_to)

    def _with_retry(self, fn: Callable[[], T], stop: threading.Event | None) -> T | None:
        """Run a store call, retrying with capped exponential backoff while the store is down.
        Returns None only if `stop` is set while waiting."""
        for attempt in range(1_000_000):
            try:
                result = fn()
                self.metrics.store_up.set(1)
                return result
            except StoreError as exc:
                self.metrics.store_up.set(0)
                self.metrics.errors.labels("store", "store_error").inc()
                delay = BACKOFF_S[min(attempt, len(BACKOFF_S) - 1)]
                log.error("store_unavailable", error=str(exc), retry_in_s=delay, attempt=attempt + 1)
                deadline = time.monotonic() + delay
                while (remaining := deadline - time.monotonic()) > 0:
                    self.tick()  # waiting for the store is not hanging: keep the watchdog fed
                    if stop is not None and stop.wait(min(remaining, 1.0)):
                        return None
                    if stop is None:
                        time.sleep(min(remaining, 1.0))
                self.store.reconnect()
        return None


def _put(q: queue.Queue[Any], item: Any, stopping: Callable[[], bool]) -> None:
    while not stopping():
        try:
            q.put(item, timeout=0.1)
            return
        except queue.Full:
            continue


def _auto_decode_workers(device: str) -> int:
    """On the CPU the model takes every core: half of them decode (at least one). A GPU needs feeding."""
    cores = cpu_count()
    return max(cores, 2) if device.startswith("cuda") else max(1, cores // 2)


def _storable(path: str) -> bool:
    try:
        check_name(path)
        return True
    except FileRejected:
        return False
