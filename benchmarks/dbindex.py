"""The similarity search in MariaDB (`index.where = "database"`) side by side with the in-memory index, on
the same vectors in the same run (issue 13). Not a test: it prints figures (docs/benchmarks.md).

    scripts/bench db [--rows 100000] [--quick]
    .venv/bin/python benchmarks/dbindex.py --mariadb-url mariadb://root@127.0.0.1:33079/clipwatch_test

(a) storing vectors with MariaDB's HNSW index maintained, in transactions of 32 rows as the daemon commits
    them, against the same table without the index (rows/s, at the table's size);
(b) the duplicate check, one image and per image in a batch of 32: the database's index against the
    in-memory index (exact below index.approximate_above) on the same rows;
(c) recall@1 against exact search, near copies of stored images and new images, for several
    mhnsw_ef_search values (index.ef_search);
(d) the daemon's start-up to READY and its memory, index.where = "database" against "memory";
(e) ingest of 1024x768 JPEGs end to end (`clipwatch scan`, in process, as ingest.py's (c)), into each
    table holding the rows: "database" against "memory".

Stored vectors are clustered like image embeddings (ingest.py's `clip_like`: a shared direction, themes,
nearest-neighbour cosines around 0.5), never isotropic noise: HNSW finds noise far more easily. The two
tables are kept between runs (filling them is most of the first run's time). The server's graph cache
(`mhnsw_max_cache_size`, server-wide) is set to hold the whole index, and printed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from ingest import CACHE, DIM, clip_like, env_for, free_port, image_set, print_results, result, say, timed, vector_space

from clipwatch import precision
from clipwatch.config_loader import load_config
from clipwatch.dbindex import DatabaseIndex, init_schema
from clipwatch.embedder import Embedder, cpu_count
from clipwatch.logs import configure_logging
from clipwatch.store import DeleteTree, Store, Upsert, open_store
from clipwatch.sync import load_index
from clipwatch.testing import build_random_clip

MODEL_DIR = CACHE / "clip-vit-b-32-random"  # ViT-B/32 with random weights (no model hub here)
MODEL = MODEL_DIR.name  # the stored rows are this model's, so the scans in (e) are compared with them
NOISE = 0.25  # near copies: a stored vector plus this much noise (cosine to it about 0.97), as ingest.py's


def table_env(url: str, name: str, where: str, model: Path = MODEL_DIR, watched: Path = Path("/nonexistent"),
              data: Path = Path("/tmp"), **extra: str) -> dict[str, str]:
    return env_for(url, name, model, watched, data, index__where=where, **extra)


def filled(url: str, name: str, where: str, rows: int, centres: np.ndarray, mean: np.ndarray) -> Store:
    """The table `name` holding `rows` clip_like vectors (seed 1: both tables hold the same), made once."""
    config = load_config(None, env=table_env(url, name, where))
    store = open_store(config)
    if store.table_dimension() is not None and store.count_vectors(MODEL) != rows:
        store._fetch(f"DROP TABLE IF EXISTS {store.t}")
    init_schema(store, config.index, DIM)
    if store.count_vectors(MODEL) == rows:
        return store
    rng = np.random.default_rng(1)
    started = time.perf_counter()
    for start in range(0, rows, 1000):
        vectors = clip_like(rng, min(1000, rows - start), centres, mean)
        store.apply([Upsert(f"/bench/{start + i:07}.jpg", f"{start + i:064x}", 1, 1.0, MODEL, v)
                     for i, v in enumerate(vectors)])
        if (start // 1000) % 20 == 19:
            say(f"    {start + 1000:,} rows, {(start + 1000) / (time.perf_counter() - started):.0f} rows/s so far")
    say(f"  filled {name}: {rows:,} rows in {time.perf_counter() - started:.0f} s (kept for the next run)")
    return store


def insert_rate(store: Store, rows: int, centres: np.ndarray, mean: np.ndarray) -> float:
    """Rows/s storing `rows` more vectors in transactions of 32, then removing them again."""
    rng = np.random.default_rng(99)
    vectors = clip_like(rng, rows, centres, mean)
    started = time.perf_counter()
    for start in range(0, rows, 32):
        store.apply([Upsert(f"/extra/{start + i:07}.jpg", f"e{start + i:063x}", 1, 1.0, MODEL, v)
                     for i, v in enumerate(vectors[start:start + 32])])
    rate = rows / (time.perf_counter() - started)
    store.apply([DeleteTree("/extra")])
    return rate


def queries(exact: np.ndarray, count: int, centres: np.ndarray, mean: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Near copies of stored vectors, and new images."""
    rng = np.random.default_rng(7)
    picked = exact[rng.integers(0, len(exact), count)]
    near = picked + NOISE * rng.standard_normal(picked.shape).astype(np.float32) / np.sqrt(DIM)
    near = (near / np.linalg.norm(near, axis=1, keepdims=True)).astype(np.float32)
    return near, clip_like(rng, count, centres, mean)


