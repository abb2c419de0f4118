"""The review queue: flagged rows side by side with what they matched, and the decisions taken on them.

    GET  /                 the queue, newest first; ?status=&label=&min_score=&max_score=&instance=&before=
    GET  /thumb/{id}       a row's thumbnail (only files under a root or the quarantine; else 404)
    GET  /file/{id}        a row's file, the same way
    GET  /reference/{id}   for a prohibited row: a thumbnail of the reference image its label names
    POST /api/decide       {"ids": [...], "decision": "dismissed" | "confirmed"} -> {"said": [...]}
    POST /api/quarantine   {"id": N}: move row N's file into the quarantine (actions.py)
    POST /api/release      {"id": N}: move it back, dismiss its verdict, judge it again
    GET  /history          every action, newest first, each with an undo; POST /api/undo {"id": entry}

The HTTP threads share one store connection of their own (`Desk`), one request at a time; a store that
cannot be reached answers 503 and is reconnected at the next request.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.templating import Jinja2Templates

from ..actions import Actions
from ..config import Config
from ..errors import ClipwatchError, StoreError
from ..logs import get_logger
from ..references import References
from ..review import decide
from ..store import ActionRecord, ReviewItem, ReviewQuery, Store
from ..vocab import BANK_SIGNALS, Decision, Status
from .thumbs import Thumbnails

log = get_logger(__name__)
PAGE_SIZE = 50
T = TypeVar("T")


class Desk:
    """What the review pages do with the store and the files."""

    def __init__(self, store: Store, lock: threading.Lock, thumbnails: Thumbnails, actions: Actions,
                 config: Config | None = None, references: References | None = None) -> None:
        self.store, self.lock, self.thumbnails, self.actions = store, lock, thumbnails, actions
        self.config = config  # for /calibrate: the thresholds and the target precision
        self.references = references  # the reference image a prohibited row matched

    def with_store(self, work: Callable[[Store], T]) -> T:
        with self.lock:
            try:
                return work(self.store)
            except StoreError:
                self.store.reconnect()
                raise

    def queue(self, query: ReviewQuery) -> list[ReviewItem]:
        return self.with_store(lambda s: s.review_queue(query, PAGE_SIZE))

    def reference_of(self, row_id: int) -> tuple[str, str] | None:
        rows = self.with_store(lambda s: s.rows_by_id([row_id]))
        label = rows[row_id].label if row_id in rows and rows[row_id].status == Status.PROHIBITED else None
        return self.references.example(label) if label is not None and self.references is not None else None

    def path_and_sha(self, row_id: int) -> tuple[str, str] | None:
        rows = self.with_store(lambda s: s.rows_by_id([row_id]))
        return (rows[row_id].path, rows[row_id].sha256) if row_id in rows else None

    def decide(self, ids: Sequence[int], decision: Decision, by: str) -> list[str]:
        return self.with_store(lambda s: decide(s, ids, decision, by))

    def act(self, deed: str, target: int, by: str) -> str:
        work = {"quarantine": self.actions.quarantine, "release": self.actions.release, "undo": self.actions.undo}
        return self.with_store(lambda _: work[deed](target, by))

    def history(self, before: int | None) -> list[ActionRecord]:
        return self.with_store(lambda s: s.history(before, PAGE_SIZE))


@dataclass(frozen=True)
class Side:
    """One file of a pair as the page shows it."""

    id: int | None
    path: str
    size: int | None
    mtime: float | None
    instance: str | None
    present: bool
    dimensions: tuple[int, int] | None


class ReviewPages:
    """The handlers of the review pages; `routes()` maps each path to one."""

    def __init__(self, desk: Desk, templates: Jinja2Templates) -> None:
        self.desk, self.templates = desk, templates

    def routes(self) -> dict[str, Callable[[Request], Any]]:
        act = self.act_endpoint
        return {"/": self.queue_page, "/thumb/{id:int}": self.thumb, "/file/{id:int}": self.file,
                "/reference/{id:int}": self.reference,
                "/history": self.history_page, "/api/decide": self.decide_endpoint, "/api/quarantine": act,
                "/api/release": act, "/api/undo": act}

    async def queue_page(self, request: Request) -> Response:
        try:
            query = parse_query(request.query_params)
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        try:
            items = await run_in_threadpool(self.desk.queue, query)
        except StoreError as exc:
            return self.templates.TemplateResponse(
                request, "error.html", {"message": f"the store cannot be reached: {exc}"}, status_code=503)
        pairs = await run_in_threadpool(lambda: [_pair(item, self.desk.thumbnails) for item in items])
        references = self.desk.references
        with_image = {i.row.label for i in items if i.row.label and references and references.example(i.row.label)}
        after = items[-1].row if len(items) == PAGE_SIZE else None
        params = {k: v for k, v in request.query_params.items() if k != "before" and v}
        return self.templates.TemplateResponse(request, "review.html", {
            "user": request.scope.get("user", ""), "pairs": pairs, "filters": params, "with_image": with_image,
            "next": {**params, "before": f"{after.updated_at.isoformat()}|{after.id}"} if after else None,
            "first_page": query.before is None})

    async def thumb(self, request: Request) -> Response:
        found = await run_in_threadpool(self.desk.path_and_sha, int(request.path_params["id"]))
        return _jpeg(await run_in_threadpool(self.desk.thumbnails.get, *found) if found else None,
                     "no such image here")

    async def reference(self, request: Request) -> Response:
        found = await run_in_threadpool(self.desk.reference_of, int(request.path_params["id"]))
        return _jpeg(await run_in_threadpool(self.desk.thumbnails.get, *found, True) if found else None,
                     "no reference image for this row")

    async def file(self, request: Request) -> Response:
        found = await run_in_threadpool(self.desk.path_and_sha, int(request.path_params["id"]))
        real = self.desk.thumbnails.resolve(found[0]) if found else None
        if real is None:
            return Response("no such image here", status_code=404, media_type="text/plain")
        return FileResponse(real, headers={"Cache-Control": "private, no-cache", "Content-Disposition": "inline"})

    async def decide_endpoint(self, request: Request) -> Response:
        try:
            body = json.loads(await request.body())
            ids = [int(i) for i in body["ids"]]
            decision = Decision(body["decision"])
        except (ValueError, KeyError, TypeError):
            return JSONResponse({"error": 'expected {"ids": [...], "decision": "dismissed" | "confirmed"}'},
                                status_code=400)
        by = request.scope.get("user") or "local"
        answer = await _answer(lambda: self.desk.decide(ids, decision, f"{by} (web)"), (ClipwatchError,), 404)
        if answer.status_code == 200:
            log.info("decided", by=by, decision=decision, ids=ids)
        return answer

    async def act_endpoint(self, request: Request) -> Response:
        deed = request.url.path.rsplit("/", 1)[1]
        try:
            target = int(json.loads(await request.body())["id"])
        except (ValueError, KeyError, TypeError):
            return JSONResponse({"error": 'expected {"id": N}'}, status_code=400)
        by = request.scope.get("user") or "local"
        answer = await _answer(lambda: [self.desk.act(deed, target, f"{by} (web)")], (ClipwatchError, OSError), 409)
        if answer.status_code == 200:
            log.info("review_action", by=by, deed=deed, target=target)
        return answer

    async def history_page(self, request: Request) -> Response:
        before = request.query_params.get("before")
        try:
            entries = await run_in_threadpool(self.desk.history, int(before) if before else None)
        except ValueError:
            return JSONResponse({"error": "before: expected a history entry id"}, status_code=400)
        undone = {e.undoes for e in entries if e.undoes}
        return self.templates.TemplateResponse(request, "history.html", {
            "user": request.scope.get("user", ""), "entries": entries, "undone": undone,
            "next": entries[-1].id if len(entries) == PAGE_SIZE else None})


def _jpeg(data: bytes | None, missing: str) -> Response:
    if data is None:
        return Response(missing, status_code=404, media_type="text/plain")
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})


async def _answer(work: Callable[[], list[str]], refused: tuple[type[BaseException], ...], status: int) -> Response:
    """{"said": [...]} from a decision or an action, or why not: 503 when the store cannot be reached,
    `status` for what the action refuses (an unknown id, a file that cannot move)."""
    try:
        said = await run_in_threadpool(work)
    except StoreError as exc:
        return JSONResponse({"error": f"the store cannot be reached: {exc}"}, status_code=503)
    except refused as exc:
        return JSONResponse({"error": str(exc)}, status_code=status)
    return JSONResponse({"said": said})


def parse_query(params: Any) -> ReviewQuery:
    """The filters of the queue from the URL; a bad value is a ValueError naming it."""
    def number(name: str) -> float | None:
        value = params.get(name) or None
        try:
            return None if value is None else float(value)
        except ValueError:
            raise ValueError(f"{name}: expected a number, got {value!r}") from None

    status = params.get("status") or None
    if status is not None and status not in (Status.DUPLICATE, Status.PROHIBITED):
        raise ValueError(f"status: expected duplicate or prohibited, got {status!r}")
    before = None
    if params.get("before"):
        when, _, row_id = params["before"].rpartition("|")
        try:
            before = (datetime.fromisoformat(when).replace(tzinfo=None), int(row_id))
        except ValueError:
            raise ValueError("before: expected the cursor of a next-page link") from None
    return ReviewQuery(status=Status(status) if status else None, label=params.get("label") or None,
                       min_score=number("min_score"), max_score=number("max_score"),
                       instance=params.get("instance") or None, before=before)


def _pair(item: ReviewItem, thumbnails: Thumbnails) -> dict[str, Any]:
    r = item.row
    upload = _side(r.id, r.path, item.size, item.mtime, r.instance, thumbnails)
    match = None
    if r.match_id is not None and r.match_path is not None:
        match = _side(r.match_id, r.match_path, item.match_size, item.match_mtime, item.match_instance, thumbnails)
    return {"row": r, "upload": upload, "match": match, "flagged_at": utc_minutes(r.updated_at.replace(tzinfo=UTC)),
            "ours": r.instance == thumbnails.instance, "quarantined": not thumbnails.under_root(r.path),
            "match_movable": match is not None and match.present and item.match_instance == thumbnails.instance
            and thumbnails.under_root(match.path),
            "banked": r.status == Status.PROHIBITED and r.signal in BANK_SIGNALS}  # a hash list's match


def _side(row_id: int, path: str, size: int | None, mtime: float | None, instance: str | None,
          thumbnails: Thumbnails) -> Side:
    real = thumbnails.resolve(path)
    return Side(row_id, path, size, mtime, instance, real is not None, thumbnails.dimensions(real) if real else None)


def utc_minutes(moment: datetime | float) -> str:
    """A date as the pages show it (a datetime in UTC, or a Unix time)."""
    when = datetime.fromtimestamp(moment, UTC) if isinstance(moment, int | float) else moment
    return when.strftime("%Y-%m-%d %H:%M UTC")
