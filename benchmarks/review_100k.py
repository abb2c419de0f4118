"""The review page at 100,000 rows of which 10,000 are flagged: its first screen, a deep page, a filtered
page, and a decision, on MySQL 9 and SQLite.

    .venv/bin/python benchmarks/review_100k.py [--rows 100000] [--flagged 10000] [--mysql-url mysql://...]

Fills a fresh table (random unit vectors; the flagged rows point at unflagged ones), serves the real app
(uvicorn, the Starlette app, a logged-in session) and times each request end to end over HTTP, median of
20 (and the slowest). `GET /healthz`, measured in the same run, is the baseline: the ratio says what the
page costs beyond a round trip through the server on this machine. The files do not exist, so the page
shows each side as "no longer here" and makes no thumbnails (thumbnails are separate requests, cached by
sha256). Not a test: it prints figures. Without --mysql-url it starts the private MySQL 9 of
scripts/mysql9.sh.
"""

from __future__ import annotations

import argparse
import http.client
import json
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from clipwatch.actions import Actions
from clipwatch.config_loader import load_config
from clipwatch.files import PathFilter
from clipwatch.logs import configure_logging
from clipwatch.metrics import Metrics
from clipwatch.store import ReviewQuery, Store, Upsert, open_store
from clipwatch.vocab import Status
from clipwatch.web import WebContext, WebServer, build_app
from clipwatch.web.review import Desk
from clipwatch.web.thumbs import Thumbnails
from clipwatch.web.users import set_user

ROOT = Path(__file__).resolve().parent.parent
MODEL = "clip-ViT-B-32"


def cpu() -> str:
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")),
                 platform.processor())
    flags = sorted({f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if re.search(rf"\b{f}\b", info)})
    return f"{model}; flags: {' '.join(flags) or 'none of avx2/avx512/amx'}"


def fill(store: Store, rows: int, flagged: int) -> None:
    store.init_schema(512)
    rng = np.random.default_rng(0)
    plain = rows - flagged
    ids: list[int] = []
    for start in range(0, rows, 2000):
        count = min(2000, rows - start)
        vectors = rng.standard_normal((count, 512)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        ops = []
        for i, v in enumerate(vectors):
            n = start + i
            if n < plain:
                ops.append(Upsert(f"/srv/uploads/{n:07}.jpg", f"{n:064x}", 100_000, 1.7e9, MODEL, v))
            else:
                ops.append(Upsert(f"/srv/uploads/{n:07}.jpg", f"{n:064x}", 100_000, 1.7e9, MODEL, v, Status.DUPLICATE,
                                  ids[n % len(ids)], float(0.97 + rng.random() * 0.03)))
        applied = store.apply(ops)
        ids += [applied.ids[op.path] for op in ops if op.status == Status.OK]


def timed(port: int, cookie: str, method: str, path: str, body: bytes | None = None) -> float:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    started = time.perf_counter()
    conn.request(method, path, body=body, headers={"Cookie": cookie, "Content-Type": "application/json"})
    response = conn.getresponse()
    response.read()
    elapsed = time.perf_counter() - started
    conn.close()
    if response.status != 200:
        raise SystemExit(f"{method} {path}: HTTP {response.status}")
    return elapsed


def measure(name: str, env: dict[str, str], rows: int, flagged: int, work: Path) -> dict[str, str]:
    config = load_config(None, env=env)
    store = open_store(config)
    fill(store, rows, flagged)
    set_user(str(work / "users"), "bench", "bench password")
    desk = Desk(store, threading.Lock(), Thumbnails(work / "thumbs", ["/srv/uploads"], str(work / "q"), 10**8, 10**8),
                Actions(store, PathFilter(["/srv/uploads"], ("jpg",), ()), str(work / "q"), lambda path: None), config)
    http_config = config.http.__class__(users_file=str(work / "users"))
    server = WebServer(build_app(WebContext(http_config, Metrics(), False, None, lambda: (True, {}), desk)),
                       "127.0.0.1", 0)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        conn.request("POST", "/login", body="user=bench&password=bench+password",
                     headers={"Content-Type": "application/x-www-form-urlencoded"})
        response = conn.getresponse()
        cookie = response.getheader("set-cookie", "").split(";")[0]
        conn.close()
        port = server.port

        def series(method: str, path: str, bodies: list[bytes | None] | None = None) -> tuple[float, float]:
            timed(port, cookie, method, path, bodies[0] if bodies else None)  # warm
            times = [timed(port, cookie, method, path, b) for b in (bodies[1:] if bodies else [None] * 20)]
            return statistics.median(times) * 1000, max(times) * 1000

        baseline = series("GET", "/healthz")
        first = series("GET", "/")
        flagged_ids = [r.row.id for r in store.review_queue(ReviewQuery(), 400)]
        deep_cursor = store.review_queue(ReviewQuery(), 5000)[-1].row
        deep = series("GET", f"/?before={deep_cursor.updated_at.isoformat()}%7C{deep_cursor.id}")
        filtered = series("GET", "/?status=duplicate&min_score=0.99&max_score=1")
        decide = series("POST", "/api/decide", [json.dumps({"ids": [i], "decision": "dismissed"}).encode()
                                                for i in flagged_ids[200:221]])
    finally:
        server.close()
        store.close()
    return {"store": name, "healthz": _ms(baseline), "first": _ms(first), "deep": _ms(deep),
            "filtered": _ms(filtered), "decide": _ms(decide),
            "ratio": f"{first[0] / baseline[0]:.0f}x / {decide[0] / baseline[0]:.0f}x"}


def _ms(figures: tuple[float, float]) -> str:
    return f"{figures[0]:.1f} ms (max {figures[1]:.1f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--flagged", type=int, default=10_000)
    parser.add_argument("--mysql-url")
    args = parser.parse_args()
    configure_logging("console", "warning", sys.stderr)
    mysql_url = args.mysql_url or subprocess.run([str(ROOT / "scripts" / "mysql9.sh"), "start"], check=True,
                                                 capture_output=True, text=True).stdout.strip()
    print(f"cpu: {cpu()}")
    print(f"{args.rows:,} rows, {args.flagged:,} flagged; each figure: median of 20 requests (max)")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, url in (("SQLite", f"sqlite://{tmp}/bench.sqlite3"), ("MySQL 9", mysql_url)):
            table = f"bench_review_{int(time.time())}"
            env = {"CLIPWATCH_STORE__URL": url, "CLIPWATCH_STORE__TABLE": table, "CLIPWATCH_STORE__INSTANCE": "bench",
                   "CLIPWATCH_DAEMON__DATA_DIR": tmp}
            work = Path(tmp) / name.replace(" ", "")
            work.mkdir()
            results.append(measure(name, env, args.rows, args.flagged, work))
            if url.startswith("mysql"):
                store = open_store(load_config(None, env=env))
                for suffix in ("", "_deleted", "_decisions", "_moves", "_actions"):
                    store._fetch(f"DROP TABLE IF EXISTS `{table}{suffix}`")  # type: ignore[attr-defined]
                store.close()
    columns = ("store", "healthz", "first", "deep", "filtered", "decide", "ratio")
    print("| store | /healthz (baseline) | first screen | page 100 | filtered | a decision | first screen, decision "
          "/ baseline |")
    print("| --- " * len(columns) + "|")
    for r in results:
        print("| " + " | ".join(r[c] for c in columns) + " |")


if __name__ == "__main__":
    main()
