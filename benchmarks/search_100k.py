"""Similarity search at 100k stored vectors, MySQL 9 and SQLite: how long `clipwatch search` takes.

    .venv/bin/python benchmarks/search_100k.py [--rows 100000] [--mysql-url mysql://...]

Fills a fresh table with random unit vectors (512 dimensions, as clip-ViT-B-32), then measures, for each
store: loading the vectors into the index, one exact query on the loaded index, the whole
`clipwatch search --vector --local` command (process start, loading and query), and the same command
answered by a running daemon. Not a test: it prints figures. Without --mysql-url it starts the private
MySQL 9 of scripts/mysql9.sh.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from clipwatch.config_loader import load_config
from clipwatch.store import Upsert, open_store
from clipwatch.sync import load_index
from clipwatch.testing import build_random_clip

ROOT = Path(__file__).resolve().parent.parent


def fill(env: dict[str, str], rows: int) -> None:
    store = open_store(load_config(None, env=env))
    store.init_schema(512)
    rng = np.random.default_rng(0)
    for start in range(0, rows, 2000):
        vectors = rng.standard_normal((min(2000, rows - start), 512)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        store.apply([Upsert(f"/bench/{start + i:07}.jpg", f"{start + i:064x}", 1, 1.0, "clip-ViT-B-32", v)
                     for i, v in enumerate(vectors)])
    store.close()


def measure(name: str, env: dict[str, str]) -> dict[str, float]:
    config = load_config(None, env=env)
    store = open_store(config)
    started = time.perf_counter()
    index, _ = load_index(store, "clip-ViT-B-32", 512)
    load_s = time.perf_counter() - started
    store.close()
    query = np.random.default_rng(1).standard_normal(512).astype(np.float32)
    query /= np.linalg.norm(query)
    times = []
    for _ in range(20):
        t = time.perf_counter()
        index.search(query, 5)
        times.append(time.perf_counter() - t)
    command = [sys.executable, "-m", "clipwatch.cli", "search", "--vector", json.dumps(query.tolist())]
    local = _median_run([*command, "--local"], env)
    daemon = subprocess.Popen([sys.executable, "-m", "clipwatch.cli", "run"], env={**os.environ, **env},
                              stdout=subprocess.PIPE, text=True)
    try:
        assert daemon.stdout is not None
        for line in daemon.stdout:  # wait until the daemon has loaded its index and runs
            if '"running"' in line:
                break
        served = _median_run(command, env)
    finally:
        daemon.terminate()
        daemon.wait(30)
    return {"rows": len(index), "load_s": load_s, "query_ms": statistics.median(times) * 1000,
            "local_s": local, "daemon_s": served}


def _median_run(command: list[str], env: dict[str, str]) -> float:
    times = []
    for _ in range(3):
        t = time.perf_counter()
        subprocess.run(command, env={**os.environ, **env}, check=True, capture_output=True)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--mysql-url", default=os.environ.get("CLIPWATCH_TEST_MYSQL_URL", ""))
    args = parser.parse_args()
    mysql_url = args.mysql_url or subprocess.run([str(ROOT / "scripts" / "mysql9.sh"), "start"], check=True,
                                                 capture_output=True, text=True).stdout.strip()
    table = f"bench_{int(time.time())}"
    with tempfile.TemporaryDirectory() as tmp:
        model = build_random_clip(Path(tmp) / "clip-ViT-B-32", tiny=True)  # the daemon needs a model to start
        (Path(tmp) / "empty").mkdir()
        stores = {"sqlite": f"sqlite://{tmp}/bench.sqlite3", "mysql": mysql_url}
        print(f"{'store':8} {'rows':>8} {'load into index':>16} {'one query':>10} {'search --local':>15} "
              f"{'search (daemon)':>16}")
        for name, url in stores.items():
            env = {"CLIPWATCH_STORE__URL": url, "CLIPWATCH_STORE__TABLE": table, "CLIPWATCH_LOG__LEVEL": "info",
                   "CLIPWATCH_LOG__FORMAT": "json", "CLIPWATCH_DAEMON__DATA_DIR": tmp,
                   "CLIPWATCH_MODEL__NAME": str(model), "CLIPWATCH_WATCH__PATHS": f"{tmp}/empty",
                   "CLIPWATCH_METRICS__LISTEN": "127.0.0.1:19464"}
            fill(env, args.rows)
            r = measure(name, env)
            print(f"{name:8} {r['rows']:>8} {r['load_s']:>14.2f} s {r['query_ms']:>7.1f} ms "
                  f"{r['local_s']:>13.2f} s {r['daemon_s']:>14.2f} s")
            if name == "mysql":
                store = open_store(load_config(None, env=env))
                store._fetch(f"DROP TABLE `{table}`")  # type: ignore[attr-defined]
                store._fetch(f"DROP TABLE IF EXISTS `{table}_deleted`, `{table}_decisions`, `{table}_moves`")  # type: ignore[attr-defined]
                store.close()


if __name__ == "__main__":
    main()
