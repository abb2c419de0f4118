"""Keeping the banks current, and checking what is already stored against what a bank gained.

`BankKeeper` runs on its own thread in the daemon: every `prohibited.refresh_interval_s` it re-reads the bank
files that changed (banks.py; ingest goes on with the previous contents meanwhile), and for each bank whose
contents differ from what this instance last checked its rows against (a snapshot in
`<daemon.data_dir>/banks/`), it checks this instance's stored rows against the hashes the bank gained: the
row's PDQ hash and MD5 as stored, and its sha256; no file is read, no model runs. A row that matches becomes
`prohibited` with the bank's name as its label (logged, counted in `clipwatch_bank_matches_total`); its file
is **not** moved: only ingest moves files, a person decides on the review page. Rows already prohibited, and
rows whose bytes a person dismissed for that bank, are left as they are.

A stored row keeps no rotations of its hash: its eight rotations and flips are derived from the hash itself
(a transposition of the 16x16 bit grid and the bits of odd rows or columns inverted: the DCT coefficients'
sign pattern under a flip). Measured on real photos: within 5 bits of the exact variant on average, 14 at most
(docs/benchmarks.md), where ingest uses the exact variants from the image's own DCT.

The snapshot is written after the pass, so a pass cut short (a stop, a store gone away) is done again in full
at the next round; marking a row twice changes nothing. A bank that disappears loses its snapshot: brought
back, it is checked against every row again.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .banks import Bank, Banks
from .config import Config
from .decisions import Decisions
from .errors import StoreError
from .logs import get_logger
from .metrics import Metrics
from .mih import MAX_RADIUS, MultiIndex
from .notify import Notifier
from .pdq import BITS, BYTES
from .store import SetVerdict, Store, open_store
from .vocab import Signal, Status

log = get_logger(__name__)
CHUNK = 20_000  # stored rows per query
BLOCK = 1_000_000  # stored rows compared at once (a multi-index of them: ~230 MB while the pass runs)
MULTI_INDEX_FROM = 50_000  # fewer rows: brute force (a multi-index's fixed cost is ~130 MB of tables)


def turned(codes: np.ndarray) -> np.ndarray:
    """The eight rotations and flips of each (n, 32) hash, derived from the hash: (n, 8, 32)."""
    grid = np.unpackbits(codes, axis=1).reshape(-1, 16, 16)
    odd_rows = np.zeros((16, 16), np.uint8)
    odd_rows[1::2, :] = 1
    out = []
    for g in (grid, grid.transpose(0, 2, 1)):
        for mask in (0, odd_rows, odd_rows.T, odd_rows ^ odd_rows.T):
            out.append(np.packbits((g ^ mask).reshape(len(codes), -1), axis=1))
    return np.stack(out, axis=1)


def check_stored(store: Store, added: Bank, banks: Banks, decisions: Decisions, metrics: Metrics | None = None,
                 stop: threading.Event | None = None, block: int = BLOCK) -> int:
    """Mark this instance's stored rows that match `added` (a bank's new hashes). Returns how many."""
    marked = 0
    for rows in _blocks(store.iter_bank_keys(CHUNK), block, banks.min_quality, stop):
        hits = _matches(rows, added, banks)
        if not hits:
            continue
        found = store.rows_by_id(list(hits))
        ops: list[SetVerdict] = []
        for row_id, (signal, bits) in sorted(hits.items()):
            row = found.get(row_id)
            if row is None or added.name in decisions.labels_dismissed(row.sha256):
                continue  # gone meanwhile, or a person said this file is not what the bank lists
            ops.append(SetVerdict(row_id, Status.PROHIBITED, label=added.name, signal=signal, pdq_distance=bits))
            log.warning("bank_match_stored", bank=added.name, signal=signal, pdq_distance=bits, id=row_id,
                        path=row.path, action="flagged for review; the file stays where it is")
            if metrics is not None:
                metrics.bank_matches.labels(added.name, signal).inc()
        for first in range(0, len(ops), CHUNK):
            store.apply(ops[first:first + CHUNK])
        marked += len(ops)
    return marked


@dataclass
class Rows:
    """A block of stored rows, as arrays: what the pass compares."""

    ids: np.ndarray  # int64
    sha256: np.ndarray  # S32
    md5: np.ndarray  # S16 (zero bytes where the row has none; `has_md5` says which)
    has_md5: np.ndarray  # bool
    codes: np.ndarray  # (n, 32) PDQ hashes of the rows whose hash is usable ...
    code_ids: np.ndarray  # ... and their row ids


Key = tuple[int, str, str | None, str | None, int | None]  # id, sha256, md5, pdq hex, quality


def _blocks(chunks: Iterator[list[Key]], size: int, min_quality: int, stop: threading.Event | None) -> Iterator[
        Rows]:
    pending: list[Key] = []
    for chunk in chunks:
        if stop is not None and stop.is_set():
            raise InterruptedError("stopping")
        pending += chunk
        if len(pending) >= size:
            yield _rows(pending, min_quality)
            pending = []
    if pending:
        yield _rows(pending, min_quality)


def _rows(keys: list[Key], min_quality: int) -> Rows:
    usable = [k for k in keys if k[3] and (k[4] or 0) >= min_quality]
    codes = bytes.fromhex("".join(k[3] for k in usable))  # type: ignore[misc]
    return Rows(np.array([k[0] for k in keys], np.int64), np.array([bytes.fromhex(k[1]) for k in keys], "S32"),
                np.array([bytes.fromhex(k[2] or "") for k in keys], "S16"), np.array([bool(k[2]) for k in keys]),
                np.frombuffer(codes, np.uint8).reshape(-1, BYTES), np.array([k[0] for k in usable], np.int64))


def _matches(rows: Rows, added: Bank, banks: Banks) -> dict[int, tuple[Signal, int]]:
    """Row id -> (signal, PDQ bits) for the rows of the block that match what the bank gained."""
    found: dict[int, tuple[Signal, int]] = {}
    if len(added.pdq) and len(rows.codes):
        bits = _pdq_bits(rows.codes, added.pdq, banks.distance, banks.dihedral)
        found.update((int(i), (Signal.PDQ, int(d))) for i, d in zip(rows.code_ids, bits, strict=True)
                     if d <= banks.distance)
    if len(added.md5):
        found.update((int(i), (Signal.MD5, 0)) for i in rows.ids[rows.has_md5 & np.isin(rows.md5, added.md5)])
    if len(added.sha256):
        found.update((int(i), (Signal.SHA256, 0)) for i in rows.ids[np.isin(rows.sha256, added.sha256)])
    return found


def _pdq_bits(codes: np.ndarray, listed: np.ndarray, radius: int, dihedral: bool) -> np.ndarray:
    """For each row hash, the distance to the nearest listed hash (or rotation or flip of one) if at most
    `radius`, else a larger number. A block of many rows is searched through a multi-index (mih.py); a few,
    by brute force."""
    queries = turned(listed).reshape(-1, BYTES) if dihedral else listed
    if len(codes) >= MULTI_INDEX_FROM and radius <= MAX_RADIUS:
        _, hit, bits = MultiIndex(codes).within(queries, radius)
        nearest = np.full(len(codes), BITS + 1, np.int64)
        np.minimum.at(nearest, hit, bits)
        return nearest
    import faiss

    distances, _ = faiss.knn_hamming(np.ascontiguousarray(codes), np.ascontiguousarray(queries), 1)
    return distances[:, 0]


class Snapshots:
    """What each bank held when this instance last checked its rows against it: <data_dir>/banks/<name>.npz."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path(self, name: str) -> Path:
        return self.directory / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', name)[:100]}.npz"

    def load(self, name: str) -> Bank | None:
        try:
            with np.load(self.path(name)) as data:
                return Bank(name, "", data["pdq"], data["md5"], data["sha256"])
        except (OSError, KeyError, ValueError):
            return None

    def save(self, bank: Bank) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.directory / f".{self.path(bank.name).name}.tmp.npz"
        np.savez(tmp, pdq=bank.pdq, md5=bank.md5, sha256=bank.sha256)
        os.replace(tmp, self.path(bank.name))

    def forget_all_but(self, names: set[str]) -> None:
        kept = {self.path(n).name for n in names}
        for path in self.directory.glob("*.npz") if self.directory.is_dir() else ():
            if path.name not in kept:
                path.unlink(missing_ok=True)