def daemon_start(env: dict[str, str]) -> tuple[float, float, float, float]:
    """Seconds from spawn to READY (the `running` log line), to the model loaded (imports included), the
    index's share, and RSS (MB) at READY."""
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "clipwatch.cli", "run"], text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env={**env, "CLIPWATCH_LOG__LEVEL": "info",
                                                           "CLIPWATCH_LOG__FORMAT": "json"})
    index_s, model_s, lines = 0.0, 0.0, []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            event = json.loads(line) if line.startswith("{") else {}
            if event.get("event") == "model_loaded":
                model_s = time.monotonic() - started
            if event.get("event") == "index_loaded":
                index_s = float(event["seconds"])
            if event.get("event") == "running":
                ready = time.monotonic() - started
                status = Path(f"/proc/{proc.pid}/status").read_text()
                rss = next(int(x.split()[1]) for x in status.splitlines() if x.startswith("VmRSS:")) / 1024
                return ready, model_s, index_s, rss
        raise RuntimeError("the daemon exited before READY:\n" + "".join(lines[-20:]))
    finally:
        proc.terminate()
        proc.wait(60)


def scan_rate(url: str, name: str, where: str, embedder: Embedder, files: list[Path], work: Path) -> float:
    """`clipwatch scan` of `files` in process (its start-up not counted) into the filled table, whose rows
    it is compared with; the scanned rows are removed afterwards."""
    from clipwatch.service import Service

    watched = work / f"{name}-watched"
    shutil.rmtree(watched, ignore_errors=True)
    watched.mkdir()
    for f in files:
        shutil.copyfile(f, watched / f.name)
    service = Service(load_config(None, env=table_env(url, name, where, Path(embedder.name), watched,
                                                       work / f"{name}-data")), embedder=embedder)
    service.open()
    started = time.perf_counter()
    try:
        service.scan()
        elapsed = time.perf_counter() - started
        assert service.store is not None
        service.store.apply([DeleteTree(str(watched))])
    finally:
        service.close()
    r = service.metrics.registry
    stages = {st: r.get_sample_value("clipwatch_stage_duration_seconds_sum", {"stage": st}) or 0.0
              for st in ("embed", "check", "write")}
    say(f"  {where}: {len(files) / elapsed:.1f} img/s; {elapsed:.1f} s, of which (worker thread, s) "
        + ", ".join(f"{k} {v:.2f}" for k, v in stages.items()))
    return len(files) / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mariadb-url", required=True)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--quick", action="store_true", help="20,000 rows, fewer queries and images")
    parser.add_argument("--only", default="abcde", help="which parts to run, e.g. 'de' (the tables are made "
                        "whatever the parts)")
    args = parser.parse_args()
    rows = 20_000 if args.quick else args.rows
    configure_logging("console", "warning")
    cpu, flags = precision.cpu()
    say(f"machine: {cpu}; flags: {' '.join(flags) or '-'}; {cpu_count()} cores")
    url, work = args.mariadb_url, Path(tempfile.mkdtemp(prefix="clipwatch-bench-db-"))
    centres, mean = vector_space()
    defaults = load_config(None, env=table_env(url, "x", "database")).index
    hnsw, plain = f"bench_hnsw_{rows}", f"bench_plain_{rows}"

    admin = open_store(load_config(None, env=table_env(url, "x", "memory")))
    cache = max(16 << 20, rows * 4096)  # room for the whole graph (measured: about 3 KB per row at M=32)
    admin._fetch("SET GLOBAL mhnsw_max_cache_size = %s", (cache,))
    version = admin._fetch("SELECT VERSION()")[0][0]
    say(f"server: MariaDB {version}; mhnsw_max_cache_size {cache / 2**20:,.0f} MiB; M = {defaults.hnsw_m}, "
        f"ef_search default {defaults.ef_search}; {rows:,} rows")
    admin.close()

    say("(a) storing vectors")
    plain_store = filled(url, plain, "memory", rows, centres, mean)
    hnsw_store = filled(url, hnsw, "database", rows, centres, mean)
    for label, store in (("with the HNSW index", hnsw_store), ("without a vector index", plain_store)):
        if "a" in args.only:
            rate = insert_rate(store, 640 if args.quick else 3200, centres, mean)
            result(f"store vectors {label}, transactions of 32, at {rows:,} rows", f"{rate:,.0f} rows/s")

    if "b" in args.only or "c" in args.only:
        duplicate_check(plain_store, hnsw_store, rows, 200 if args.quick else 1000, defaults.ef_search)
    if "d" in args.only:
        start_up(url, hnsw, plain, rows, work)
    if "e" in args.only:
        ingest(url, hnsw, plain, rows, 48 if args.quick else 192, work)
    plain_store.close()
    hnsw_store.close()
    shutil.rmtree(work, ignore_errors=True)
    print_results()
    return 0


