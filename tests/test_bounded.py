"""Memory that could grow with the table or with time stays bounded: the change feed and the root listings
are read a page at a time, and the memory of refused files is capped and pruned (bounds: docs/behaviour.md).

What is measured is what the store hands over per query: no query returns more than a page, however many
rows there are. The pages are made small here so that a few hundred rows make many pages.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import clipwatch.intake
import clipwatch.scanner
import clipwatch.store.sql
from clipwatch.config import Config
from clipwatch.decisions import Decisions
from clipwatch.embedder import Embedder
from clipwatch.files import PathFilter
from clipwatch.health import Health
from clipwatch.index import VectorIndex
from clipwatch.intake import Intake
from clipwatch.metrics import Metrics
from clipwatch.pdq import FileHashes
from clipwatch.references import References
from clipwatch.scanner import reconcile
from clipwatch.store import Delete, Store, Upsert, open_store
from clipwatch.sync import IndexSync
from conftest import write_image


@pytest.fixture
def fetched(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[Store], list[int]]]:
    """Record how many rows each query of a store returned."""

    def watch(store: Store) -> list[int]:
        sizes: list[int] = []
        real = store._fetch  # type: ignore[attr-defined]

        def fetch(sql: str, params: Any = ()) -> list[tuple[Any, ...]]:
            rows: list[tuple[Any, ...]] = real(sql, params)
            sizes.append(len(rows))
            return rows

        monkeypatch.setattr(store, "_fetch", fetch)
        return sizes

    yield watch


def unit(n: int, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, 512)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_other_instances_changes_stream_through_the_sync_a_page_at_a_time(
        store_url: str, make_config: Callable[..., Config], fetched):
    ours, theirs = (open_store(make_config(store_url, store__instance=name)) for name in ("ours", "theirs"))
    try:
        for s in (ours, theirs):
            s.init_schema(512)
        since = ours.now() - timedelta(seconds=10)
        vectors = unit(300)
        ids = theirs.apply([Upsert(f"/theirs/{i}.jpg", f"{i:064x}", 1, 1.0, "m", v)
                            for i, v in enumerate(vectors)]).ids
        theirs.apply([Delete(f"/theirs/{i}.jpg") for i in range(40)])
        metrics = Metrics()
        index = VectorIndex(512)
        sync = IndexSync(ours, index, "m", since, 1.0, References(make_config(store_url), Embedder("unused")), 60.0,
                         metrics, Health(metrics, 1.0), Decisions(), page=25)
        sizes = fetched(ours)
        sync.sync_once()
        assert len(index) == 260
        assert all((ids[f"/theirs/{i}.jpg"] in index) == (i >= 40) for i in range(300))
        assert max(sizes) <= 25 and sum(sizes) >= 300  # every change read, never more than a page at once
    finally:
        ours.close()
        theirs.close()


def test_a_root_is_compared_with_the_store_a_chunk_and_a_page_at_a_time(
        store_url: str, make_config: Callable[..., Config], embedder: Embedder, monkeypatch: pytest.MonkeyPatch,
        fetched, tmp_path: Path):
    monkeypatch.setattr(clipwatch.store.sql, "PAGE", 30)
    monkeypatch.setattr(clipwatch.scanner, "CHUNK", 20)
    config = make_config(store_url)
    root = Path(config.watch.paths[0])
    store = open_store(config)
    try:
        store.init_schema(512)
        files = [write_image(root / f"{i:03}.jpg", seed=i, size=(8, 8)) for i in range(150)]
        vectors = unit(150)
        store.apply([Upsert(str(f), "0" * 64, f.stat().st_size, f.stat().st_mtime, "tiny-clip", v,
                            hashes=FileHashes("0" * 32))  # as this version writes rows: with the file's hashes
                     for f, v in zip(files, vectors, strict=True)])
        for f in files[:10]:
            f.unlink()  # gone: their rows must be found by the streamed listing
        write_image(root / "new.jpg", seed=999, size=(8, 8))

        intake = Intake(1000, 0.0, Metrics())
        sizes = fetched(store)
        counts = reconcile(str(root), store, PathFilter(config.watch.paths, config.watch.extensions, ()), intake,
                           "tiny-clip", Metrics(), settle=False)
        queued = [intake.queue.get_nowait() for _ in range(intake.queue.qsize())]
        assert (counts.files, counts.queued, counts.gone) == (141, 1, 10)
        assert sorted(c.path for c in queued if c.kind == "delete") == sorted(str(f) for f in files[:10])
        assert [c.path for c in queued if c.kind == "upsert"] == [str(root / "new.jpg")]
        assert max(sizes) <= 30  # no query handed over more than a page of the root's 150 rows
    finally:
        store.close()


def test_the_memory_of_refused_files_is_capped_and_pruned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(clipwatch.intake, "REFUSED_MAX", 10)
    intake = Intake(10, 0.0, Metrics())
    broken = []
    for i in range(25):
        path = tmp_path / f"broken-{i:02}.jpg"
        path.write_bytes(b"not an image %d" % i)
        intake.remember_refused(str(path))
        broken.append(path)

    def remembered(path: Path) -> bool:
        st = path.stat()
        return intake.refused_unchanged(str(path), st.st_size, st.st_mtime_ns)

    assert [p.name for p in broken if remembered(p)] == [p.name for p in broken[15:]]  # the newest ten only
    broken[20].unlink()
    broken[21].write_bytes(b"changed since it was refused")
    os.utime(broken[21], (1_600_000_000, 1_600_000_000))
    assert intake.prune_refused() == 2
    kept = broken[15:20] + broken[22:]
    assert [p.name for p in kept if remembered(p)] == [p.name for p in kept]  # the others are still remembered
    assert intake.queue.empty()  # pruning queues nothing: the next scan tries those files again
