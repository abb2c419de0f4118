"""systemd's notify protocol: one datagram to $NOTIFY_SOCKET per message (no library needed).

READY=1 once the model is loaded, the store answers and the watches are in place; STATUS= lines while
running; WATCHDOG=1 from the worker's own loop (a hung worker stops pinging and systemd restarts the
service); EXTEND_TIMEOUT_USEC= while a slow start-up step runs; STOPPING=1 on shutdown. Outside
systemd (no $NOTIFY_SOCKET) every call does nothing.
"""

from __future__ import annotations

import os
import socket
import time

from .logs import get_logger

log = get_logger(__name__)


class Notifier:
    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = dict(os.environ if environ is None else environ)
        address = env.get("NOTIFY_SOCKET", "")
        self.address = "\0" + address[1:] if address.startswith("@") else address  # '@': the abstract namespace
        watchdog_usec = int(env.get("WATCHDOG_USEC", "0") or 0)
        watchdog_pid = env.get("WATCHDOG_PID")
        for_us = watchdog_pid is None or watchdog_pid == str(os.getpid())
        self.watchdog_interval_s = watchdog_usec / 2e6 if watchdog_usec and for_us else 0.0  # ping twice per period
        self._last_ping = 0.0
        self._last_status = 0.0

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def send(self, *fields: str) -> None:
        if not self.address:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto("\n".join(fields).encode(), self.address)
        except OSError as exc:  # systemd gone (or a wrong path): the service itself goes on
            log.warning("notify_failed", error=str(exc))

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}")

    def status(self, text: str) -> None:
        self.send(f"STATUS={text}")

    def stopping(self) -> None:
        self.send("STOPPING=1", "STATUS=stopping: finishing the batch in hand")

    def extend_timeout(self, seconds: float) -> None:
        self.send(f"EXTEND_TIMEOUT_USEC={int(seconds * 1e6)}")

    def heartbeat(self, status: str | None = None) -> None:
        """Called from the worker's loop: WATCHDOG=1 at half the watchdog period, STATUS= every 5 s."""
        now = time.monotonic()
        fields = []
        if self.watchdog_interval_s and now - self._last_ping >= self.watchdog_interval_s:
            fields.append("WATCHDOG=1")
            self._last_ping = now
        if status is not None and now - self._last_status >= 5.0:
            fields.append(f"STATUS={status}")
            self._last_status = now
        if fields:
            self.send(*fields)
