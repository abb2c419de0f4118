"""Everything wired in one place: store, model, intake, watcher, worker, scanner, metrics, signals.

    watcher ─┐
             ├─> Intake (settle + bounded queue) ─> Worker (read, decode, embed, write) ─> Store
    scanner ─┘

`Service.run()` is the daemon; `Service.scan()` is the one-shot reconcile (`clipwatch scan`).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from datetime import datetime
from functools import partial
from types import FrameType
from typing import Any

from . import instance, pdqindex, quarantine
from .actions import Actions
from .answers import Answers
from .banks import Banks
from .changes import Change
from .config import Config, metrics_address
from .dbindex import SimilarityIndex, init_schema
from .decisions import Decisions
from .embedder import Embedder
from .errors import ClipwatchError, ConfigError, StoreError
from .files import PathFilter
from .health import Health
from .intake import Intake
from .judge import Judge
from .logs import get_logger
from .metrics import Metrics
from .notify import Notifier
from .publish import Census, Echoes, Gate
from .references import References
from .retro import keeper_threads, load_banks
from .scanner import ScanCounts, reconcile, repair_verdicts
from .store import Store, open_store
from .sync import IndexSync, open_index
from .vocab import ChangeKind, Source
from .watcher import Watcher
from .web import WebServer, serve
from .web.access import write_health_token
from .web.review import Desk
from .web.thumbs import Thumbnails
from .worker import Worker

log = get_logger(__name__)
START_STEP_S = 600.0  # EXTEND_TIMEOUT_USEC for each slow start-up step (model load, index load)
HEALTH_TICK_S = 60.0  # the worker's loop ticks at least every 30 s, even while it waits for the store


class Service:
    def __init__(self, config: Config, metrics: Metrics | None = None, embedder: Embedder | None = None) -> None:
        self.config, self.metrics = config, metrics or Metrics()
        self.paths = PathFilter(config.roots, config.watch.extensions, config.watch.ignore)
        self.gate, self.echoes = Gate(config.watch.paths, config.watch.publish_dir), Echoes()
        self.embedder = embedder or Embedder.from_config(config.model, str(config.data_dir / "precision.json"))
        self.intake = Intake(config.watch.queue_size, config.watch.settle_ms / 1000, self.metrics)
        self.store_health = Health(self.metrics, config.index.sync_interval_s)
        self.decisions, self.stop_event, self.notifier = Decisions(), threading.Event(), Notifier()
        self.store: Store | None = None
        self.worker: Worker | None = None
        self.index: SimilarityIndex | None = None
        self.copies: pdqindex.PerceptualIndex | None = None  # every stored PDQ hash (the copy signal)
        self.references: References | None = None
        self.banks: Banks | None = None  # the hash lists (banks.py), kept current by retro.py's thread
        self.sync: IndexSync | None = None
        self._sync_from, self.scan_counts = datetime.min, ScanCounts()
        self.watcher: Watcher | None = None
        self._http: WebServer | None = None
        self._api_store: Store | None = None  # the HTTP threads' own connection, used under _api_lock
        self._api_lock = threading.Lock()
        self._claimed = False  # this daemon holds its instance's claim (renewed by the index sync)

    # --- start-up ---------------------------------------------------------------------------------

    @classmethod
    def opened(cls, config: Config, watching: bool = True, handle_signals: bool = False,
               serving: bool = False, claiming: bool = False) -> Service:
        """A service with its store connected and model loaded; nothing left open if that fails.
        `handle_signals`: SIGTERM/SIGINT during start-up already mean a clean stop (exit 0 once started).
        `claiming`: the daemon's: claim the instance name in the registry (instance.claim)."""
        service = cls(config)
        if handle_signals:
            service._install_signal_handlers()
        try:
            service.open(watching, serving, claiming)
        except BaseException:
            service.close()
            raise
        return service

    def open(self, watching: bool = True, serving: bool = True, claiming: bool = False) -> None:
        """Check the roots (`watching`: not for `clipwatch import`), connect to the store, load the model,
        create the table if missing, finish the file moves a crash interrupted, load the similarity index,
        the decisions and the prohibited references. `serving`: also serve the HTTP endpoint at
        metrics.listen (the daemon does; `clipwatch scan` must not take the port of a daemon running beside it)."""
        if watching:
            _check_roots(self.config)
        self.store = open_store(self.config)
        self.metrics.store_up.set(1)
        self.notifier.extend_timeout(START_STEP_S)  # a first model download can take minutes
        self.notifier.status(f"loading the model {self.config.model.name}")
        if not self.embedder.dimension:
            self.embedder.load()
        self.metrics.running_precision(self.embedder.precision)
        where, _ = init_schema(self.store, self.config.index, self.embedder.dimension, self.notifier)
        if claiming:  # before anything moves: another live daemon of this name refuses the start
            instance.claim(self.store, self.config.data_dir)
            self._claimed = True
        _warn_foreign_rows(self.store, self.embedder.identity)
        quarantine.recover(self.store)  # before the index is loaded and before any scan sees the files
        self.decisions.refresh(self.store)
        started = time.monotonic()
        self.notifier.extend_timeout(START_STEP_S)
        self.notifier.status("loading the similarity index")
        self.index, since = open_index(self.store, self.config.index, where, self.embedder.identity,
                                       self.embedder.dimension)
        self.copies = pdqindex.load(self.store, self.embedder.identity, self.config.duplicates.pdq_min_quality)
        self.metrics.index_size.set(len(self.index))
        log.info("index_loaded", where=where, vectors=len(self.index), pdq_hashes=len(self.copies),
                 seconds=round(time.monotonic() - started, 2))
        self.banks = load_banks(self.config, self.metrics, self.notifier)  # before the first file is judged
        references = References(self.config, self.embedder, self.banks)
        references.load()
        self.metrics.references.set(len(references))
        self.references = references
        judge = Judge(self.config, self.embedder.identity, self.index, references, self.decisions, self.copies)
        self.worker = Worker(self.config, self.intake, self.store, self.embedder, self.paths, self.metrics,
                             self.index, judge, self.store_health, self.notifier, self.echoes)
        self._sync_from = since  # where IndexSync starts, in run()
        address = metrics_address(self.config)
        if address and watching and serving:  # the daemon's; `clipwatch scan` leaves the port to it
            self._api_store = open_store(self.config)
            desk = Desk(self._api_store, self._api_lock, Thumbnails(
                self.config.data_dir / "thumbnails", self.config.roots, self.config.quarantine.dir,
                self.config.model.max_image_pixels, self.config.watch.max_file_bytes, self._api_store.instance,
                self.config.prohibited.reference_dir),
                Actions(self._api_store, self.paths, self.config.quarantine.dir, self._rejudge), self.config,
                self.references)
            answers = Answers(self.config, self.embedder, self.index, self._api_store, self._api_lock, references,
                              self.decisions, self.copies)
            self._http = serve(self.config.http, *address, self.metrics, answers.search, self.health, desk,
                               answers.check, write_health_token(self.config.data_dir))

    # --- modes --------------------------------------------------------------------------------------

    def run(self, handle_signals: bool = True) -> int:
        """The daemon: watch, scan, process until SIGTERM/SIGINT (or `stop_event`), rescanning every
        watch.rescan_interval_s; then stop gracefully. Returns 0, or 2 when another daemon took this instance's
        name over (sync.py)."""
        assert self.worker is not None and self.index is not None and self.references is not None
        # Only the daemon follows other instances: its own connection, opened here (not for scan or import).
        self.sync = IndexSync(open_store(self.config), self.index, self.embedder.identity, self._sync_from,
                              self.config.index.sync_interval_s, self.references,
                              self.config.prohibited.refresh_interval_s, self.metrics, self.store_health,
                              self.decisions, copies=self.copies, on_lost=self.stop_event.set,
                              beat=partial(instance.beat, data_dir=self.config.data_dir) if self._claimed else None)
        if handle_signals and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            self._install_signal_handlers()
        self.watcher = Watcher(self.config.watch, self.intake, self.paths, self.metrics, self.echoes)
        self.watcher.start()  # watches first, so nothing changed during the scan is missed
        self.notifier.ready(f"watching {len(self.config.watch.paths)} roots, {len(self.index or ()):,} images")
        threads = [
            threading.Thread(target=self.worker.run, args=(self.stop_event,), name="worker", daemon=True),
            threading.Thread(target=self.intake.run_settle_loop, name="settle", daemon=True),
            threading.Thread(target=self._scan_loop, name="scanner", daemon=True),
            threading.Thread(target=self.sync.run, args=(self.stop_event,), name="index-sync", daemon=True),
        ]
        threads += keeper_threads(self.config, self.banks, self.decisions, self.metrics, self.stop_event)
        if self.gate.enabled:
            self.metrics.publish_max_wait.set(self.config.watch.publish_max_wait_s)
            census = Census(self.gate, self.paths, self.intake, self.metrics)
            threads.append(threading.Thread(target=census.run, args=(self.stop_event,), name="census", daemon=True))
        for t in threads:
            t.start()
        log.info("running", roots=list(self.config.watch.paths), publish_dir=self.gate.publish_dir or None,
                 store=self.store.location() if self.store else "", instance=self.store.instance if self.store else "")
        self.stop_event.wait()
        self.notifier.stopping()
        log.info("stopping", timeout_s=self.config.daemon.shutdown_timeout_s)
        self.watcher.stop()
        self.intake.close()
        threads[0].join(self.config.daemon.shutdown_timeout_s)
        if threads[0].is_alive():
            log.error("shutdown_timeout", action="abandoning the batch in hand; it is redone on the next start")
        lost = self.sync.lost_claim
        if self._claimed and not lost:
            _release_claim(self.config)
        self.close()
        log.info("stopped")
        return 2 if lost else 0

    def _scan_loop(self) -> None:
        """The start-up scan, then a rescan every watch.rescan_interval_s, or sooner when the queue had to
        drop events; each first puts back the watch of any root that disappeared and came back."""
        source = Source.SCAN
        while not self.stop_event.is_set():
            self._scan_all(source=source)
            source = Source.RESCAN
            self.intake.prune_refused()
            self.intake.rescan_wanted.wait(self.config.watch.rescan_interval_s)
            if self.intake.rescan_wanted.is_set():
                self.intake.rescan_wanted.clear()
                while self.intake.queue.full() and not self.stop_event.wait(0.5):
                    pass  # a rescan into a full queue would only wait: let the worker drain it first
            if self.watcher is not None:
                self.watcher.ensure_watches()

    def scan(self, on_progress: Callable[[ScanCounts, Metrics], None] | None = None) -> ScanCounts:
        """One-shot reconcile: scan every root, process everything queued, return the counts. The service
        stays open (its opener closes it)."""
        assert self.worker is not None
        inputs_done = threading.Event()
        worker = threading.Thread(target=self.worker.run, args=(self.stop_event, inputs_done), name="worker")
        worker.start()
        try:
            self._scan_all(settle=False)
            inputs_done.set()
            while worker.is_alive():
                worker.join(0.25)
                if on_progress:
                    on_progress(self.scan_counts, self.metrics)
            if on_progress:
                on_progress(self.scan_counts, self.metrics)
        finally:
            inputs_done.set()
            worker.join()
        return self.scan_counts

    def _scan_all(self, settle: bool = True, source: Source = Source.SCAN) -> None:
        """Reconcile every root, then queue the verdicts whose matched row is gone. `settle` False: a
        one-shot scan, which takes a file modified a moment ago as it is (no settle loop runs)."""
        self.scan_counts = ScanCounts()
        try:
            store = open_store(self.config)  # the scanner's own connection: the worker owns the other
        except StoreError as exc:
            log.warning("scan_skipped", error=str(exc), action="tried again at the next rescan")
            return
        try:
            started = time.monotonic()
            for root in self.config.roots:
                reconcile(root, store, self.paths, self.intake, self.embedder.identity, self.metrics,
                          self.scan_counts, source, settle, incoming=root in self.gate.incoming)
                if self.scan_counts.stopped:
                    return
            repair_verdicts(store, self.intake, self.scan_counts)
            c = self.scan_counts
            log.info(f"{source}_finished", files=c.files, queued=c.queued, gone=c.gone, repaired=c.repaired,
                     seconds=round(time.monotonic() - started, 2))
        except Exception:
            log.exception("scan_failed")
        finally:
            store.close()

    # --- health, for /healthz and `clipwatch health` ---------------------------------------------------

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Healthy when the worker's loop ticked recently, the store answers (to the worker and to the index
        sync, which asks it every few seconds, also while idle), the sync succeeds, and the watches run."""
        problems = []
        tick_age = time.monotonic() - self.worker.last_tick if self.worker else float("inf")
        if tick_age > HEALTH_TICK_S:
            problems.append(f"the worker loop has not ticked for {tick_age:.0f} s")
        problems += self.store_health.problems()
        if self.watcher is not None and not self.watcher.alive():
            problems.append("the file watcher has stopped")
        return not problems, {"status": "ok" if not problems else "unhealthy", "problems": problems,
                              "worker_tick_age_s": round(tick_age, 1), "queue_depth": self.intake.queue.qsize(),
                              "index_size": len(self.index) if self.index else 0}

    def _rejudge(self, path: str) -> None:
        """A file released on the review page, judged again without the dismissed match (read just now)."""
        if self._api_store is not None:
            self.decisions.refresh(self._api_store)  # called by the Desk, which holds the lock on this store
        # Back in incoming (a publish gate): taken like an arriving file, so that it is published once it passes.
        kind = ChangeKind.UPSERT if self.gate.root_of(path) else ChangeKind.REJUDGE
        self.intake.put(Change(kind, path, source=Source.REVIEW))

    # --- shutdown -----------------------------------------------------------------------------------

    def _install_signal_handlers(self) -> None:
        def handle(signum: int, frame: FrameType | None) -> None:
            if self.stop_event.is_set():
                os._exit(1)  # second signal: at once; the open transaction is rolled back by the store
            self.stop_event.set()

        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)

    def close(self) -> None:
        if self.worker is not None:
            self.worker.close()
        if self._http:
            self._http.close()
            self._http = None
        for store in (self.store, self.sync.store if self.sync else None, self._api_store):
            if store is not None:
                store.close()
        self.store = self.sync = self._api_store = None


def _check_roots(config: Config) -> None:
    for root in config.roots:  # the publish directory, if any, comes last
        if not os.path.isdir(root):
            key = "watch.publish_dir" if root == config.watch.publish_dir else "watch.paths"
            raise ConfigError(f"{key}: {root!r} is not an existing directory")
    if not config.watch.paths:
        raise ConfigError("watch.paths: expected at least one directory to watch")


def _warn_foreign_rows(store: Store, model: str) -> None:
    foreign = sum(n for _, other, n in store.status().counts if other != model)
    if foreign:
        log.warning("rows_of_other_model", rows=foreign, model=model,
                    action="their files are re-embedded with the configured model as scans reach them")


def _release_claim(config: Config) -> None:
    """Give the instance's claim up, on a connection of its own (the worker may still hold its own)."""
    try:
        store = open_store(config)
        try:
            instance.release(store, config.data_dir)
        finally:
            store.close()
    except ClipwatchError as exc:  # the claim then ages out (instance.STALE_S)
        log.warning("instance_release_failed", error=str(exc))
