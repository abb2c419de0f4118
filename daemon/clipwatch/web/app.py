"""The Starlette app: every route of the HTTP endpoint, wired in one place.

    GET  /metrics          prometheus_client's own exposition (open unless http.protect_metrics)
    GET  /healthz          open unless http.protect_metrics
    POST /search           JSON similarity search (api.py)
    POST /check            an image's verdict, nothing stored (api.py, ../answers.py)
    GET  /login, POST /login, POST /logout
    GET  /                 the review queue; /thumb/{id}, /file/{id}, /history, POST /api/... (review.py)
    GET  /calibrate        thresholds learnt from the decisions (calibrate.py)

Sessions are signed cookies (Starlette's SessionMiddleware, itsdangerous) under a key made at start:
a restart logs everyone out, and there is no secret to configure or leak.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import make_asgi_app
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from ..config import HTTPConfig
from ..metrics import Metrics
from ..vocab import Refusal
from .access import Access, client_address, verify
from .api import CheckHandler, HealthHandler, ModelGate, SearchHandler
from .api import routes_for as api_routes
from .calibrate import handler as calibrate_page
from .review import Desk, ReviewPages, utc_minutes
from .users import LoginThrottle, Users

SESSION_MAX_AGE_S = 12 * 3600
PACKAGE = resources.files("clipwatch.web")


@dataclass(frozen=True)
class WebContext:
    """What the routes need from the daemon."""

    http: HTTPConfig
    metrics: Metrics
    loopback: bool  # metrics.listen is a loopback address
    search: SearchHandler | None = None
    health: HealthHandler | None = None
    desk: Desk | None = None  # the review pages, when the daemon has a store for them
    check: CheckHandler | None = None
    health_token: str = ""  # also lets /healthz in under http.protect_metrics (access.py)


def build_app(ctx: WebContext) -> Starlette:
    users = Users(ctx.http.users_file) if ctx.http.users_file else None
    throttle = LoginThrottle()
    templates = Jinja2Templates(directory=str(PACKAGE / "templates"))
    templates.env.globals["auth"] = users is not None
    templates.env.filters["filesize"] = _filesize
    templates.env.filters["timestamp"] = utc_minutes
    api = api_routes(ctx.search, ctx.health, ModelGate(ctx.http.search_concurrency, ctx.http.search_timeout_s),
                     ctx.http.max_body_bytes, ctx.metrics, ctx.check)

    async def login_page(request: Request) -> Response:
        return templates.TemplateResponse(request, "login.html", {"next": _local(request.query_params.get("next"))})

    async def login(request: Request) -> Response:
        form = await request.form()
        name, password = str(form.get("user", "")), str(form.get("password", ""))
        target = _local(str(form.get("next", "")))
        ok = await verify(users, throttle, client_address(request.scope), name, password) \
            if users is not None else False
        if ok is None:
            ctx.metrics.http_refused.labels(Refusal.THROTTLED).inc()
            return templates.TemplateResponse(request, "login.html", {"next": target, "throttled": True},
                                              status_code=429, headers={"Retry-After": "600"})
        if ok:
            request.session.clear()
            request.session["user"] = name
            return RedirectResponse(target, status_code=303)
        return templates.TemplateResponse(request, "login.html", {"next": target, "failed": True}, status_code=401)

    async def logout(request: Request) -> Response:
        request.session.clear()
        return RedirectResponse("/login", status_code=303)

    routes: list[Any] = [
        Route("/metrics", _ASGIApp(make_asgi_app(ctx.metrics.registry)), methods=["GET"]),
        Route("/healthz", api["/healthz"], methods=["GET"]),
        Route("/search", api["/search"], methods=["POST"]),
        Route("/check", api["/check"], methods=["POST"]),
        Route("/login", login_page, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        *_review(ctx.desk, templates),
        Mount("/static", StaticFiles(directory=str(PACKAGE / "static")), name="static"),
    ]
    middleware = [
        Middleware(SessionMiddleware, secret_key=secrets.token_urlsafe(32), session_cookie="clipwatch_session",
                   max_age=SESSION_MAX_AGE_S, same_site="strict", https_only=bool(ctx.http.tls_cert)),
        Middleware(Access, users=users, loopback=ctx.loopback, protect_metrics=ctx.http.protect_metrics,
                   metrics=ctx.metrics, throttle=throttle, health_token=ctx.health_token),
    ]
    return Starlette(routes=routes, middleware=middleware)


def _review(desk: Desk | None, templates: Jinja2Templates) -> list[Route]:
    if desk is None:
        return []
    handlers = ReviewPages(desk, templates).routes()
    if desk.config is not None:
        handlers["/calibrate"] = calibrate_page(desk, templates, desk.config)
    return [Route(path, handler, methods=["POST"] if path.startswith("/api/") else ["GET"])
            for path, handler in handlers.items()]


def _filesize(size: int) -> str:
    if size < 1024:
        return f"{size:,} bytes"
    return f"{size / 1024:.1f} KiB" if size < 1024 ** 2 else f"{size / 1024 ** 2:.1f} MiB"


class _ASGIApp:
    """Starlette takes a plain function for a request handler; prometheus_client's app is an ASGI one."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)


def _local(target: str | None) -> str:
    """Where to go after logging in: a path on this server only (never another site)."""
    if not target or not target.startswith("/") or target.startswith("//") or urlsplit(target).netloc:
        return "/"
    return target
