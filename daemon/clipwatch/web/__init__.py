"""The HTTP side of the daemon, at `metrics.listen`: metrics, health, search, and the review pages.

    server.py   uvicorn in a thread (TLS, bounded connections)
    app.py      the Starlette app: every route, wired in one place
    access.py   who may reach what (users, sessions, basic auth, cross-site POSTs)
    users.py    the htpasswd users file (bcrypt)
    api.py      /healthz, POST /search and POST /check, with their bounds
    review.py   the review queue, thumbnails, decisions (thumbs.py makes the thumbnails)
"""

from __future__ import annotations

import os

from ..config import HTTPConfig
from ..logs import get_logger
from ..metrics import Metrics
from .access import is_loopback
from .api import CheckHandler, HealthHandler, SearchHandler
from .app import WebContext, build_app
from .review import Desk
from .server import WebServer

log = get_logger(__name__)


def serve(http: HTTPConfig, host: str, port: int, metrics: Metrics, search: SearchHandler | None,
          health: HealthHandler | None, desk: Desk | None = None, check: CheckHandler | None = None,
          health_token: str = "") -> WebServer:
    """Start the endpoint at metrics.listen; warn when review and search are off or nobody can log in."""
    loopback = is_loopback(host)
    app = build_app(WebContext(http, metrics, loopback, search, health, desk, check, health_token))
    server = WebServer(app, host, port, http.tls_cert, http.tls_key)
    log.info("http_listening", address=f"{host}:{server.port}", tls=server.tls,
             review=bool(http.users_file) or loopback, users_file=http.users_file or None)
    if not http.users_file and not loopback:
        log.warning("review_and_search_off", address=f"{host}:{server.port}", why="no users on a non-loopback address",
                    fix="set http.users_file (clipwatch user add NAME writes it); /metrics and /healthz stay on")
    elif http.users_file and not os.path.exists(http.users_file):
        log.warning("users_file_missing", users_file=http.users_file,
                    fix="clipwatch user add NAME creates it; until then nobody can log in")
    return server


__all__ = ["WebContext", "WebServer", "build_app", "serve"]
