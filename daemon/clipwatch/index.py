"""The in-process similarity index: every stored vector of the configured model, searched exactly.

MySQL 9 Community has no vector distance function and no vector index, so similarity is computed
here: one contiguous float32 matrix of unit vectors, searched with matrix products. Vectors are
L2-normalised, so a dot product is the cosine similarity. A batch of queries (the worker checks a whole
batch at once) is one matrix-matrix product, walked over the stored rows in blocks so that the scores
never need more than a few MB. The matrix grows by GROWTH (not doubling) and `reserve` sizes it exactly
at load, so memory stays close to the raw vector bytes.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

import numpy as np

GROWTH = 1.2
BLOCK_ROWS = 65_536  # stored rows scored per step of a batched search


class VectorIndex:
    """Thread-safe: the worker adds its own rows, the sync thread other instances' rows and deletions."""

    def __init__(self, dimension: int, capacity: int = 1024) -> None:
        self.dimension = dimension
        self._vectors = np.zeros((capacity, dimension), dtype=np.float32)
        self._ids = np.zeros(capacity, dtype=np.int64)
        self._row_of: dict[int, int] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._row_of)

    def __contains__(self, row_id: int) -> bool:
        return row_id in self._row_of

    def reserve(self, capacity: int) -> None:
        """Make room for `capacity` rows at once (at load, when the row count is known)."""
        with self._lock:
            if capacity > len(self._ids):
                self._resize(capacity)

    def nbytes(self) -> int:
        """Memory held by the matrix and the id array (not the id map)."""
        return int(self._vectors.nbytes + self._ids.nbytes)

    def upsert(self, ids: Iterable[int], vectors: np.ndarray) -> None:
        """Add rows, or replace the vectors of rows already present."""
        id_array = np.fromiter(ids, dtype=np.int64)
        keys: list[int] = id_array.tolist()  # plain ints: the smallest dict keys
        vectors = np.asarray(vectors, dtype=np.float32).reshape(len(keys), self.dimension)
        with self._lock:
            if len(self._row_of) + len(keys) > len(self._ids):
                self._resize(max(int(len(self._ids) * GROWTH), len(self._row_of) + len(keys), 1024))
            rows = np.empty(len(keys), dtype=np.int64)
            row_of = self._row_of
            for j, row_id in enumerate(keys):
                row = row_of.get(row_id)
                if row is None:
                    row = row_of[row_id] = len(row_of)
                rows[j] = row
            self._ids[rows] = id_array
            self._vectors[rows] = vectors

    def remove(self, ids: Iterable[int]) -> None:
        with self._lock:
            for row_id in ids:
                row = self._row_of.pop(row_id, None)
                if row is None:
                    continue
                last = len(self._row_of)  # the old last row moves into the hole
                if row != last:
                    self._vectors[row] = self._vectors[last]
                    self._ids[row] = self._ids[last]
                    self._row_of[int(self._ids[row])] = row

    def get(self, row_id: int) -> np.ndarray | None:
        with self._lock:
            row = self._row_of.get(row_id)
            return None if row is None else self._vectors[row].copy()

    def search(self, query: np.ndarray, k: int = 5) -> list[tuple[int, float]]:
        """The k stored rows most similar to `query` (a unit vector), best first: (id, cosine)."""
        return self.search_many(np.asarray(query, dtype=np.float32).reshape(1, self.dimension), k)[0]

    def search_many(self, queries: np.ndarray, k: int = 5) -> list[list[tuple[int, float]]]:
        """`search` for each row of `queries` (m, dimension), in one pass over the stored vectors."""
        queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dimension)
        m = len(queries)
        with self._lock:
            n = len(self._row_of)
            if n == 0 or k <= 0 or m == 0:
                return [[] for _ in range(m)]
            k = min(k, n)
            best_scores = np.full((m, 0), -np.inf, dtype=np.float32)
            best_rows = np.zeros((m, 0), dtype=np.int64)
            for start in range(0, n, BLOCK_ROWS):
                block = self._vectors[start:min(start + BLOCK_ROWS, n)]
                scores = queries @ block.T  # (m, rows in block)
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
        return [[(int(i), float(sc)) for i, sc in zip(ids, scores, strict=True)]
                for ids, scores in zip(best_ids, best_scores, strict=True)]

    def nearest(self, query: np.ndarray) -> tuple[int, float] | None:
        best = self.search(query, 1)
        return best[0] if best else None

    def nearest_many(self, queries: np.ndarray) -> list[tuple[int, float] | None]:
        return [hits[0] if hits else None for hits in self.search_many(queries, 1)]

    def _resize(self, capacity: int) -> None:
        vectors = np.zeros((capacity, self.dimension), dtype=np.float32)
        n = len(self._row_of)
        vectors[:n] = self._vectors[:n]
        ids = np.zeros(capacity, dtype=np.int64)
        ids[:n] = self._ids[:n]
        self._vectors, self._ids = vectors, ids
