"""GET /calibrate: the calibration report (calibration.py) as a page, with its chart drawn server-side
as SVG (no script, no chart library, nothing fetched from elsewhere)."""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.templating import Jinja2Templates

from ..calibration import Report, pdq_report, report_for
from ..config import Config
from ..store import Store
from ..vocab import Status
from .review import Desk

WIDTH, HEIGHT, PAD = 720, 220, 30


def handler(desk: Desk, templates: Jinja2Templates, config: Config) -> Any:
    async def calibrate_page(request: Request) -> Response:
        def read(store: Store) -> list[Report]:
            decisions = store.decisions()
            copies = pdq_report(config, decisions, lambda shas: store.pdq_by_sha256(
                shas, config.duplicates.pdq_min_quality))
            return [report_for(config, decisions, Status.DUPLICATE), copies,
                    report_for(config, decisions, Status.PROHIBITED)]

        reports = await run_in_threadpool(desk.with_store, read)
        return templates.TemplateResponse(request, "calibrate.html", {
            "user": request.scope.get("user", ""), "reports": [(r, chart(r)) for r in reports]})

    return calibrate_page


def chart(report: Report) -> dict[str, Any]:
    """Bars of confirmed (up) and dismissed (stacked) per similarity bin, the precision and recall curves,
    and the current and suggested thresholds as vertical lines; coordinates for the template's SVG."""
    if not report.histogram:
        return {}
    low, high = report.histogram[0][0], report.histogram[-1][1]
    tallest = max(p + n for _, _, p, n in report.histogram) or 1

    def x(value: float) -> float:
        return round(PAD + (value - low) / (high - low) * (WIDTH - 2 * PAD), 1)

    def y(fraction: float) -> float:
        return round(HEIGHT - PAD - fraction * (HEIGHT - 2 * PAD), 1)

    bars = []
    for a, b, p, n in report.histogram:
        left, width = x(a), max(1.0, x(b) - x(a) - 1)
        bars.append({"x": left, "w": width, "p_y": y(p / tallest), "p_h": round(y(0) - y(p / tallest), 1),
                     "n_y": y((p + n) / tallest), "n_h": round(y(p / tallest) - y((p + n) / tallest), 1),
                     "title": f"{a:.4f}-{b:.4f}: {p} confirmed, {n} dismissed"})
    inside = [pt for pt in report.curve if low <= pt.threshold <= high]
    return {"width": WIDTH, "height": HEIGHT, "bars": bars, "low": low, "high": high, "base": y(0), "top": y(1),
            "precision": " ".join(f"{x(pt.threshold)},{y(pt.precision)}" for pt in inside),
            "recall": " ".join(f"{x(pt.threshold)},{y(pt.recall)}" for pt in inside),
            "current": x(report.current) if low <= report.current <= high else None,
            "suggested": x(report.suggested) if report.suggested is not None else None}
