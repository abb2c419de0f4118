"""The PDQ index: every stored row's perceptual hash, for the duplicate check's copy signal.

Rows of every instance made by the configured model (as the vector index: a match's score is the two
vectors' cosine, and rows of another model are re-embedded by the next scans), only those whose hash
quality reaches `duplicates.pdq_min_quality` (a match needs both hashes usable). Always in memory, also
with `index.where = "database"` (no database here answers Hamming distances): 32 bytes and an id per row,
40 MB at 1,000,000 rows, loaded at start from the `pdq` column and kept in step by the index sync.

Searched by brute force over a contiguous (n, 32) byte matrix with faiss's Hamming k-NN (`knn_hamming`:
popcounts over the matrix, no copy): exact, and a few milliseconds per query at a million rows
(docs/benchmarks.md). Deletions swap the last row into the hole, as `VectorIndex` does.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Iterable, Sequence

import numpy as np

from .pdq import BYTES

GROWTH = 1.2


class PerceptualIndex:
    """Thread-safe: the worker adds its own rows, the sync thread other instances' rows and deletions."""

    def __init__(self, min_quality: int, capacity: int = 1024) -> None:
        self.min_quality = min_quality
        self._codes = np.zeros((capacity, BYTES), dtype=np.uint8)
        self._ids = np.zeros(capacity, dtype=np.int64)
        self._row_of: dict[int, int] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._row_of)

    def nbytes(self) -> int:
        return int(self._codes.nbytes + self._ids.nbytes)

    def upsert(self, rows: Iterable[tuple[int, bytes | None, int | None]]) -> None:
        """(id, hash, quality) of rows written or changed: kept if usable, else forgotten."""
        keep: list[tuple[int, bytes]] = []
        drop: list[int] = []
        for row_id, code, quality in rows:
            if code is not None and quality is not None and quality >= self.min_quality:
                keep.append((row_id, code))
            else:
                drop.append(row_id)
        with self._lock:
            self._remove_locked(drop)
            if not keep:
                return
            row_of = self._row_of
            self._reserve_for(len(row_of) + sum(1 for i, _ in keep if i not in row_of))
            rows = np.fromiter((row_of.setdefault(i, len(row_of)) for i, _ in keep), dtype=np.int64, count=len(keep))
            self._ids[rows] = [i for i, _ in keep]
            self._codes[rows] = np.frombuffer(b"".join(c for _, c in keep), dtype=np.uint8).reshape(-1, BYTES)

    def upsert_hex(self, rows: Iterable[tuple[int, str | None, int | None]]) -> None:
        """`upsert` with hashes as the store keeps them (64 hex digits)."""
        self.upsert((i, None if h is None else bytes.fromhex(h), q) for i, h, q in rows)

    def remove(self, ids: Iterable[int]) -> None:
        with self._lock:
            self._remove_locked(ids)

    def code_of(self, row_id: int) -> bytes | None:
        with self._lock:
            row = self._row_of.get(row_id)
            return None if row is None else self._codes[row].tobytes()

    def nearest_many(self, queries: Sequence[bytes], k: int, exclude: Collection[int] = ()) -> list[
            list[tuple[int, int]]]:
        """For each query hash, the k stored rows nearest to it (id, distance in bits), nearest first, leaving
        out `exclude`."""
        if not queries:
            return []
        q = np.frombuffer(b"".join(queries), dtype=np.uint8).reshape(len(queries), BYTES)
        with self._lock:
            n = len(self._row_of)
            present = sum(1 for i in exclude if i in self._row_of)
            want = min(n, k + present)
            if want <= 0:
                return [[] for _ in queries]
            import faiss

            distances, rows = faiss.knn_hamming(q, self._codes[:n], want)
            ids = self._ids[rows]
        return [[(int(i), int(d)) for i, d in zip(row_ids, dist, strict=True) if int(i) not in exclude][:k]
                for row_ids, dist in zip(ids, distances, strict=True)]

    def _remove_locked(self, ids: Iterable[int]) -> None:
        for row_id in ids:
            row = self._row_of.pop(row_id, None)
            if row is None:
                continue
            last = len(self._row_of)
            if row != last:
                self._codes[row] = self._codes[last]
                self._ids[row] = self._ids[last]
                self._row_of[int(self._ids[row])] = row

    def _reserve_for(self, rows: int) -> None:
        if rows > len(self._ids):
            capacity = max(int(len(self._ids) * GROWTH), rows, 1024)
            n = len(self._row_of)
            codes = np.zeros((capacity, BYTES), dtype=np.uint8)
            codes[:n] = self._codes[:n]
            ids = np.zeros(capacity, dtype=np.int64)
            ids[:n] = self._ids[:n]
            self._codes, self._ids = codes, ids


def load(store: object, model: str, min_quality: int) -> PerceptualIndex:
    """Every usable stored hash of `model` (`Store.iter_hashes`), all instances."""
    index = PerceptualIndex(min_quality)
    for chunk in store.iter_hashes(model):  # type: ignore[attr-defined]
        index.upsert_hex(chunk)
    return index
