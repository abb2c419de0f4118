"""Multi-index hashing: every pair of 256-bit hashes within a Hamming radius, without comparing all pairs.

The pass over stored rows (retro.py) compares a bank's new hashes, and their eight rotations and flips, with
every row's hash: 800,000 x 1,000,000 pairs for a bank gaining 100,000 hashes and a million rows, about 12
minutes of brute force on 2 cores (faiss's popcounts, ~1 ns a pair; docs/benchmarks.md). Norouzi, Punjani
and Fleet's multi-index hashing (CVPR 2012) finds the same pairs exactly: the 256 bits are cut into 12
chunks of 21-22 bits; two hashes at most `r` bits apart differ in at most `r // 12` bits of at least one
chunk (pigeonhole: 12 chunks each differing in more would add up to more than `r`). Each chunk of the
indexed hashes is a table (the hashes sorted by that chunk, with the offset of each chunk value: direct
addressing, 8-16 MB a table); a query looks up its chunk values with every flip of up to `r // 12` bits
(254 probes a chunk at r = 31), and only the hashes found there are compared in full.

numpy throughout: a table is an argsort, a query batch is a handful of vectorised gathers (~270 us a query
at a million indexed hashes here, against ~1 ms of brute force; ~230 MB for a million hashes, built in
under 2 s). Exact: the tests compare it with brute force. Radii up to 47 (3 flips a chunk); beyond that
brute force is the better tool and `within` says so.
"""

from __future__ import annotations

from itertools import combinations

import numpy as np

from .pdq import BYTES

CHUNKS = tuple((start, width) for start, width in zip(
    np.cumsum([0] + [22] * 4 + [21] * 7).tolist(), [22] * 4 + [21] * 8, strict=True))  # 12 chunks, 256 bits
MAX_RADIUS = 47
QUERY_BATCH = 1024


def _words(codes: np.ndarray) -> np.ndarray:
    """(n, 32) bytes as (n, 4) native uint64, most significant bit first."""
    return np.ascontiguousarray(codes).view(">u8").astype(np.uint64)


def _chunk(words: np.ndarray, start: int, width: int) -> np.ndarray:
    """Bits start..start+width of each row (counting from the first byte's top bit), as uint32."""
    word, offset = divmod(start, 64)
    if offset + width <= 64:
        keys = (words[:, word] >> np.uint64(64 - offset - width)) & np.uint64((1 << width) - 1)
    else:
        high = 64 - offset
        keys = ((words[:, word] & np.uint64((1 << high) - 1)) << np.uint64(width - high)) | (
            words[:, word + 1] >> np.uint64(64 - (width - high)))
    return keys.astype(np.uint32)


def _flips(width: int, most: int) -> np.ndarray:
    return np.array([sum(1 << b for b in bits) for k in range(most + 1) for bits in combinations(range(width), k)],
                    np.uint32)


class MultiIndex:
    """A static set of (n, 32) hashes, indexed for `within`."""

    def __init__(self, codes: np.ndarray) -> None:
        self._words = _words(np.asarray(codes, np.uint8).reshape(-1, BYTES))
        self._tables = []
        for start, width in CHUNKS:
            keys = _chunk(self._words, start, width)
            order = np.argsort(keys, kind="stable").astype(np.uint32)
            offsets = np.zeros((1 << width) + 1, np.uint32)
            np.cumsum(np.bincount(keys, minlength=1 << width), out=offsets[1:])
            self._tables.append((order, offsets))

    def __len__(self) -> int:
        return len(self._words)

    def within(self, queries: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every (query row, indexed row, distance) at most `radius` bits apart, each pair once."""
        if not 0 <= radius <= MAX_RADIUS:
            raise ValueError(f"radius {radius}: multi-index hashing here covers 0..{MAX_RADIUS} bits")
        found: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        words = _words(np.asarray(queries, np.uint8).reshape(-1, BYTES))
        flips = {w: _flips(w, radius // len(CHUNKS)) for w in {w for _, w in CHUNKS}}
        for first in range(0, len(words), QUERY_BATCH):
            found.append(self._batch(words[first:first + QUERY_BATCH], first, radius, flips))
        if not found:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
        q, i, d = (np.concatenate(parts) for parts in zip(*found, strict=True))
        pair = q * max(len(self._words), 1) + i
        _, first_seen = np.unique(pair, return_index=True)  # a pair found through several chunks, once
        return q[first_seen], i[first_seen], d[first_seen]

    def _batch(self, words: np.ndarray, first: int, radius: int, flips: dict[int, np.ndarray]) -> tuple[
            np.ndarray, np.ndarray, np.ndarray]:
        qs, ids = [], []
        for (start, width), (order, offsets) in zip(CHUNKS, self._tables, strict=True):
            masks = flips[width]
            probes = (_chunk(words, start, width)[:, None] ^ masks[None, :]).ravel()
            low = offsets[probes].astype(np.int64)
            count = offsets[probes + 1].astype(np.int64) - low
            total = int(count.sum())
            if not total:
                continue
            ends = np.cumsum(count)
            positions = np.arange(total, dtype=np.int64) + np.repeat(low - (ends - count), count)
            ids.append(order[positions])
            qs.append(np.repeat(np.arange(len(probes), dtype=np.int64) // len(masks), count))
        if not ids:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
        q, i = np.concatenate(qs), np.concatenate(ids).astype(np.int64)
        d = np.bitwise_count(self._words[i] ^ words[q]).sum(axis=1, dtype=np.int64)
        near = d <= radius
        return q[near] + first, i[near], d[near]
