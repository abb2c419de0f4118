"""What `/healthz` and `clipwatch health` report about the store and the index sync, fed by the threads
that use them: the worker (through `Retrier`) and the index sync.

A store that cannot be reached is reported as soon as any of them fails, also while the daemon is idle
(the sync asks the store every `index.sync_interval_s`), naming who failed and why; a sync that has not
succeeded for STALE_INTERVALS intervals (at least STALE_MIN_S) is reported with its last error.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from .metrics import Metrics

STALE_INTERVALS = 5
STALE_MIN_S = 10.0
WORKER, INDEX_SYNC = "worker", "index sync"


class Health:
    """Thread-safe."""

    def __init__(self, metrics: Metrics, sync_interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.metrics, self.clock = metrics, clock
        self.stale_after_s = max(STALE_INTERVALS * sync_interval_s, STALE_MIN_S)
        self._failing: dict[str, str] = {}  # who -> their last error, while they fail
        self._sync_since: float | None = None  # when the sync last succeeded (or started); None: no sync runs
        self._sync_error = ""
        self._lock = threading.Lock()

    def store_ok(self, who: str) -> None:
        with self._lock:
            self._failing.pop(who, None)
            self.metrics.store_up.set(0 if self._failing else 1)

    def store_failed(self, who: str, error: str) -> None:
        with self._lock:
            self._failing[who] = error
            self.metrics.store_up.set(0)

    def sync_started(self) -> None:
        with self._lock:
            self._sync_since = self.clock()

    def sync_ok(self) -> None:
        with self._lock:
            self._sync_since, self._sync_error = self.clock(), ""
        self.metrics.sync_success.set_to_current_time()
        self.store_ok(INDEX_SYNC)

    def sync_failed(self, error: str) -> None:
        with self._lock:
            self._sync_error = error

    def problems(self) -> list[str]:
        with self._lock:
            found = [f"the store is unreachable ({who}: {error})" for who, error in sorted(self._failing.items())]
            if self._sync_since is not None and (age := self.clock() - self._sync_since) > self.stale_after_s:
                found.append(f"the index sync has not succeeded for {age:.0f} s"
                             + (f" (last error: {self._sync_error})" if self._sync_error else ""))
        return found
