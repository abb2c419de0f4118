"""The daemon's HTTP endpoint (`metrics.listen`): uvicorn serving the Starlette app in a thread.

The socket is bound here, in the caller's thread, so that a port in use or a bad TLS file fails the
daemon's start with a clear error instead of a thread dying quietly. uvicorn leaves signals to the
daemon when it runs outside the main thread.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import uvicorn

from ..errors import ConfigError

START_TIMEOUT_S = 10.0
MAX_CONNECTIONS = 100  # more at once get 503 from uvicorn: a flood cannot take the daemon's threads


class WebServer:
    def __init__(self, app: Any, host: str, port: int, tls_cert: str = "", tls_key: str = "") -> None:
        self.tls = bool(tls_cert)
        config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off", server_header=False,
                                ssl_certfile=tls_cert or None, ssl_keyfile=tls_key or None,
                                limit_concurrency=MAX_CONNECTIONS, timeout_keep_alive=5,
                                timeout_graceful_shutdown=2)
        try:
            config.load()  # reads the certificate and key now
        except (OSError, ValueError) as exc:
            raise ConfigError(f"http.tls_cert / http.tls_key: cannot load them ({exc})") from None
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._socket = socket.socket(family, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._socket.bind((host, port))
        except OSError as exc:
            self._socket.close()
            raise ConfigError(f"metrics.listen: cannot listen on {host}:{port} ({exc.strerror})") from None
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._socket]},
                                        name="http", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._server.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        if not self._server.started:
            self.close()
            raise ConfigError(f"metrics.listen: the HTTP server did not start on {host}:{port}")

    @property
    def port(self) -> int:
        return int(self._socket.getsockname()[1])

    def close(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=5)
        self._socket.close()
