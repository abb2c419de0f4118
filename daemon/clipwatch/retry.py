"""The one place a store error is handled while the daemon works: hold what is in hand, back off, retry.

Every store call of the worker and the committer goes through a `Retrier`: a `StoreError` (and only
that: every driver error becomes one, see `store/sqlbase.py`) is logged, counted, reported to `Health`,
and the call is tried again after 0.5, 1, 2, 4, 8, 15, 30, 30, ... seconds, with the connection re-opened
in between. Nothing is dropped: the caller gets the result, or None when asked to stop meanwhile.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

from .errors import StoreError
from .health import WORKER, Health
from .logs import get_logger
from .metrics import Metrics
from .store import Store
from .vocab import Reason, Stage

log = get_logger(__name__)
T = TypeVar("T")
BACKOFF_S = (0.5, 1, 2, 4, 8, 15, 30)


class Retrier:
    def __init__(self, store: Store, metrics: Metrics, health: Health, tick: Callable[[], None]) -> None:
        self.store, self.metrics, self.health, self.tick = store, metrics, health, tick

    def __call__(self, fn: Callable[[], T], stop: threading.Event | None) -> T | None:
        """`fn()`, retried while the store is down. None only if `stop` is set while waiting."""
        attempt = 0
        while True:
            try:
                result = fn()
            except StoreError as exc:
                self._failed(exc, attempt)
            else:
                self.health.store_ok(WORKER)
                return result
            delay = BACKOFF_S[min(attempt, len(BACKOFF_S) - 1)]
            if not self._wait(delay, stop):
                return None
            self.store.reconnect()
            attempt += 1

    def _failed(self, exc: StoreError, attempt: int) -> None:
        self.health.store_failed(WORKER, str(exc))
        self.metrics.error(Stage.STORE, Reason.STORE_ERROR)
        log.error("store_unavailable", error=str(exc), retry_in_s=BACKOFF_S[min(attempt, len(BACKOFF_S) - 1)],
                  attempt=attempt + 1)

    def _wait(self, seconds: float, stop: threading.Event | None) -> bool:
        """Wait, keeping the watchdog fed (waiting for the store is not hanging). False if told to stop."""
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0:
            self.tick()
            if stop is not None and stop.wait(min(remaining, 1.0)):
                return False
            if stop is None:
                time.sleep(min(remaining, 1.0))
        return True
