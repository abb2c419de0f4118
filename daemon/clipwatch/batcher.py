"""The first stage of the worker: queued changes become batches, and their files are read and decoded ahead.

A batch is up to `model.batch_size` changes, or fewer when `model.max_wait_ms` passes after the first one
arrived. The batcher runs in a thread of its own (`feed`) and hands each upserted file to the decode pool
(`model.decode_workers` threads) the moment it takes it: read once, sha256, pixels (`load`). So while the
model embeds one batch, the next one is read and decoded. Every file is decoded ahead, also one that turns
out unchanged: decoding runs beside the model, and asking the store first would stall it.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from .changes import Change
from .config import Config
from .embedder import Embedder, Prepared, cpu_count
from .errors import FileRejected
from .files import PathFilter, read_file
from .metrics import Metrics
from .vocab import ChangeKind, Reason


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


# A batch as the batcher hands it over: its changes, and each upserted file loading in the decode pool.
Formed = tuple[list[Change], list["Future[Loaded] | None"]]


class Batcher:
    def __init__(self, config: Config, changes: queue.Queue[Change], embedder: Embedder, paths: PathFilter,
                 metrics: Metrics) -> None:
        self.config, self.changes, self.embedder, self.paths, self.metrics = config, changes, embedder, paths, metrics
        self.batch_size = config.model.batch_size
        self.max_wait_s = config.model.max_wait_ms / 1000
        self.decode_workers = config.model.decode_workers or auto_decode_workers(embedder.device)
        self._pool = ThreadPoolExecutor(self.decode_workers, thread_name_prefix="decode")

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
        """Read a file once, hash it and prepare its pixels (in a decode thread). Never raises."""
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
        pixels, decode_error = None, None
        try:
            pixels = self.embedder.prepare(file.data, self.config.model.max_image_pixels)
        except FileRejected as exc:
            decode_error = exc
        except Exception as exc:
            decode_error = FileRejected(Reason.DECODE_ERROR, f"broken image data ({type(exc).__name__}: {exc})")
        return Loaded(file.sha256, file.size, file.mtime, pixels, None, decode_error, decoding - started,
                      time.perf_counter() - decoding)


def _put(q: queue.Queue[Any], item: Any, stopping: Callable[[], bool]) -> None:
    while not stopping():
        try:
            q.put(item, timeout=0.1)
            return
        except queue.Full:
            continue


def auto_decode_workers(device: str) -> int:
    """On the CPU the model takes every core: half of them decode (at least one). A GPU needs feeding."""
    cores = cpu_count()
    return max(cores, 2) if device.startswith("cuda") else max(1, cores // 2)
