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
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .banks import Bank, Banks
from .config import Config
from .decisions import Decisions
from .errors import StoreError
from .logs import get_logger
from .metrics import Metrics
from .notify import Notifier
from .pdq import BYTES
from .store import SetVerdict, Store, open_store
from .vocab import Signal, Status

log = get_logger(__name__)
CHUNK = 20_000  # stored rows per query and per distance computation


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
                 stop: threading.Event | None = None) -> int:
    """Mark this instance's stored rows that match `added` (a bank's new hashes). Returns how many."""
    marked = 0
    for chunk in store.iter_bank_keys(CHUNK):
        if stop is not None and stop.is_set():
            raise InterruptedError("stopping")
        ops: list[SetVerdict] = []
        hits = _matches(chunk, added, banks)
        for (row_id, path, sha256, *_), (signal, bits) in hits.items():
            if added.name in decisions.labels_dismissed(sha256):
                continue
            ops.append(SetVerdict(row_id, Status.PROHIBITED, label=added.name, signal=signal, pdq_distance=bits))
            log.warning("bank_match_stored", bank=added.name, signal=signal, pdq_distance=bits, id=row_id, path=path,
                        action="flagged for review; the file stays where it is")
            if metrics is not None:
                metrics.bank_matches.labels(added.name, signal).inc()
        if ops:
            store.apply(ops)
            marked += len(ops)
    return marked


Key = tuple[int, str, str, str | None, str | None, int | None]  # id, path, sha256, md5, pdq, quality


def _matches(chunk: list[Key], added: Bank, banks: Banks) -> dict[Key, tuple[Signal, int]]:
    found: dict[Key, tuple[Signal, int]] = {}
    if len(added.sha256):
        shas = np.array([bytes.fromhex(k[2]) for k in chunk], "S32")
        found.update((k, (Signal.SHA256, 0)) for k, hit in zip(chunk, np.isin(shas, added.sha256), strict=True) if hit)
    with_md5 = [k for k in chunk if k[3] and k not in found]
    if len(added.md5) and with_md5:
        md5s = np.array([bytes.fromhex(k[3]) for k in with_md5], "S16")  # type: ignore[arg-type]
        found.update((k, (Signal.MD5, 0)) for k, hit in zip(with_md5, np.isin(md5s, added.md5), strict=True) if hit)
    usable = [k for k in chunk if k[4] and (k[5] or 0) >= banks.min_quality and k not in found]
    if len(added.pdq) and usable:
        import faiss

        codes = np.frombuffer(bytes.fromhex("".join(k[4] for k in usable)), np.uint8).reshape(-1, BYTES)  # type: ignore[misc]
        variants = turned(codes) if banks.dihedral else codes[:, None, :]
        distances, _ = faiss.knn_hamming(np.ascontiguousarray(variants.reshape(-1, BYTES)), added.pdq, 1)
        nearest = distances.reshape(len(usable), -1).min(axis=1)
        found.update((k, (Signal.PDQ, int(d))) for k, d in zip(usable, nearest, strict=True) if d <= banks.distance)
    return found


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
        self.rounds = 0  # rounds finished (tests wait for one)

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
        self.rounds += 1

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
