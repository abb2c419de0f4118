"""The first stage of the worker: queued changes become batches, and their files are read and decoded ahead.

A batch is up to `model.batch_size` changes, or fewer when `model.max_wait_ms` passes after the first one
arrived. The batcher runs in a thread of its own (`feed`) and hands each upserted file to the decode pool
the moment it takes it: read once, sha256, pixels (`load`). So while the model embeds one batch, the next
one is read and decoded. Every file is decoded ahead, also one that turns out unchanged: decoding runs
beside the model, and asking the store first would stall it. How many files decode at once is
`model.decode_workers`, or, at 0, what `DecodeSizer` measures the machine needs.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

from .changes import Change
from .config import Config
from .embedder import Embedder, Prepared, cpu_count
from .errors import FileRejected
from .files import PathFilter, read_file
from .logs import get_logger
from .metrics import Metrics
from .pdq import FileHashes, hashes_of
from .vocab import ChangeKind, Reason

log = get_logger(__name__)

@dataclass(frozen=True)
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
    cpu_s: float = 0.0  # CPU time of the decode thread for this file (read, hash, decode)
    hashes: FileHashes | None = None  # MD5, and PDQ when it decoded


# A batch as the batcher hands it over: its changes, and each upserted file loading in the decode pool.
Formed = tuple[list[Change], list["Future[Loaded] | None"]]


class Batcher:
    def __init__(self, config: Config, changes: queue.Queue[Change], embedder: Embedder, paths: PathFilter,
                 metrics: Metrics) -> None:
        self.config, self.changes, self.embedder, self.paths, self.metrics = config, changes, embedder, paths, metrics
        self.batch_size = config.model.batch_size
        self.max_wait_s = config.model.max_wait_ms / 1000
        self.sizer = DecodeSizer(cpu_count(), config.model.decode_workers, embedder.device.startswith("cuda"),
                                 embedder.threads or cpu_count(), metrics)
        self._pool = ThreadPoolExecutor(self.sizer.capacity, thread_name_prefix="decode")

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def submit(self, path: str) -> Future[Loaded]:
        return self._pool.submit(self.load, path)

    def feed(self, ready: queue.Queue[Formed | None], stopping: Callable[[], bool],
             inputs_done: threading.Event | None) -> None:
        """The batcher's thread: form batches (their files start loading at once), hand them over; in
        burst mode, None once the inputs are done and the queue is empty."""
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
            loads.append(self.submit(change.path) if change.kind == ChangeKind.UPSERT else None)

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
        """Read a file once, hash it and prepare its pixels (in a decode thread, when the sizer lets one
        more file decode). Never raises."""
        with self.sizer.slot():
            cpu = time.thread_time()
            loaded = self._load(path)
            loaded = replace(loaded, cpu_s=time.thread_time() - cpu)
            self.sizer.spent(loaded.cpu_s)
            return loaded

    def _load(self, path: str) -> Loaded:
        started = time.perf_counter()
        try:
            if not self.paths.resolves_inside(path):
                raise FileRejected(Reason.NOT_A_FILE, "its directory is a symbolic link out of the watched root")
            file = read_file(path, self.config.watch.max_file_bytes)
        except FileRejected as exc:
            return Loaded(error=exc)
        except Exception as exc:  # an unexpected failure stays with this file
            return Loaded(error=FileRejected(Reason.UNREADABLE, f"{type(exc).__name__}: {exc}"))
        decoding = time.perf_counter()
        pixels, decode_error, hashes = None, None, FileHashes(file.md5)
        try:
            image = self.embedder.decode(file.data, self.config.model.max_image_pixels)
            pixels = self.embedder.pixels_of(image)
            hashes = hashes_of(image, file.md5)  # from the pixels decoded for the model
        except FileRejected as exc:
            decode_error = exc
        except Exception as exc:
            decode_error = FileRejected(Reason.DECODE_ERROR, f"broken image data ({type(exc).__name__}: {exc})")
        return Loaded(file.sha256, file.size, file.mtime, pixels, None, decode_error, decoding - started,
                      time.perf_counter() - decoding, hashes=hashes)


def _put(q: queue.Queue[Any], item: Any, stopping: Callable[[], bool]) -> None:
    while not stopping():
        try:
            q.put(item, timeout=0.1)
            return
        except queue.Full:
            continue


class DecodeSizer:
    """How many files are read and decoded at once.

    `model.decode_workers` > 0 fixes it. At 0 (the default) on the CPU, it follows measurement: the model
    and the decoding share the cores. An image costs the model m core-seconds (embed time x torch threads,
    less the CPU the decode threads took from it meanwhile, / images) and a file costs d CPU-seconds in its
    decode thread (read, hash, decode). C cores then do at
    most C / (m + d) images/s, and the decoding keeps up with that only with k = ceil(C d / (m + d)) files
    decoding at once (between 1 and C): more would only take cores from the model. Both costs are running
    averages over recent batches, so k follows the mix as it changes (web images: 1 on 2 cores; 12 MP
    photos beside a fast model: 2). It starts at one per two cores, until the first batch is measured.
    While the model thread waits for pixels (`model_idle`) the model uses no core: every thread of the pool
    may decode then, so the first batch, or a backlog of large photos, does not decode on half the machine.
    With a GPU the model takes no cores: every core decodes (at least 2).
    """

    SMOOTHING = 0.3  # weight of the newest batch in the running averages

    def __init__(self, cores: int, fixed: int, gpu: bool, model_threads: int, metrics: Metrics) -> None:
        self.cores, self.model_threads, self.metrics = cores, model_threads, metrics
        self.adaptive = not fixed and not gpu
        self.capacity = fixed or max(cores, 2)  # threads in the pool; `limit` of them decode at once
        self.limit = fixed or (self.capacity if gpu else max(1, cores // 2))
        self.model_s: float | None = None  # core-seconds per image
        self.decode_s: float | None = None  # CPU seconds per file
        self._busy = 0
        self._decode_cpu = 0.0  # CPU seconds spent decoding since start (to see what a forward pass lost)
        self._idle = False  # the model thread is waiting for pixels
        self._changed = threading.Condition()
        metrics.decode_workers.set(self.limit)

    @contextmanager
    def slot(self) -> Iterator[None]:
        with self._changed:
            self._changed.wait_for(lambda: self._busy < (self.capacity if self._idle else self.limit))
            self._busy += 1
        try:
            yield
        finally:
            with self._changed:
                self._busy -= 1
                self._changed.notify()

    @contextmanager
    def model_idle(self) -> Iterator[None]:
        with self._changed:
            self._idle = True
            self._changed.notify_all()
        try:
            yield
        finally:
            with self._changed:
                self._idle = False

    def spent(self, cpu_seconds: float) -> None:
        """One file decoded (from its decode thread)."""
        with self._changed:
            self._decode_cpu += cpu_seconds

    @contextmanager
    def model_running(self, images: int) -> Iterator[None]:
        """Around a forward pass of `images`: measures it (nothing if it raises)."""
        started, decoded = time.perf_counter(), self._decode_cpu
        yield
        self.embedded(time.perf_counter() - started, images, self._decode_cpu - decoded)

    def decoded(self, cpu_seconds: list[float]) -> None:
        if cpu_seconds:
            self.decode_s = self._average(self.decode_s, sum(cpu_seconds) / len(cpu_seconds))
            self._resize()

    def embedded(self, seconds: float, images: int, decode_cpu: float = 0.0) -> None:
        """A forward pass took `seconds` while the decode threads spent `decode_cpu`: what they took beyond
        the cores the model leaves free was the model's (its wall time alone would count it twice)."""
        if images:
            taken = max(decode_cpu - max(self.cores - self.model_threads, 0) * seconds, 0.0)
            core_s = max(seconds * self.model_threads - taken, seconds * self.model_threads / 4)
            self.model_s = self._average(self.model_s, core_s / images)
            self._resize()

    def _average(self, old: float | None, new: float) -> float:
        return new if old is None else (1 - self.SMOOTHING) * old + self.SMOOTHING * new

    def _resize(self) -> None:
        if not self.adaptive or self.model_s is None or self.decode_s is None:
            return
        wanted = math.ceil(self.cores * self.decode_s / (self.model_s + self.decode_s))
        wanted = min(max(wanted, 1), self.capacity)
        if wanted != self.limit:
            log.info("decode_workers_sized", workers=wanted, was=self.limit, cores=self.cores,
                     model_core_ms_per_image=round(self.model_s * 1000, 1),
                     decode_cpu_ms_per_file=round(self.decode_s * 1000, 1))
            with self._changed:
                self.limit = wanted
                self._changed.notify_all()
            self.metrics.decode_workers.set(wanted)
