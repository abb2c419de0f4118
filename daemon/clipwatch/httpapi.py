"""The daemon's HTTP endpoint (`metrics.listen`): Prometheus metrics, and similarity search.

    GET  /metrics   Prometheus text format (prometheus_client's own WSGI app)
    GET  /healthz   200 {"status": "ok", ...} or 503 {"status": "unhealthy", "problems": [...]}
    POST /search    {"vector": [...]} | {"text": "..."} | {"image": "<base64 of an image file>"}, "top": K
                    -> {"table": ..., "store": ..., "index_size": N, "results": [{"id", "path", "similarity"}]}

`clipwatch search` asks a running daemon first: its index and model are already loaded, so an answer
takes milliseconds instead of the seconds it takes to load every vector from the store.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

from .errors import ClipwatchError
from .logs import get_logger

log = get_logger(__name__)
MAX_BODY = 64 * 1024 * 1024
SearchHandler = Callable[[dict[str, Any]], dict[str, Any]]
HealthHandler = Callable[[], tuple[bool, dict[str, Any]]]


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Requests are not logged: a scrape every few seconds would drown the log."""


class HTTPServer:
    def __init__(self, host: str, port: int, registry: CollectorRegistry, search: SearchHandler | None,
                 health: HealthHandler | None = None) -> None:
        metrics_app = make_wsgi_app(registry)
        self._search, self._health = search, health

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            if environ.get("PATH_INFO") == "/search":
                return self._handle_search(environ, start_response)
            if environ.get("PATH_INFO") == "/healthz" and self._health is not None:
                healthy, body = self._health()
                return _json(start_response, "200 OK" if healthy else "503 Service Unavailable", body)
            metrics: Iterable[bytes] = metrics_app(environ, start_response)
            return metrics

        server_class = type("Server", (ThreadingWSGIServer,), {
            "address_family": socket.AF_INET6 if ":" in host else socket.AF_INET})
        self._server: Any = make_server(host, port, app, server_class, handler_class=_QuietHandler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="http", daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self._server.server_port)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def _handle_search(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if self._search is None:
            return _json(start_response, "404 Not Found", {"error": "search is not served by this process"})
        if environ.get("REQUEST_METHOD") != "POST":
            return _json(start_response, "405 Method Not Allowed", {"error": "POST a JSON query"})
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = -1
        if not 0 < length <= MAX_BODY:
            return _json(start_response, "413 Content Too Large", {"error": f"body must be 1 to {MAX_BODY} bytes"})
        try:
            request = json.loads(environ["wsgi.input"].read(length))
            if not isinstance(request, dict):
                raise ValueError("expected a JSON object")
            return _json(start_response, "200 OK", self._search(request))
        except (ValueError, ClipwatchError) as exc:
            return _json(start_response, "400 Bad Request", {"error": str(exc)})
        except Exception:
            log.exception("search_failed")
            return _json(start_response, "500 Internal Server Error", {"error": "search failed; see the daemon's log"})


def _json(start_response: Callable[..., Any], status: str, body: dict[str, Any]) -> list[bytes]:
    data = json.dumps(body, ensure_ascii=False).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return [data]
