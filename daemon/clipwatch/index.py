"""The in-process similarity index: every stored vector of the configured model.

MySQL 9 Community has no vector distance function and no vector index, so similarity is computed
here: one contiguous float32 matrix of unit vectors, searched with matrix products. Vectors are
L2-normalised, so a dot product is the cosine similarity. A batch of queries (the worker checks a whole
batch at once) is one matrix-matrix product, walked over the stored rows in blocks so that the scores
never need more than a few MB. The matrix grows by GROWTH (not doubling) and `reserve` sizes it exactly
at load, so memory stays close to the raw vector bytes.

Above `index.approximate_above` rows, an approximate index (faiss IVF with 4-bit scalar-quantised codes,
`ApproximateIndex`) is built in a background thread from the matrix. Once ready it proposes CANDIDATES
rows per query from `index.nprobe` of its lists, and those are re-scored exactly against the float32
matrix: scores stay exact, only a miss of the true nearest row is possible (recall@1 measured in
docs/benchmarks.md, with why faiss IVF and not HNSW). The codes add about 0.2x the raw vector bytes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Collection, Iterable, Iterator
from typing import Any

import numpy as np

from .logs import get_logger

log = get_logger(__name__)
GROWTH = 1.2
BLOCK_ROWS = 131_072  # stored rows scored per step of a batched search (scores: 16 MB for 32 queries)
CANDIDATES = 32  # rows the approximate index proposes per query, re-scored exactly
TRAIN_PER_LIST = 40  # training vectors per IVF list (faiss wants at least 39)
BUILD_CHUNK = 20_000  # rows added to the approximate index per hold of the lock


class ApproximateIndex:
    """faiss IVF over 4-bit scalar-quantised codes, keyed by row id. Not thread-safe: VectorIndex locks."""

    def __init__(self, dimension: int, rows: int, nprobe: int, sample: np.ndarray) -> None:
        import faiss

        lists = max(16, min(4096, int(np.sqrt(rows))))  # 1,000 lists at 1M rows
        lists = min(lists, max(1, len(sample) // TRAIN_PER_LIST))
        quantizer = faiss.IndexFlatIP(dimension)
        self.index: Any = faiss.IndexIVFScalarQuantizer(quantizer, dimension, lists, faiss.ScalarQuantizer.QT_4bit,
                                                        faiss.METRIC_INNER_PRODUCT)
        self.index.cp.niter = 10
        self.index.train(np.ascontiguousarray(sample[:lists * TRAIN_PER_LIST]))
        self.index.nprobe = min(nprobe, lists)
        self._quantizer = quantizer  # faiss does not own it from Python: keep it alive
        self.lists = lists

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        self.index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), ids.astype(np.int64))

    def remove(self, ids: np.ndarray) -> None:
        if len(ids):
            self.index.remove_ids(ids.astype(np.int64))

    def candidates(self, queries: np.ndarray, k: int) -> np.ndarray:
        """(m, k) row ids, -1 where a query's lists held fewer."""
        _, ids = self.index.search(queries, k)
        return np.asarray(ids)

    def nbytes(self) -> int:
        return int(self.index.ntotal * (self.index.code_size + 8) + self.lists * self.index.d * 4)