def duplicate_check(plain_store: Store, hnsw_store: Store, rows: int, count: int, ef_search: int) -> None:
    say("(b), (c) the duplicate check, and recall against exact search")
    centres, mean = vector_space()
    memory, _ = load_index(plain_store, MODEL, DIM, approximate_above=0)
    exact_vectors = np.stack([v for v in (memory.get(i) for i in range(1, min(rows, 50_000) + 1)) if v is not None])
    near, new = queries(exact_vectors, count, centres, mean)
    database = DatabaseIndex(hnsw_store, MODEL, DIM, ef_search)
    for label, index in (("in memory, exact", memory), (f"MariaDB, ef_search {ef_search}", database)):
        one = timed(lambda index=index: index.search(new[0], 1), 20) * 1000
        batch = timed(lambda index=index: index.search_many(new[:32], 1), 5) * 1000 / 32
        result(f"duplicate check, {rows:,} rows, {label}: one image / per image in a batch of 32",
               f"{one:.2f} / {batch:.2f} ms", "<= 20 ms (batch)", batch <= 20)
    truth = {name: [h[0][0] for h in memory.search_many(q, 1)] for name, q in (("near", near), ("new", new))}
    for ef in (20, 100, ef_search, 1000):
        database.ef_search = ef
        for name, q in (("near copies", near), ("new images", new)):
            started = time.perf_counter()
            got = [h[0][0] if h else -1 for h in database.search_many(q, 1)]
            ms = (time.perf_counter() - started) * 1000 / len(q)
            recall = float(np.mean(np.asarray(got) == np.asarray(truth[name.split()[0]])))
            result(f"recall@1, {rows:,} rows, {name}, ef_search {ef}", f"{recall:.3f} ({ms:.1f} ms per query)",
                   ">= 0.99" if name == "near copies" else "", recall >= 0.99 if name == "near copies" else None)


def start_up(url: str, hnsw: str, plain: str, rows: int, work: Path) -> None:
    model_dir = model()
    say("(d) start-up to READY, and memory")
    for where, name in (("database", hnsw), ("memory", plain)):
        watched = work / f"start-{where}"
        watched.mkdir()
        env = table_env(url, name, where, model_dir, watched, work / f"start-{where}-data",
                        metrics__listen=f"127.0.0.1:{free_port()}")
        ready, model_s, index_s, rss = daemon_start(env)
        result(f"daemon start-up to READY, {rows:,} rows, index.where = {where}",
               f"{ready:.1f} s (imports and model {model_s:.1f} s, index {index_s:.2f} s); RSS {rss:,.0f} MB",
               "< 3 s" if where == "database" else "",
               ready < 3 if where == "database" else None)



def ingest(url: str, hnsw: str, plain: str, rows: int, images: int, work: Path) -> None:
    say("(e) ingest of 1024x768 JPEGs end to end")
    files = sorted(image_set("web", images, (1024, 768)).iterdir())
    embedder = Embedder(str(model()), device="cpu", precision="fp32")
    embedder.load()
    rates: dict[str, list[float]] = {}
    for where, name in (("memory", plain), ("database", hnsw), ("memory", plain), ("database", hnsw)):
        rate = scan_rate(url, name, where, embedder, files, work)
        rates.setdefault(where, []).append(rate)
    ratio = max(rates["database"]) / max(rates["memory"])
    result(f"scan of {len(files)} 1024x768 JPEGs into {rows:,} rows, database / memory (best of 2 each)",
           f"{max(rates['database']):.1f} / {max(rates['memory']):.1f} img/s = {ratio:.2f}x", ">= 0.90x",
           ratio >= 0.9)


def model() -> Path:
    if not (MODEL_DIR / "config.json").exists():
        build_random_clip(MODEL_DIR, tiny=False)
    return MODEL_DIR


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", str(cpu_count()))
    sys.exit(main())
