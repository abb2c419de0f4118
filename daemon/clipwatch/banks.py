"""Hash banks: the industry's lists of prohibited images, as hashes, matched at ingest.

`prohibited.bank_dir` holds one bank per file; the bank's name is the file's name without `.txt` and is the
label of the verdicts it gives. A file holds one signal per line, in python-threatexchange's local-file
format: `pdq <64 hex>`, `md5 <32 hex>` (`video_md5` and `photo_md5` alike), `sha256 <64 hex>`. A bare
value is taken by its length: 32 hex digits are an MD5, 64 a PDQ hash (a SHA-256 in a file whose name ends
in `.sha256.txt`). Blank lines and `#` comments are skipped. A malformed line is skipped, logged with its
file and line number (the first LOGGED_REJECTS of each load) and counted; a file that cannot be read keeps
the bank's previous contents. Files whose names start with `.` or end in `.tmp`, `.part` or `~` are not
banks (write a new list beside its bank and rename it over: the swap is atomic).

A bank lives in memory as arrays: PDQ hashes as an (n, 32) byte matrix searched by brute force with faiss's
Hamming k-NN (exact; 32 bytes a hash, 320 MB for 10,000,000), MD5s and SHA-256s sorted for binary search.
A match: the upload's PDQ (quality >= `duplicates.pdq_min_quality`), or any of its eight rotations and flips
(`prohibited.dihedral`), within `prohibited.bank_distance` bits of a bank's hash, or its MD5 or SHA-256 equal
to a bank's. Exact signals win over PDQ; among PDQ matches the nearest; a bank a person dismissed for these
bytes is skipped.

`Banks.refresh` re-reads changed files and swaps each new bank in whole: readers never wait and never see
half a bank. The daemon runs it on its own thread (retro.py), which also checks the stored rows against
what a bank gained.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .config import Config
from .logs import get_logger
from .metrics import Metrics
from .pdq import BYTES, FileHashes
from .vocab import Signal

log = get_logger(__name__)
LOGGED_REJECTS = 10  # malformed lines logged one by one per load of a file; the rest are counted
TYPES = {b"pdq": Signal.PDQ, b"md5": Signal.MD5, b"video_md5": Signal.MD5, b"photo_md5": Signal.MD5,
         b"sha256": Signal.SHA256}
DIGITS = {Signal.PDQ: 64, Signal.MD5: 32, Signal.SHA256: 64}
WIDTH = {Signal.PDQ: BYTES, Signal.MD5: 16, Signal.SHA256: 32}
NOT_BANKS = (".tmp", ".part", "~")


@dataclass(frozen=True)
class Bank:
    name: str
    path: str
    pdq: np.ndarray = field(default_factory=lambda: np.zeros((0, BYTES), np.uint8))  # (n, 32), file order
    md5: np.ndarray = field(default_factory=lambda: np.zeros(0, "S16"))  # sorted, unique
    sha256: np.ndarray = field(default_factory=lambda: np.zeros(0, "S32"))  # sorted, unique
    rejected: int = 0  # malformed lines skipped
    signature: tuple[int, int, int] = (0, 0, 0)  # (size, mtime_ns, inode) of the file read
    loaded_at: float = 0.0  # Unix time
    seconds: float = 0.0  # the load's duration
    problem: str = ""  # why the last read failed (the contents are the previous read's)

    def counts(self) -> dict[Signal, int]:
        return {Signal.PDQ: len(self.pdq), Signal.MD5: len(self.md5), Signal.SHA256: len(self.sha256)}

    def __len__(self) -> int:
        return len(self.pdq) + len(self.md5) + len(self.sha256)

    def nbytes(self) -> int:
        return int(self.pdq.nbytes + self.md5.nbytes + self.sha256.nbytes)

    def without(self, before: Bank | None) -> Bank:
        """What this bank holds that `before` did not (the hashes to check stored rows against)."""
        if before is None:
            return self
        pdq = self.pdq[~np.isin(_rows(self.pdq), _rows(before.pdq))] if len(before.pdq) else self.pdq
        return Bank(self.name, self.path, pdq, np.setdiff1d(self.md5, before.md5, assume_unique=True),
                    np.setdiff1d(self.sha256, before.sha256, assume_unique=True))


@dataclass(frozen=True)
class BankMatch:
    bank: str
    signal: Signal
    distance: int | None = None  # PDQ bits of 256 (0 for an MD5 or SHA-256)


class BankUnreadable(Exception):
    pass


def bank_name(path: str | Path) -> str:
    name = os.path.basename(path)
    return name[:-4] if name.endswith(".txt") else name


def bank_files(directory: str) -> list[Path]:
    """The bank files of `directory`, sorted (a missing directory has none)."""
    try:
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
    except OSError:
        return []
    return [Path(e.path) for e in entries if not e.name.startswith(".") and not e.name.endswith(NOT_BANKS)
            and (e.is_file() or (e.is_symlink() and not os.path.exists(e.path)))]  # a dangling link: unreadable


def signature(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns, st.st_ino


def read_bank(path: Path, on_reject: Callable[[int, str], None] | None = None) -> Bank:
    """Parse a bank file. `on_reject(line_number, why)` for each malformed line. Raises BankUnreadable."""
    started = time.monotonic()
    bare64 = Signal.SHA256 if path.name.endswith(".sha256.txt") else Signal.PDQ
    found = {s: bytearray() for s in WIDTH}
    rejected = 0
    try:
        sig = signature(path)
        with open(path, "rb") as f:
            for number, line in enumerate(f, 1):
                if line.startswith(b"pdq ") and len(line) in (69, 70):  # the common case, kept fast
                    try:
                        found[Signal.PDQ] += bytes.fromhex(line[4:68].decode("ascii"))
                        continue
                    except ValueError:
                        pass
                why = _take(line.split(b"#", 1)[0].split(), bare64, found)
                if why:
                    rejected += 1
                    if on_reject is not None:
                        on_reject(number, why)
    except OSError as exc:
        raise BankUnreadable(f"cannot read it: {exc.strerror or exc}") from None
    pdq = np.frombuffer(found[Signal.PDQ], np.uint8).reshape(-1, BYTES)
    md5 = np.unique(np.frombuffer(found[Signal.MD5], "S16"))
    sha = np.unique(np.frombuffer(found[Signal.SHA256], "S32"))
    return Bank(bank_name(path), str(path), pdq, md5, sha, rejected, sig, time.time(),
                round(time.monotonic() - started, 3))


def _take(fields: list[bytes], bare64: Signal, found: dict[Signal, bytearray]) -> str:
    """Add one line's value to `found`; the reason it is malformed, or ''."""
    if not fields:
        return ""
    if len(fields) == 1:
        value = fields[0]
        kind = {64: bare64, 32: Signal.MD5}.get(len(value))
        if kind is None:
            return f"a bare value of {len(value)} characters (expected 64: PDQ or SHA-256, or 32: MD5)"
    elif len(fields) == 2:
        kind = TYPES.get(fields[0].lower())
        value = fields[1]
        if kind is None:
            return f"unknown signal type {fields[0][:20].decode('ascii', 'replace')!r} (expected pdq, md5, sha256)"
    else:
        return "expected a signal type and a value (e.g. 'pdq <64 hex digits>')"
    if len(value) != DIGITS[kind]:
        return f"a {kind} value has {DIGITS[kind]} hex digits, this one {len(value)}"
    try:
        found[kind] += bytes.fromhex(value.decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        return f"not a hex value: {value[:70].decode('ascii', 'replace')!r}"
    return ""


def write_bank(path: Path, lines: Sequence[str]) -> None:
    """Write a bank file atomically (a temporary file beside it, renamed over it)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="ascii") as f:
            f.writelines(f"{line}\n" for line in lines)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _rows(codes: np.ndarray) -> np.ndarray:
    """(n, 32) bytes as n comparable items."""
    return np.ascontiguousarray(codes).view(f"V{BYTES}").ravel()


class Banks:
    """The live set of banks. `match_many` and `banks` are safe from any thread while `refresh` runs."""

    def __init__(self, directory: str, distance: int, dihedral: bool, min_quality: int,
                 metrics: Metrics | None = None) -> None:
        self.directory, self.distance, self.dihedral, self.min_quality = directory, distance, dihedral, min_quality
        self.metrics = metrics
        self._banks: dict[str, Bank] = {}
        self._missing = False

    @classmethod
    def from_config(cls, config: Config, metrics: Metrics | None = None) -> Banks:
        p = config.prohibited
        return cls(p.bank_dir, p.bank_distance, p.dihedral, config.duplicates.pdq_min_quality, metrics)

    @property
    def enabled(self) -> bool:
        return bool(self.directory)

    def banks(self) -> list[Bank]:
        return list(self._banks.values())

    def refresh(self) -> list[Bank]:
        """Re-read the files that changed; forget the banks whose file is gone. Returns the banks (re)loaded."""
        if not self.directory:
            return []
        missing = not os.path.isdir(self.directory)
        if missing and not self._missing:  # said once, not every round
            log.error("bank_dir_missing", directory=self.directory, action="no hash list is matched until it exists")
        self._missing = missing
        current, loaded = dict(self._banks), []
        files = {bank_name(p): p for p in bank_files(self.directory)}
        for name in [n for n in current if n not in files]:
            log.info("bank_removed", bank=name)
            del current[name]
        for name, path in files.items():
            old = current.get(name)
            try:
                if old is not None and str(path) == old.path and signature(path) == old.signature:
                    continue
                bank = self._read(path)
            except (OSError, BankUnreadable) as exc:
                problem = str(exc) if isinstance(exc, BankUnreadable) else f"cannot read it: {exc.strerror or exc}"
                if self.metrics is not None:
                    self.metrics.bank_failures.labels(name).inc()
                if old is None or old.problem != problem:
                    log.error("bank_unreadable", bank=name, path=str(path), error=problem,
                              action="the bank keeps its previous contents" if old else "the bank is empty")
                kept = old or Bank(name, str(path))
                current[name] = Bank(kept.name, kept.path, kept.pdq, kept.md5, kept.sha256, kept.rejected,
                                     kept.signature, kept.loaded_at, kept.seconds, problem)
                continue
            current[name] = bank
            loaded.append(bank)
            log.info("bank_loaded", bank=name, path=str(path), pdq=len(bank.pdq), md5=len(bank.md5),
                     sha256=len(bank.sha256), rejected=bank.rejected, seconds=bank.seconds)
        self._banks = current  # one assignment: a reader has the old set or the new one
        for bank in loaded if self.metrics is not None else ():
            for signal, n in bank.counts().items():
                self.metrics.bank_hashes.labels(bank.name, signal).set(n)  # type: ignore[union-attr]
            self.metrics.bank_loaded.labels(bank.name).set(bank.loaded_at)  # type: ignore[union-attr]
            self.metrics.bank_load_seconds.labels(bank.name).set(bank.seconds)  # type: ignore[union-attr]
        return loaded

    def _read(self, path: Path) -> Bank:
        name, logged = bank_name(path), [0]

        def rejected(number: int, why: str) -> None:
            logged[0] += 1
            if logged[0] <= LOGGED_REJECTS:
                log.warning("bank_line_rejected", bank=name, path=str(path), line=number, reason=why)
            if self.metrics is not None:
                self.metrics.bank_rejected.labels(name).inc()

        bank = read_bank(path, rejected)
        if logged[0] > LOGGED_REJECTS:
            log.warning("bank_lines_rejected", bank=name, path=str(path), lines=logged[0],
                        logged=LOGGED_REJECTS)
        return bank

    def match_many(self, queries: Sequence[tuple[str, FileHashes | None]],
                   skip: Callable[[str], frozenset[str]] = lambda sha: frozenset()) -> list[BankMatch | None]:
        """For each (sha256, hashes), the bank match (see the module's docstring), or None. `skip(sha256)`: the
        banks a person dismissed for those bytes."""
        banks = list(self._banks.values())
        found: list[BankMatch | None] = [None] * len(queries)
        if not banks or not queries:
            return found
        pdq = self._pdq_distances(banks, queries)  # (queries, banks) bits, or None where not asked
        for n, (sha256, hashes) in enumerate(queries):
            dismissed = skip(sha256)
            best: BankMatch | None = None
            for b, bank in enumerate(banks):
                if bank.name in dismissed:
                    continue
                exact = _exact(bank, sha256, hashes)
                if exact is not None:
                    best = exact
                    break
                bits = None if pdq is None else int(pdq[n, b])
                if bits is not None and bits <= self.distance and (best is None or bits < (best.distance or 0)):
                    best = BankMatch(bank.name, Signal.PDQ, bits)
            found[n] = best
        return found

    def _pdq_distances(self, banks: list[Bank], queries: Sequence[tuple[str, FileHashes | None]]) -> (
            np.ndarray | None):
        """The nearest bank hash's distance to each query (over its variants), per bank; 257 where none."""
        asked: list[int] = []
        codes: list[bytes] = []
        for n, (_, hashes) in enumerate(queries):
            if hashes is None or hashes.pdq is None or (hashes.pdq_quality or 0) < self.min_quality:
                continue
            variants = hashes.dihedral if self.dihedral and hashes.dihedral else (hashes.pdq,)
            asked += [n] * len(variants)
            codes += variants
        if not codes:
            return None
        import faiss

        q = np.frombuffer(b"".join(codes), np.uint8).reshape(len(codes), BYTES)
        where = np.asarray(asked)
        out = np.full((len(queries), len(banks)), 257, np.int64)
        for b, bank in enumerate(banks):
            if len(bank.pdq):
                distances, _ = faiss.knn_hamming(q, bank.pdq, 1)
                np.minimum.at(out[:, b], where, distances[:, 0])
        return out


def _exact(bank: Bank, sha256: str, hashes: FileHashes | None) -> BankMatch | None:
    if len(bank.sha256) and _contains(bank.sha256, bytes.fromhex(sha256)):
        return BankMatch(bank.name, Signal.SHA256, 0)
    if hashes is not None and hashes.md5 and len(bank.md5) and _contains(bank.md5, bytes.fromhex(hashes.md5)):
        return BankMatch(bank.name, Signal.MD5, 0)
    return None


def _contains(sorted_values: np.ndarray, value: bytes) -> bool:
    key = np.array(value, dtype=sorted_values.dtype)  # compared as numpy does: a value may end in zero bytes
    i = int(np.searchsorted(sorted_values, key))
    return i < len(sorted_values) and bool(sorted_values[i] == key)
