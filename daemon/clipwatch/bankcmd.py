"""`clipwatch bank list | add | check`: the hash lists of `prohibited.bank_dir`, seen and made from the shell.

They read the bank files themselves (no daemon needed); a running daemon picks up what `add` writes at its
next refresh. Exit codes: 0 done (for `check`: no file matched), 1 a file or bank could not be read (the
others are still done), 2 a configuration or usage error, 3 (`check`) at least one file matched a bank.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .banks import BankMatch, Banks, BankUnreadable, bank_files, bank_name, read_bank, write_bank
from .config import Config
from .errors import ConfigError, FileRejected
from .files import printable
from .imaging import decode_image
from .pdq import DRAFT_SIDE, FileHashes, hashes_of
from .retro import Snapshots

if TYPE_CHECKING:
    from .calibration import Report
    from .store import DecisionRecord, Store

NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}$")
MATCHED = 3


def _directory(config: Config) -> str:
    if not config.prohibited.bank_dir:
        raise ConfigError("prohibited.bank_dir: not set; name the directory of hash lists in the configuration")
    return config.prohibited.bank_dir


def cmd_bank_list(config: Config, as_json: bool) -> int:
    directory, failed = _directory(config), 0
    snapshots = Snapshots(config.data_dir / "banks")
    files = bank_files(directory)
    if not files and not as_json:
        print(f"no bank files in {printable(directory)}")
    for path in files:
        rejected: list[tuple[int, str]] = []
        note = rejected.append
        snapshot = snapshots.path(bank_name(path))
        checked = (datetime.fromtimestamp(snapshot.stat().st_mtime, UTC).isoformat(timespec="seconds")
                   if snapshot.exists() else None)
        try:
            bank = read_bank(path, lambda n, why, note=note: note((n, why)))  # type: ignore[misc]
            info: dict[str, Any] = {"bank": bank.name, "path": str(path),
                                    **{str(s): n for s, n in bank.counts().items()}, "rejected_lines": len(rejected),
                                    "modified": _modified(path),
                                    "rows_checked": checked, "problems": [f"line {n}: {why}" for n, why in rejected]}
        except BankUnreadable as exc:
            info = {"bank": bank_name(path), "path": str(path), "problems": [str(exc)], "rows_checked": checked}
        failed += bool(info["problems"])
        if as_json:
            print(json.dumps(info, ensure_ascii=False))
            continue
        counts = "  ".join(f"{s} {info[s]:,}" for s in ("pdq", "md5", "sha256") if s in info)
        print(f"{info['bank']}: {counts or 'unreadable'}; file modified {info.get('modified', '?')}; stored rows "
              f"checked against it {checked or 'never (by a daemon with this data_dir)'}")
        for problem in info["problems"][:20]:
            print(f"  {problem}")
        if len(info["problems"]) > 20:
            print(f"  ... and {len(info['problems']) - 20} more")
    return 1 if failed else 0


def _modified(path: Path) -> str:
    return datetime.fromtimestamp(path.stat().st_mtime, UTC).isoformat(timespec="seconds")


def cmd_bank_add(config: Config, name: str, paths: list[str], as_json: bool) -> int:
    """Hash images into the bank NAME (created if missing): a `pdq` line where the hash is usable, an `md5`
    line always; values already in the bank are not repeated. One atomic write at the end."""
    directory = Path(_directory(config))
    if not NAME.match(name) or name.endswith((".tmp", ".part", "~")):
        raise ConfigError(f"bank name {name!r}: use letters, digits, '_', '.', '-' (at most 100), not starting "
                          "with '.' nor ending in .tmp or .part")
    path = directory / f"{name}.txt"
    try:
        lines = path.read_text(encoding="ascii").splitlines() if path.exists() else [
            f"# bank {name}: made with clipwatch bank add"]
    except (OSError, UnicodeDecodeError) as exc:
        print(f"clipwatch: {printable(str(path))}: cannot read it ({exc})", file=sys.stderr)
        return 1
    have = {line.split("#", 1)[0].split()[-1].lower() for line in lines if line.split("#", 1)[0].split()}
    failed: list[str] = []
    added = 0
    for file, _, hashes in _each_hashed(config, paths, failed):
        new = [] if hashes.md5 in have else [f"md5 {hashes.md5}"]
        usable = hashes.pdq is not None and (hashes.pdq_quality or 0) >= config.duplicates.pdq_min_quality
        if usable and hashes.pdq_hex not in have:
            new.insert(0, f"pdq {hashes.pdq_hex}")
        have.update(line.split()[1] for line in new)
        lines += new
        added += len(new)
        note = "" if usable else (f"; PDQ quality {hashes.pdq_quality} is below duplicates.pdq_min_quality: only "
                                  "its MD5 (exact copies)")
        if as_json:
            print(json.dumps({"path": file, "bank": name, "added": new, "pdq_quality": hashes.pdq_quality}))
        else:
            print(f"{printable(file)}: {len(new)} line(s) added{note}")
    if added:
        directory.mkdir(parents=True, exist_ok=True)
        write_bank(path, lines)
    if not as_json:
        print(f"{name}: {added} line(s) added to {printable(str(path))}")
    return 1 if failed else 0


def _each_hashed(config: Config, paths: list[str], failed: list[str]) -> Iterator[tuple[str, bytes, FileHashes]]:
    """Each file with its bytes and hashes, decoded as the daemon decodes it (the hash its row would hold); a
    file that cannot be read or decoded is named on stderr, added to `failed` and skipped."""
    for file in paths:
        try:
            with open(file, "rb") as f:
                data = f.read()
            image = decode_image(data, config.model.max_image_pixels, draft=DRAFT_SIDE)
        except (OSError, FileRejected) as exc:
            failed.append(file)
            print(f"clipwatch: {printable(file)}: {exc.strerror if isinstance(exc, OSError) else exc}",
                  file=sys.stderr)
            continue
        yield file, data, hashes_of(image, hashlib.md5(data).hexdigest())


def cmd_bank_check(config: Config, paths: list[str], as_json: bool) -> int:
    """Which banks each file matches, and how: every bank (not only the nearest), as ingest would judge it."""
    _directory(config)
    banks = _loaded(config)
    failed: list[str] = []
    matched = 0
    for file, data, hashes in _each_hashed(config, paths, failed):
        found = every_match(banks, hashlib.sha256(data).hexdigest(), hashes)
        matched += bool(found)
        if as_json:
            print(json.dumps({"path": file, "pdq": hashes.pdq_hex, "pdq_quality": hashes.pdq_quality,
                              "md5": hashes.md5, "matches": [{"bank": m.bank, "signal": m.signal,
                                                              "distance": m.distance} for m in found]}))
        else:
            said = ", ".join(f"{m.bank} ({m.signal}" + (f", {m.distance} bits)" if m.signal == "pdq" else ")")
                             for m in found)
            print(f"{printable(file)}: {said or 'no bank matches'}")
    return 1 if failed else MATCHED if matched else 0


def _loaded(config: Config) -> Banks:
    banks = Banks.from_config(config)
    banks.refresh()
    return banks


def every_match(banks: Banks, sha256: str, hashes: FileHashes) -> list[BankMatch]:
    found: list[BankMatch] = []
    while True:
        seen = frozenset(m.bank for m in found)
        match = banks.match_many([(sha256, hashes)], lambda _, seen=seen: seen)[0]  # type: ignore[misc]
        if match is None:
            return found
        found.append(match)


def bank_calibration(config: Config, decisions: list[DecisionRecord], store: Store) -> Report:
    """`clipwatch calibrate --for bank`: the banks as they are now, the decided files' stored hashes."""
    from .calibration import bank_report

    banks = _loaded(config)
    return bank_report(config, decisions, lambda shas: store.pdq_by_sha256(shas, config.duplicates.pdq_min_quality),
                       {b.name: b for b in banks.banks()})
