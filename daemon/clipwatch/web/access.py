"""Who may reach what: the gate in front of every route but /metrics and /healthz.

- `/metrics` and `/healthz` are open (the Prometheus convention) unless `http.protect_metrics`. Then
  `/healthz` also takes the daemon's own health token (`Authorization: Bearer`, from
  `<data_dir>/health.token`, new at every start, readable by the daemon's user only): `clipwatch health`
  (a container's HEALTHCHECK) needs no user of the review pages.
- Everything else needs a user from `http.users_file`: a session (the login page) or HTTP basic auth
  (scripts, `curl -u`). With no users file it answers only on a loopback `metrics.listen`, to anyone on
  this host; on any other address it is off (404, and a warning at start names the key).
- Every POST is checked for a cross-site origin first (Fetch metadata `Sec-Fetch-Site`, else `Origin`
  against `Host`), the way Go's net/http CrossOriginProtection does: a browser always sends one of
  them on a cross-site POST, so no form token is needed; clients that send neither (curl) are not
  browsers and carry no ambient credentials. Session cookies are also SameSite=Strict.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import os
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse, RedirectResponse, Response

from ..metrics import Metrics
from ..vocab import Refusal
from .users import LoginThrottle, Users

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]
OPEN = ("/metrics", "/healthz")
PUBLIC = ("/login", "/static/")  # the login page and what it needs
HEALTH = "/healthz"
HEALTH_TOKEN_FILE = "health.token"
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
SAME_SITE = ("same-origin", "none")  # `none`: typed in the address bar or a bookmark
# On every answer: no framing (one-click actions must not be clickjacked), scripts and styles from this
# server only (no inline script runs, whatever a file name or a label holds), no type sniffing of files.
HEADERS = [(b"content-security-policy", b"default-src 'self'; img-src 'self'; script-src 'self'; "
                                        b"style-src 'self'; frame-ancestors 'none'; form-action 'self'"),
           (b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
           (b"referrer-policy", b"same-origin")]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def write_health_token(data_dir: Path) -> str:
    """A new token for /healthz in `<data_dir>/health.token` (owner-only, replaced atomically)."""
    token = secrets.token_urlsafe(32)
    path = data_dir / HEALTH_TOKEN_FILE
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(token + "\n")
    os.replace(tmp, path)
    return token


def read_health_token(data_dir: Path) -> str:
    """The running daemon's health token, or "" (no daemon started here yet, or not readable by this user)."""
    try:
        return (data_dir / HEALTH_TOKEN_FILE).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return ""


class Access:
    """ASGI middleware; sets scope["user"] to the user's name ("" for the loopback-only mode)."""

    def __init__(self, app: ASGIApp, users: Users | None, loopback: bool, protect_metrics: bool,
                 metrics: Metrics, throttle: LoginThrottle, health_token: str = "") -> None:
        self.app, self.users, self.loopback, self.protect_metrics = app, users, loopback, protect_metrics
        self.metrics, self.throttle, self.health_token = metrics, throttle, health_token

    async def __call__(self, scope: Scope, receive: Callable[[], Awaitable[Any]],
                       send: Callable[[Any], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *HEADERS]
            await send(message)

        await self._gate(scope, receive, send_with_headers)

    async def _gate(self, scope: Scope, receive: Callable[[], Awaitable[Any]],
                    send: Callable[[Any], Awaitable[None]]) -> None:
        path, method = scope["path"], scope["method"]
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        if method not in SAFE_METHODS and _cross_site(headers):
            await self._refuse(Refusal.CROSS_SITE, 403, "cross-site request refused", scope, receive, send)
            return
        if (path in OPEN and not self.protect_metrics) or path.startswith(PUBLIC) or self._health_token(path, headers):
            await self.app(scope, receive, send)
            return
        if self.users is None:
            if self.loopback:
                scope["user"] = ""
                await self.app(scope, receive, send)
            else:
                await self._refuse(Refusal.OFF, 404, "the review pages and search are off on a non-loopback "
                                   "address until http.users_file names the users", scope, receive, send)
            return
        user = await self._user(scope, headers)
        if user is THROTTLED:
            await self._refuse(Refusal.THROTTLED, 429, "too many failed logins from this address; try again in "
                               "10 minutes", scope, receive, send)
            return
        if user is None:
            await self._unauthenticated(scope, headers, receive, send)
            return
        scope["user"] = user
        await self.app(scope, receive, send)

    def _health_token(self, path: str, headers: dict[str, str]) -> bool:
        scheme, _, given = headers.get("authorization", "").partition(" ")
        return (path == HEALTH and bool(self.health_token) and scheme.lower() == "bearer"
                and hmac.compare_digest(given.strip().encode(), self.health_token.encode()))

    async def _user(self, scope: Scope, headers: dict[str, str]) -> str | None:
        assert self.users is not None
        session = scope.get("session") or {}
        name = session.get("user")
        if isinstance(name, str) and name in self.users.names():
            return name
        given = _basic(headers.get("authorization", ""))
        if given is None:
            return None
        name, password = given
        ok = await verify(self.users, self.throttle, client_address(scope), name, password)
        return THROTTLED if ok is None else name if ok else None

    async def _unauthenticated(self, scope: Scope, headers: dict[str, str], receive: Callable[[], Awaitable[Any]],
                               send: Callable[[Any], Awaitable[None]]) -> None:
        self.metrics.http_refused.labels(Refusal.UNAUTHENTICATED).inc()
        response: Response
        if scope["method"] == "GET" and "text/html" in headers.get("accept", "") and "authorization" not in headers:
            target = scope["path"] + ("?" + scope["query_string"].decode() if scope["query_string"] else "")
            response = RedirectResponse("/login?next=" + quote(target, safe=""), status_code=303)
        else:
            response = JSONResponse({"error": "log in, or send HTTP basic auth of a user in http.users_file"},
                                    status_code=401, headers={"WWW-Authenticate": 'Basic realm="clipwatch", '
                                                                                  'charset="UTF-8"'})
        await response(scope, receive, send)

    async def _refuse(self, why: Refusal, status: int, message: str, scope: Scope,
                      receive: Callable[[], Awaitable[Any]], send: Callable[[Any], Awaitable[None]]) -> None:
        self.metrics.http_refused.labels(why).inc()
        await JSONResponse({"error": message}, status_code=status)(scope, receive, send)


THROTTLED = "\0throttled"  # never a user name (users.NAME allows no control characters)


async def verify(users: Users, throttle: LoginThrottle, address: str, name: str, password: str) -> bool | None:
    """The password check behind the login form and basic auth; None when this client is throttled."""
    if not throttle.allowed(address, name):
        return None
    ok = await run_in_threadpool(users.check, name, password)
    if not ok:
        throttle.failed(address, name)
    return ok


def client_address(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else ""


def _cross_site(headers: dict[str, str]) -> bool:
    fetch_site = headers.get("sec-fetch-site")
    if fetch_site is not None:
        return fetch_site not in SAME_SITE
    origin = headers.get("origin")
    if origin is None:
        return False
    return origin == "null" or urlsplit(origin).netloc != headers.get("host", "")


def _basic(header: str) -> tuple[str, str] | None:
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        name, sep, password = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return (name, password) if sep else None