class BankKeeper:
    """The banks' thread: refresh, then check the stored rows against what each bank gained. Never raises."""

    def __init__(self, banks: Banks, snapshots: Snapshots, open_store: Callable[[], Store], decisions: Decisions,
                 interval_s: float, metrics: Metrics | None = None) -> None:
        self.banks, self.snapshots, self.open_store, self.decisions = banks, snapshots, open_store, decisions
        self.interval_s, self.metrics = interval_s, metrics
        self._checked: dict[str, tuple[int, int, int]] = {}  # bank -> signature its rows were checked against

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self.round(stop)
            stop.wait(self.interval_s)

    def round(self, stop: threading.Event | None = None) -> None:
        try:
            self.banks.refresh()
            current = {b.name: b for b in self.banks.banks()}
            self._checked = {n: s for n, s in self._checked.items() if n in current}
            self.snapshots.forget_all_but(set(current))
            for bank in current.values():
                if not bank.problem and self._checked.get(bank.name) != bank.signature:
                    self._check(bank, stop)
        except InterruptedError:
            return
        except StoreError as exc:
            log.warning("bank_check_failed", error=str(exc), action="tried again at the next refresh")
        except Exception:
            log.exception("bank_refresh_failed")

    def _check(self, bank: Bank, stop: threading.Event | None) -> None:
        before = self.snapshots.load(bank.name)
        added = bank.without(before)
        if len(added):
            store = self.open_store()
            try:
                self.decisions.refresh(store)
                log.info("bank_check_started", bank=bank.name, pdq=len(added.pdq), md5=len(added.md5),
                         sha256=len(added.sha256))
                marked = check_stored(store, added, self.banks, self.decisions, self.metrics, stop)
            finally:
                store.close()
            log.info("bank_check_finished", bank=bank.name, marked=marked)
        if before is None or len(added) or len(before) != len(bank):
            self.snapshots.save(bank)
        self._checked[bank.name] = bank.signature


def load_banks(config: Config, metrics: Metrics, notifier: Notifier) -> Banks:
    """The hash lists, read now (at start, before any file is judged)."""
    banks = Banks.from_config(config, metrics)
    if banks.enabled:
        notifier.status("loading the hash lists")
        banks.refresh()
    return banks


def keeper_threads(config: Config, banks: Banks | None, decisions: Decisions, metrics: Metrics,
                   stop: threading.Event) -> list[threading.Thread]:
    """The daemon's banks thread, if there are banks."""
    if banks is None or not banks.enabled:
        return []
    keeper = BankKeeper(banks, Snapshots(config.data_dir / "banks"), lambda: open_store(config), decisions,
                        config.prohibited.refresh_interval_s, metrics)
    return [threading.Thread(target=keeper.run, args=(stop,), name="banks", daemon=True)]
