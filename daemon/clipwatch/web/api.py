"""The JSON endpoints that are not pages: /healthz, POST /search and POST /check, with their bounds.

    GET  /healthz   200 {"status": "ok", ...} or 503 {"status": "unhealthy", "problems": [...]}
    POST /search    {"vector": [...]} | {"text": "..."} | {"image": "<base64 of an image file>"}, "top": K
                    -> {"table": ..., "store": ..., "index_size": N, "results": [{"id", "path", "similarity"}]}
    POST /check     the image file's bytes as the body
                    -> {"status", "action", "match_id", "match_path", "score", "label", "nearest", "sha256"}

A search or a check is bounded three ways: its body (`http.max_body_bytes`, else 413), the number of searches
running the model at once (`http.search_concurrency`; the model is shared with ingest, which takes
turns with them on its lock), and its time (`http.search_timeout_s`: waiting for a slot or running,
else 503). A search past its time still finishes in its thread (a forward pass cannot be interrupted)
and keeps its slot until then, so slow searches cannot pile up behind the caller's back.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import Histogram
from starlette.requests import Request
from starlette.responses import JSONResponse

from ..errors import ClipwatchError
from ..logs import get_logger
from ..metrics import Metrics
from ..vocab import Refusal

log = get_logger(__name__)
SearchHandler = Callable[[dict[str, Any]], dict[str, Any]]
CheckHandler = Callable[[bytes], dict[str, Any]]
HealthHandler = Callable[[], tuple[bool, dict[str, Any]]]


class TooLarge(Exception):
    pass


class Refused(Exception):
    def __init__(self, why: Refusal, message: str) -> None:
        super().__init__(message)
        self.why = why


class ModelGate:
    """At most `slots` pieces of model work at once, each answered within `timeout_s`."""

    def __init__(self, slots: int, timeout_s: float) -> None:
        self.slots, self.timeout_s = slots, timeout_s
        self._free: asyncio.Semaphore | None = None  # made on the server's loop, at the first request

    async def run(self, work: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        if self._free is None:
            self._free = asyncio.Semaphore(self.slots)
        free = self._free
        deadline = time.monotonic() + self.timeout_s
        try:
            await asyncio.wait_for(free.acquire(), self.timeout_s)
        except TimeoutError:
            raise Refused(Refusal.BUSY, f"{self.slots} searches are running; try again later") from None
        running = asyncio.get_running_loop().run_in_executor(None, work)
        running.add_done_callback(lambda _: free.release())  # the slot is free when the work is done
        try:
            return await asyncio.wait_for(asyncio.shield(running), max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            raise Refused(Refusal.TOO_SLOW, f"the search took longer than {self.timeout_s:g} s") from None


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise TooLarge
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise TooLarge
    return bytes(body)


def routes_for(search: SearchHandler | None, health: HealthHandler | None, gate: ModelGate, max_body: int,
               metrics: Metrics, check: CheckHandler | None = None) -> dict[str, Callable[[Request], Any]]:
    async def healthz(request: Request) -> JSONResponse:
        if health is None:
            return JSONResponse({"error": "health is not served by this process"}, status_code=404)
        healthy, body = health()
        return JSONResponse(body, status_code=200 if healthy else 503)

    async def bounded(request: Request, what: str, work: Callable[[bytes], dict[str, Any]],
                      seconds: Histogram) -> JSONResponse:
        """Read the body within max_body, run `work` on it within the model gate; errors as JSON."""
        started = time.monotonic()
        try:
            body = await read_body(request, max_body)
            answer = await gate.run(lambda: work(body))
        except TooLarge:
            metrics.http_refused.labels(Refusal.TOO_LARGE).inc()
            return JSONResponse({"error": f"the body is over http.max_body_bytes ({max_body})"}, status_code=413)
        except Refused as exc:
            metrics.http_refused.labels(exc.why).inc()
            return JSONResponse({"error": str(exc)}, status_code=503, headers={"Retry-After": "5"})
        except (ValueError, ClipwatchError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        except Exception:
            log.exception(f"{what}_failed")
            return JSONResponse({"error": f"{what} failed; see the daemon's log"}, status_code=500)
        seconds.observe(time.monotonic() - started)
        return JSONResponse(answer)

    async def search_endpoint(request: Request) -> JSONResponse:
        if search is None:
            return JSONResponse({"error": "search is not served by this process"}, status_code=404)
        return await bounded(request, "search", lambda body: search(_json_object(body)), metrics.searches)

    async def check_endpoint(request: Request) -> JSONResponse:
        if check is None:
            return JSONResponse({"error": "check is not served by this process"}, status_code=404)
        return await bounded(request, "check", check, metrics.checks)

    return {"/healthz": healthz, "/search": search_endpoint, "/check": check_endpoint}


def _json_object(body: bytes) -> dict[str, Any]:
    query = json.loads(body or b"null")
    if not isinstance(query, dict):
        raise ValueError("expected a JSON object")
    return query
