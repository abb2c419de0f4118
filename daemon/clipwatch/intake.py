"""Between the watcher and the worker: hold files until they are complete, then feed the bounded queue.

A file is complete when
- inotify reports close-after-write (``IN_CLOSE_WRITE``) or a rename into place, or
- its size and mtime have not changed for ``watch.settle_ms`` (polling mode, files that were created
  without a write we saw, such as ones moved in from outside a root, and files found by a scan that
  were modified moments ago).

Files that are being written (inotify reported a write but no close yet) wait for the close, however
long the writer takes. Everything that is ready goes to a bounded queue. When it is full, the scanner
waits (`put` blocks: back-pressure); the watcher's thread must never block (the kernel's event queue
would overflow behind it), so an event that finds the queue full is dropped, counted, and a rescan is
requested, which finds the file again once the queue has room.

The intake also remembers files the worker refused (a broken image, say) with their size and mtime,
so that rescans do not try them again until they change. That memory is bounded: at most REFUSED_MAX
files (the oldest is forgotten first, and merely tried once more), and each rescan forgets files that
changed or are gone (`prune_refused`).
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from .changes import Change
from .metrics import Metrics
from .vocab import ChangeKind, Source

REFUSED_MAX = 100_000


@dataclass
class _Pending:
    wait_close: bool  # True: inotify saw a write, so wait for IN_CLOSE_WRITE; False: wait for size/mtime to settle
    source: Source
    signature: tuple[int, int] | None = None
    stable_since: float = 0.0
    delete_at: float | None = None  # a file moved out of sight: delete its row then, unless it reappears


class Intake:
    """Thread-safe: the watchdog thread, the scanner and the settle loop all call into it."""

    def __init__(self, capacity: int, settle_s: float, metrics: Metrics) -> None:
        self.queue: queue.Queue[Change] = queue.Queue(maxsize=capacity)
        self.settle_s = settle_s
        self.metrics = metrics
        self.metrics.queue_capacity.set(capacity)
        self._pending: dict[str, _Pending] = {}
        self._refused: OrderedDict[str, tuple[int, int]] = OrderedDict()
        self._blocked: dict[str, str] = {}  # refused path -> the file in its way
        self._lock = threading.Lock()
        self.closed = threading.Event()
        self.rescan_wanted = threading.Event()

    # --- called by the watcher and the scanner ----------------------------------------------------

    def ready(self, change: Change) -> None:
        """A change that needs no waiting (a close-after-write, a rename, a delete), from the watcher."""
        with self._lock:
            waiting = self._pending.pop(change.path, None)
            if change.kind == ChangeKind.MOVE and waiting is not None:
                # Renamed while still being written: keep waiting under the new name, and drop any row
                # of the old name (its content was being replaced anyway).
                self._pending[change.dest] = waiting
                change = Change(ChangeKind.DELETE, change.path, source=change.source)
            elif change.kind == ChangeKind.DELETE_TREE:
                prefix = change.path.rstrip(os.sep) + os.sep
                for p in [p for p in self._pending if p.startswith(prefix)]:
                    del self._pending[p]
        self.offer(change)

    def offer(self, change: Change) -> bool:
        """Queue without waiting; when the queue is full, drop the change and ask for a rescan."""
        try:
            self.queue.put_nowait(change)
        except queue.Full:
            self.metrics.events_dropped.inc()
            self.rescan_wanted.set()
            return False
        self.metrics.queue_depth.set(self.queue.qsize())
        return True

    def wait_for_close(self, path: str, source: Source = Source.EVENT) -> None:
        with self._lock:
            self._pending[path] = _Pending(wait_close=True, source=source)

    def wait_for_settle(self, path: str, source: Source = Source.EVENT) -> None:
        with self._lock:
            current = self._pending.get(path)
            if current is None or not current.wait_close or current.delete_at is not None:
                self._pending[path] = _Pending(wait_close=False, source=source)

    def delete_later(self, path: str) -> None:
        """A file moved somewhere we may not see yet (a directory created a moment ago has no watch until
        watchdog adds one). Its row is deleted after twice the settle time, unless the path reappears;
        meanwhile the worker can recognise the file by content at its new name and keep the row."""
        with self._lock:
            self._pending[path] = _Pending(wait_close=False, source=Source.EVENT,
                                           delete_at=time.monotonic() + max(2 * self.settle_s, 1.0))

    def put(self, change: Change) -> bool:
        """Block until the queue has room (back-pressure). False if intake was closed meanwhile."""
        while not self.closed.is_set():
            try:
                self.queue.put(change, timeout=0.2)
            except queue.Full:
                continue
            self.metrics.queue_depth.set(self.queue.qsize())
            return True
        return False

    # --- the settle loop --------------------------------------------------------------------------

    def settle_once(self, now: float | None = None) -> int:
        """Move every file whose size and mtime held still for settle_s to the queue. Returns how many."""
        now = time.monotonic() if now is None else now
        due: list[Change] = []
        with self._lock:
            for path, p in list(self._pending.items()):
                if p.delete_at is not None:
                    if now >= p.delete_at:
                        del self._pending[path]
                        due.append(Change(ChangeKind.DELETE, path, source=p.source))
                    continue
                if p.wait_close:
                    continue
                sig = signature(path)
                if sig is None:  # gone: the delete event (if any) tells the worker
                    del self._pending[path]
                elif sig != p.signature:
                    p.signature, p.stable_since = sig, now
                elif now - p.stable_since >= self.settle_s:
                    del self._pending[path]
                    due.append(Change(ChangeKind.UPSERT, path, source=p.source))
        for change in due:
            self.offer(change)
        return len(due)

    # --- files the worker refused -------------------------------------------------------------------

    def remember_refused(self, path: str, until_gone: str = "") -> None:
        """`until_gone`: the file that stands in its way (a name taken in the publish directory); once it is
        gone, the next rescan tries this file again even though it did not change."""
        try:
            st = os.lstat(path)  # any kind of file: a FIFO named x.jpg is refused once, not at every rescan
        except OSError:
            return
        with self._lock:
            self._refused[path] = (st.st_size, st.st_mtime_ns)
            self._refused.move_to_end(path)
            if until_gone:
                self._blocked[path] = until_gone
            while len(self._refused) > REFUSED_MAX:
                self._blocked.pop(self._refused.popitem(last=False)[0], None)

    def refused_unchanged(self, path: str, size: int, mtime_ns: int) -> bool:
        """True if the worker refused this file and it has not changed since."""
        with self._lock:
            return self._refused.get(path) == (size, mtime_ns)

    def prune_refused(self) -> int:
        """Forget refused files that changed or are gone, or whose way is free now (they are tried again).
        Returns how many."""
        with self._lock:
            remembered, blocked = list(self._refused.items()), dict(self._blocked)
        gone = [path for path, known in remembered if signature(path) != known
                or (path in blocked and not os.path.lexists(blocked[path]))]
        with self._lock:
            for path in gone:
                self._refused.pop(path, None)
                self._blocked.pop(path, None)
        return len(gone)

    def run_settle_loop(self) -> None:
        interval = min(max(self.settle_s / 4, 0.02), 0.5)
        while not self.closed.wait(interval):
            self.settle_once()

    def close(self) -> None:
        self.closed.set()


def signature(path: str) -> tuple[int, int] | None:
    """Size and mtime of whatever is at `path` (not following a link), or None if nothing is. A FIFO or a
    link settles too: the worker refuses it, with a reason, without ever opening it."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns
