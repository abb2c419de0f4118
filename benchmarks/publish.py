"""The publish gate at a trickle: from "complete in incoming" to "published", with the defaults.

    scripts/bench publish [--seconds 120] [--rate 2] [--mysql-url URL]
    .venv/bin/python benchmarks/publish.py [--seconds 120] [--rate 2] [--mysql-url URL]

Two runs in the same process, same images (1024x768 JPEGs), same trickle, each on a fresh daemon with the
default settings (settle, batch wait, precision auto) on the embedded SQLite store (or MySQL 9 when a URL
is given):

(A) baseline, no gate: from the file being renamed into the watched directory to its row being committed
    (the store polled every 10 ms): what clipwatch took before the gate existed;
(B) the gate: from the file being renamed into incoming to it being visible in the publish directory
    (polled every 5 ms): the window the issue is about, end to end.

The model has the exact ViT-B/32 architecture with random weights (no model hub here). Not a test: it
prints figures, p50 / p95 / p99 / max, and (B) against (A).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ingest import CACHE, Daemon, drop_table, env_for, free_port, image_set, print_results, result, say

from clipwatch import precision
from clipwatch.config_loader import load_config
from clipwatch.embedder import cpu_count
from clipwatch.logs import configure_logging
from clipwatch.store import open_store
from clipwatch.testing import build_random_clip


def trickle(files: list[Path], incoming: Path, staging: Path, rate: float,
            arrived: Callable[[str], bool], poll_s: float) -> list[float]:
    """Rename `files` into `incoming` at `rate` per second; seconds until `arrived(path)` for each."""
    written: dict[str, float] = {}
    landed: dict[str, float] = {}
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set() or len(landed) < len(written):
            for path in [p for p in list(written) if p not in landed]:
                if arrived(path):
                    landed[path] = time.monotonic()
            time.sleep(poll_s)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    start = time.monotonic()
    for i, f in enumerate(files):
        time.sleep(max(0.0, start + i / rate - time.monotonic()))
        shutil.copyfile(f, staging / f.name)
        os.rename(staging / f.name, incoming / f.name)
        written[str(incoming / f.name)] = time.monotonic()
    deadline = time.monotonic() + 120
    while len(landed) < len(written) and time.monotonic() < deadline:
        time.sleep(0.1)
    stop.set()
    poller.join(5)
    if len(landed) < len(written):
        raise TimeoutError(f"{len(written) - len(landed)} files never arrived")
    return sorted(landed[p] - written[p] for p in written)


def run(label: str, files: list[Path], work: Path, model: Path, url: str, rate: float, gate: bool) -> list[float]:
    incoming, public, staging = work / f"{label}-incoming", work / f"{label}-public", work / f"{label}-staging"
    for d in (incoming, public, staging):
        d.mkdir()
    extra = {"watch__publish_dir": str(public)} if gate else {}
    env = env_for(url or f"sqlite://{work}/{label}.sqlite3", f"bench_publish_{label}", model, incoming,
                  work / f"{label}-data", metrics__listen=f"127.0.0.1:{free_port()}", **extra)
    del env["CLIPWATCH_MODEL__PRECISION"]  # the defaults: auto
    if url:
        drop_table(env)  # a fresh table; a SQLite file in the fresh work directory is new anyway
    store = open_store(load_config(None, env=env))
    daemon = Daemon(env)
    try:
        daemon.wait_ready()
        if gate:
            def arrived(path: str) -> bool:
                return os.path.exists(os.path.join(public, os.path.relpath(path, incoming)))
        else:
            def arrived(path: str) -> bool:
                return bool(store.get_many([path]))
        return trickle(files, incoming, staging, rate, arrived, 0.005 if gate else 0.01)
    finally:
        daemon.stop()
        store.close()


def figures(latencies: list[float]) -> dict[str, float]:
    def at(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))]
    return {"p50": at(0.5), "p95": at(0.95), "p99": at(0.99), "max": latencies[-1]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--rate", type=float, default=2.0)
    parser.add_argument("--mysql-url", default="", help="MySQL 9 instead of the default SQLite store")
    args = parser.parse_args()
    configure_logging("console", "warning")
    cpu, flags = precision.cpu()
    say(f"machine: {cpu}; flags: {' '.join(flags) or '-'}; {cpu_count()} cores")
    model = CACHE / "clip-vit-b-32-random"
    if not (model / "config.json").exists():
        build_random_clip(model, tiny=False)
    count = int(args.seconds * args.rate)
    files = sorted(image_set("web", max(count, 192), (1024, 768)).iterdir())[:count]
    work = Path(tempfile.mkdtemp(prefix="clipwatch-bench-publish-"))
    store = "MySQL 9" if args.mysql_url else "SQLite"
    try:
        say(f"(A) no gate: {count} files at {args.rate:g}/s, file complete -> row committed ({store})")
        base = figures(run("baseline", files, work, model, args.mysql_url, args.rate, gate=False))
        say("  " + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in base.items()))
        say(f"(B) publish gate: {count} files at {args.rate:g}/s, file complete in incoming -> published ({store})")
        gated = figures(run("gate", files, work, model, args.mysql_url, args.rate, gate=True))
        say("  " + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in gated.items()))
        result(f"row committed, no gate, {args.rate:g} img/s, defaults, p99", f"{base['p99'] * 1000:.0f} ms "
               f"(p50 {base['p50'] * 1000:.0f} ms)")
        result(f"complete in incoming -> published, {args.rate:g} img/s, defaults, p99",
               f"{gated['p99'] * 1000:.0f} ms (p50 {gated['p50'] * 1000:.0f} ms, max {gated['max'] * 1000:.0f} ms; "
               f"{gated['p99'] / base['p99']:.2f}x the baseline's p99)", "< 1 s", gated["p99"] < 1.0)
        result("CPU", f"{cpu}, {' '.join(flags)}, {cpu_count()} cores")
        print_results()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
