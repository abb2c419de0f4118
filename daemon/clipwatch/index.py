"""The in-process similarity index: every stored vector of the configured model, searched exactly.

MySQL 9 Community has no vector distance function and no vector index, so similarity is computed
here: one contiguous float32 matrix of unit vectors (grown by doubling), searched with a matrix
product. Vectors are L2-normalised, so a dot product is the cosine similarity.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

import numpy as np


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

    def upsert(self, ids: Iterable[int], vectors: np.ndarray) -> None:
        """Add rows, or replace the vectors of rows already present."""
        ids = list(ids)
        vectors = np.asarray(vectors, dtype=np.float32).reshape(len(ids), self.dimension)
        with self._lock:
            for row_id, vector in zip(ids, vectors, strict=True):
                row = self._row_of.get(row_id)
                if row is None:
                    row = len(self._row_of)
                    if row == len(self._ids):
                        self._grow()
                    self._row_of[row_id] = row
                    self._ids[row] = row_id
                self._vectors[row] = vector

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
        query = np.asarray(query, dtype=np.float32).reshape(self.dimension)
        with self._lock:
            n = len(self._row_of)
            if n == 0 or k <= 0:
                return []
            scores = self._vectors[:n] @ query
            ids = self._ids[:n].copy()
        if k < n:
            top = np.argpartition(-scores, k - 1)[:k]
            top = top[np.argsort(-scores[top], kind="stable")]
        else:
            top = np.argsort(-scores, kind="stable")
        return [(int(ids[i]), float(scores[i])) for i in top]

    def nearest(self, query: np.ndarray) -> tuple[int, float] | None:
        best = self.search(query, 1)
        return best[0] if best else None

    def _grow(self) -> None:
        capacity = max(2 * len(self._ids), 1024)
        vectors = np.zeros((capacity, self.dimension), dtype=np.float32)
        vectors[: len(self._ids)] = self._vectors
        ids = np.zeros(capacity, dtype=np.int64)
        ids[: len(self._ids)] = self._ids
        self._vectors, self._ids = vectors, ids