class VectorIndex:
    """Thread-safe: the worker adds its own rows, the sync thread other instances' rows and deletions."""

    def __init__(self, dimension: int, capacity: int = 1024, approximate_above: int = 0, nprobe: int = 32) -> None:
        self.dimension = dimension
        self._vectors = np.zeros((capacity, dimension), dtype=np.float32)
        self._ids = np.zeros(capacity, dtype=np.int64)
        self._row_of: dict[int, int] = {}
        self._lock = threading.Lock()
        self.approximate_above, self.nprobe = approximate_above, nprobe
        self._ann: ApproximateIndex | None = None  # answers searches once built
        self._building = False
        self._dirty: set[int] = set()  # ids changed while the approximate index was being built

    @property
    def approximate(self) -> bool:
        """True when searches go through the approximate index."""
        return self._ann is not None

    def __len__(self) -> int:
        return len(self._row_of)

    def bound(self, store: object) -> VectorIndex:
        """This index, for a thread with another store connection: it asks no store (see DatabaseIndex)."""
        return self

    def __contains__(self, row_id: int) -> bool:
        return row_id in self._row_of

    def wait_until_approximate(self, timeout: float) -> bool:
        """For tests and benchmarks: wait (with a deadline) for a build in progress to finish."""
        deadline = time.monotonic() + timeout
        while self._building and time.monotonic() < deadline:
            time.sleep(0.05)
        return self._ann is not None

    def reserve(self, capacity: int) -> None:
        """Make room for `capacity` rows at once (at load, when the row count is known)."""
        with self._lock:
            if capacity > len(self._ids):
                self._resize(capacity)

    def nbytes(self) -> int:
        """Memory held by the matrix, the id array and the approximate index (not the id map)."""
        return int(self._vectors.nbytes + self._ids.nbytes + (self._ann.nbytes() if self._ann else 0))

    def upsert(self, ids: Iterable[int], vectors: np.ndarray) -> None:
        """Add rows, or replace the vectors of rows already present."""
        id_array = np.fromiter(ids, dtype=np.int64)
        keys: list[int] = id_array.tolist()  # plain ints: the smallest dict keys
        vectors = np.asarray(vectors, dtype=np.float32).reshape(len(keys), self.dimension)
        with self._lock:
            row_of = self._row_of
            first = len(row_of)
            if row_of.keys().isdisjoint(keys) and len(set(keys)) == len(keys):  # all new (as at load): C speed
                self._reserve_for(first + len(keys))
                row_of.update(zip(keys, range(first, first + len(keys)), strict=True))
                rows = np.arange(first, first + len(keys), dtype=np.int64)
            else:
                self._reserve_for(first + sum(1 for k in set(keys) if k not in row_of))
                rows = np.empty(len(keys), dtype=np.int64)
                for j, row_id in enumerate(keys):
                    row = row_of.get(row_id)
                    if row is None:
                        row = row_of[row_id] = len(row_of)
                    rows[j] = row
            self._ids[rows] = id_array
            self._vectors[rows] = vectors
            self._follow(id_array, vectors)
            build = (self.approximate_above > 0 and len(row_of) >= self.approximate_above and self._ann is None
                     and not self._building)
            self._building = self._building or build
        if build:
            threading.Thread(target=self._build, name="index-build", daemon=True).start()

    def remove(self, ids: Iterable[int]) -> None:
        with self._lock:
            removed = []
            for row_id in ids:
                row = self._row_of.pop(row_id, None)
                if row is None:
                    continue
                removed.append(row_id)
                last = len(self._row_of)  # the old last row moves into the hole
                if row != last:
                    self._vectors[row] = self._vectors[last]
                    self._ids[row] = self._ids[last]
                    self._row_of[int(self._ids[row])] = row
                    if self._building:
                        self._dirty.add(int(self._ids[row]))  # moved to a row the build may have passed
            if removed:
                self._follow(np.asarray(removed, dtype=np.int64), None)

    def _follow(self, ids: np.ndarray, vectors: np.ndarray | None) -> None:
        """Keep the approximate index in step with the matrix (lock held). `vectors` None: removed."""
        if self._building:
            self._dirty.update(ids.tolist())
        elif self._ann is not None:
            self._ann.remove(ids)
            if vectors is not None:
                self._ann.add(ids, vectors)

    def _build(self) -> None:
        """Build the approximate index from the matrix, a chunk per hold of the lock, then catch up with
        what changed meanwhile. Searches stay exact until it is done."""
        started = time.monotonic()
        try:
            with self._lock:
                n = len(self._row_of)
                rng = np.random.default_rng(0)
                sample = self._vectors[np.sort(rng.choice(n, min(n, 4096 * TRAIN_PER_LIST), replace=False))]
            ann = ApproximateIndex(self.dimension, n, self.nprobe, sample)
            del sample
            done = 0
            while True:
                with self._lock:
                    n = len(self._row_of)
                    if done >= n:
                        dirty = np.fromiter(self._dirty, dtype=np.int64)
                        ann.remove(dirty)
                        present = [i for i in dirty.tolist() if i in self._row_of]
                        if present:
                            rows = np.asarray([self._row_of[i] for i in present], dtype=np.int64)
                            ann.add(self._ids[rows], self._vectors[rows])
                        self._ann, self._building, self._dirty = ann, False, set()
                        break
                    end = min(done + BUILD_CHUNK, n)
                    ann.add(self._ids[done:end], self._vectors[done:end])
                    done = end
            log.info("approximate_index_built", vectors=n, lists=ann.lists, nprobe=ann.index.nprobe,
                     seconds=round(time.monotonic() - started, 1))
        except Exception:
            log.exception("approximate_index_failed", action="searches stay exact")
            with self._lock:
                self._building, self._dirty = False, set()
            self.approximate_above = 0  # do not try again in a loop

    def get(self, row_id: int) -> np.ndarray | None:
        with self._lock:
            row = self._row_of.get(row_id)
            return None if row is None else self._vectors[row].copy()

    def search(self, query: np.ndarray, k: int = 5, exclude: Collection[int] = ()) -> list[tuple[int, float]]:
        """The k stored rows most similar to `query` (a unit vector), best first: (id, cosine)."""
        return self.search_many(np.asarray(query, dtype=np.float32).reshape(1, self.dimension), k, exclude)[0]

    def search_many(self, queries: np.ndarray, k: int = 5,
                    exclude: Collection[int] = ()) -> list[list[tuple[int, float]]]:
        """`search` for each row of `queries` (m, dimension), in one pass over the stored vectors. Rows whose
        id is in `exclude` are never answered (a file's own earlier version, rows rewritten or deleted by
        the batch being judged)."""
        queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dimension)
        m = len(queries)
        with self._lock:
            n = len(self._row_of)
            skip = np.asarray(sorted(self._row_of[i] for i in exclude if i in self._row_of), dtype=np.int64)
            k = min(k, n - len(skip))
            if k <= 0 or m == 0:
                return [[] for _ in range(m)]
            if self._ann is not None and k <= CANDIDATES:
                return self._search_approximate(queries, k, skip)
            if k == 1:  # the duplicate check: a running argmax, no partial sorts
                return self._nearest_exact(queries, n, skip)
            best_scores = np.full((m, 0), -np.inf, dtype=np.float32)
            best_rows = np.zeros((m, 0), dtype=np.int64)
            for start, scores in self._scored_blocks(queries, n, skip):
                if k < scores.shape[1]:
                    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
                else:
                    top = np.broadcast_to(np.arange(scores.shape[1]), (m, scores.shape[1]))
                best_scores = np.concatenate([best_scores, np.take_along_axis(scores, top, 1)], axis=1)
                best_rows = np.concatenate([best_rows, top + start], axis=1)
                if best_scores.shape[1] > k:
                    keep = np.argpartition(-best_scores, k - 1, axis=1)[:, :k]
                    best_scores = np.take_along_axis(best_scores, keep, 1)
                    best_rows = np.take_along_axis(best_rows, keep, 1)
            order = np.argsort(-best_scores, axis=1, kind="stable")
            best_scores = np.take_along_axis(best_scores, order, 1)
            best_ids = self._ids[np.take_along_axis(best_rows, order, 1)]
        return [[(int(i), float(sc)) for i, sc in zip(ids, scores, strict=True) if sc > -np.inf]
                for ids, scores in zip(best_ids, best_scores, strict=True)]

    def _scored_blocks(self, queries: np.ndarray, n: int, skip: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, scores of every query against the block), block by block; skipped rows score -inf."""
        for start in range(0, n, BLOCK_ROWS):
            end = min(start + BLOCK_ROWS, n)
            scores = queries @ self._vectors[start:end].T
            inside = skip[(skip >= start) & (skip < end)]
            if len(inside):
                scores[:, inside - start] = -np.inf
            yield start, scores

    def _nearest_exact(self, queries: np.ndarray, n: int, skip: np.ndarray) -> list[list[tuple[int, float]]]:
        """The best row of each query over the first n rows, block by block (lock held)."""
        m = len(queries)
        best = np.full(m, -np.inf, dtype=np.float32)
        best_rows = np.zeros(m, dtype=np.int64)
        everyone = np.arange(m)
        for start, scores in self._scored_blocks(queries, n, skip):
            top = scores.argmax(axis=1)
            top_scores = scores[everyone, top]
            better = top_scores > best
            best[better], best_rows[better] = top_scores[better], top[better] + start
        return [[(int(self._ids[r]), float(sc))] if sc > -np.inf else [] for r, sc in zip(best_rows, best, strict=True)]

    def _search_approximate(self, queries: np.ndarray, k: int, skip: np.ndarray) -> list[list[tuple[int, float]]]:
        """Candidates from the approximate index, re-scored exactly against the matrix (lock held)."""
        assert self._ann is not None
        skipped = set(skip.tolist())
        results = []
        for query, candidates in zip(queries, self._ann.candidates(queries, CANDIDATES), strict=True):
            rows = np.asarray([r for r in (self._row_of.get(i) for i in candidates.tolist())
                               if r is not None and r not in skipped], dtype=np.int64)
            scores = self._vectors[rows] @ query
            top = np.argsort(-scores, kind="stable")[:k]
            results.append([(int(self._ids[rows[j]]), float(scores[j])) for j in top])
        return results

    def _reserve_for(self, rows: int) -> None:
        if rows > len(self._ids):
            self._resize(max(int(len(self._ids) * GROWTH), rows, 1024))

    def _resize(self, capacity: int) -> None:
        vectors = np.zeros((capacity, self.dimension), dtype=np.float32)
        n = len(self._row_of)
        vectors[:n] = self._vectors[:n]
        ids = np.zeros(capacity, dtype=np.int64)
        ids[:n] = self._ids[:n]
        self._vectors, self._ids = vectors, ids
