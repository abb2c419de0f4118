"""Hash lists (banks.py, retro.py), measured: loading, matching at ingest, the pass over stored rows, recall.

    scripts/bench banks [--quick] [--only lmrp]
    .venv/bin/python benchmarks/banks.py --photos "$(scripts/photos.py --all)" [--quick] [--only lmrp]

l  load: bank files of 1,000,000 and 10,000,000 PDQ lines (random hashes; the values do not change the cost),
   each loaded by `Banks.refresh` in a fresh interpreter: seconds, the bank's arrays, the process's resident
   memory and its peak above the interpreter's with clipwatch imported; baseline: the same file's lines read
   by a bare Python loop in the same interpreter (what any parser pays).
m  match: an upload's lookup at ingest against banks of 1M and 10M hashes, batches of 32 real photos'
   hashes, with its eight rotations and flips (`prohibited.dihedral`, the default) and without: ms per upload.
r  the pass over stored rows: 1,000,000 rows in the embedded SQLite store (random hashes, 40 of them real
   photos' copies), a bank gaining 100,000 hashes (40 of them the real originals): seconds end to end, with the
   rows' derived rotations and flips and without; baseline: reading the rows alone.
p  recall per transform on the real-photo corpus (scripts/photos.py --all): the originals' hashes as a bank,
   each transformed copy judged as ingest judges it (exact dihedral variants) and as the pass over stored rows
   does (variants derived from the copy's hash), at `prohibited.bank_distance` 31; false matches: the other
   half of the corpus (not in the bank) and its transforms.

Not a test: it prints figures with the CPU they were measured on (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from copies import TRANSFORMS, hashed, load_corpus, say, table
from PIL import Image

from clipwatch.banks import Bank, Banks
from clipwatch.config_loader import load_config
from clipwatch.decisions import Decisions
from clipwatch.pdq import BYTES, FileHashes
from clipwatch.precision import cpu
from clipwatch.retro import check_stored, turned
from clipwatch.store import Upsert, open_store

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "clipwatch" / "bench" / "banks"
RNG = np.random.default_rng(22)
LOADER = """
import resource, sys, time
from clipwatch.banks import Banks
def rss():
    fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024
base, _ = rss()
started = time.perf_counter()
with open(sys.argv[1], "rb") as f:
    for line in f:
        pass
read_s = time.perf_counter() - started
banks = Banks(sys.argv[2], 31, True, 50)
started = time.perf_counter()
banks.refresh()
load_s = time.perf_counter() - started
now, peak = rss()
bank = banks.banks()[0]
print(len(bank.pdq), round(load_s, 2), round(read_s, 2), round(bank.nbytes() / 2**20), round(now - base),
      round(peak - base))
"""


def bank_file(n: int) -> Path:
    """A bank file of n random PDQ lines, made once and kept."""
    path = CACHE / f"pdq-{n}" / "random.txt"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        for start in range(0, n, 1_000_000):
            m = min(1_000_000, n - start)
            lines = np.empty((m, 69), np.uint8)
            lines[:, :4] = np.frombuffer(b"pdq ", np.uint8)
            lines[:, 4:68] = np.frombuffer(RNG.integers(0, 256, (m, BYTES), np.uint8).tobytes().hex().encode(),
                                           np.uint8).reshape(m, 64)
            lines[:, 68] = ord("\n")
            f.write(lines.tobytes())
    os.replace(tmp, path)
    return path


def load(sizes: list[int]) -> None:
    say("## Loading a bank (a fresh interpreter each; resident memory above the interpreter with clipwatch)\n")
    rows = []
    for n in sizes:
        path = bank_file(n)
        out = subprocess.run([sys.executable, "-c", LOADER, str(path), str(path.parent)], capture_output=True,
                             text=True, check=True).stdout.splitlines()[-1].split()  # after the log lines
        hashes, load_s, read_s, arrays, rss, peak = out
        rows.append([f"{int(hashes):,}", f"{path.stat().st_size / 2**20:,.0f} MB", f"{load_s} s", f"{read_s} s",
                     f"{float(load_s) / float(read_s):.1f}x", f"{arrays} MiB", f"{rss} MiB", f"{peak} MiB"])
    table(["PDQ hashes", "file", "load", "baseline: lines read", "load / baseline", "arrays", "resident after",
           "peak"], rows)


def photo_hashes(photos: list[Path]) -> list[FileHashes]:
    out = []
    for p in photos:
        h, q, variants = hashed(p.read_bytes())
        out.append(FileHashes("", h, q, tuple(variants)))
    return [h for h in out if (h.pdq_quality or 0) >= 50]


def match(sizes: list[int], photos: list[Path]) -> None:
    say("## Matching an upload at ingest (batches of 32 real photos' hashes; ms per upload)\n")
    queries = photo_hashes(photos[:32])
    rows = []
    for n in sizes:
        codes = np.concatenate([RNG.integers(0, 256, (n - len(queries), BYTES), np.uint8),
                                np.frombuffer(b"".join(q.pdq for q in queries), np.uint8).reshape(-1, BYTES)])  # type: ignore[misc]
        timings = {}
        for dihedral in (False, True):
            banks = Banks("x", 31, dihedral, 50)
            banks._banks = {"b": Bank("b", "", codes)}
            batch = [("00" * 32, q) for q in queries]
            found = banks.match_many(batch)  # warm
            best = float("inf")
            for _ in range(3):
                started = time.perf_counter()
                found = banks.match_many(batch)
                best = min(best, time.perf_counter() - started)
            assert all(f is not None for f in found)
            timings[dihedral] = best / len(batch) * 1000
        rows.append([f"{n:,}", f"{timings[False]:.2f}", f"{timings[True]:.2f}",
                     f"{timings[True] / timings[False]:.1f}x", f"{n * BYTES / 2**20:,.0f} MiB"])
    table(["bank", "plain: ms/upload", "with rotations and flips", "ratio", "bank's arrays"], rows)


def retro(rows_n: int, added_n: int, photos: list[Path]) -> None:
    say(f"## The pass over stored rows: {rows_n:,} rows, a bank gaining {added_n:,} hashes\n")
    real = photo_hashes(photos[:40])
    copies = [hashed(data) for data in _half_size(photos[:len(real)])]
    with tempfile.TemporaryDirectory() as tmp:
        config = load_config(None, env={"CLIPWATCH_DAEMON__DATA_DIR": tmp, "CLIPWATCH_STORE__INSTANCE": "bench"})
        store = open_store(config)
        store.init_schema(4)
        started = time.perf_counter()
        vector = np.array([1, 0, 0, 0], np.float32)
        codes = RNG.integers(0, 256, (rows_n, BYTES), np.uint8)
        for i, (h, _, _) in enumerate(copies):
            codes[i * (rows_n // len(copies))] = np.frombuffer(h, np.uint8)
        for start in range(0, rows_n, 20_000):
            store.apply([Upsert(f"/srv/{i}.jpg", hashlib.sha256(str(i).encode()).hexdigest(), 1, 0.0, "m", vector,
                                hashes=FileHashes(hashlib.md5(str(i).encode()).hexdigest(), codes[i].tobytes(), 90))
                         for i in range(start, min(rows_n, start + 20_000))])
        say(f"({rows_n:,} rows stored in {time.perf_counter() - started:.0f} s)\n")
        started = time.perf_counter()
        n = sum(len(chunk) for chunk in store.iter_bank_keys())
        read_s = time.perf_counter() - started
        bank_codes = np.concatenate([RNG.integers(0, 256, (added_n - len(real), BYTES), np.uint8),
                                     np.frombuffer(b"".join(h.pdq for h in real), np.uint8).reshape(-1, BYTES)])  # type: ignore[misc]
        out = [["reading the rows alone (baseline)", f"{read_s:.1f} s", "", "1.0x"]]
        for dihedral in (False, True):
            banks = Banks("x", 31, dihedral, 50)
            started = time.perf_counter()
            marked = check_stored(store, Bank("new", "", bank_codes), banks, Decisions())
            took = time.perf_counter() - started
            out.append([f"check, {'with' if dihedral else 'without'} derived rotations and flips", f"{took:.1f} s",
                        f"{marked}", f"{took / read_s:.0f}x"])
            with sqlite3.connect(config.store_url.path) as db:  # the next pass starts from the same rows
                db.execute(f"UPDATE {config.store.table} SET status = 'ok'")  # noqa: S608 - the config's table
        store.close()
    say(f"{n:,} rows read; {len(copies)} of them half-size copies of real photos whose originals the bank gains\n")
    table(["pass", "time", "rows marked", "ratio"], out)


def _half_size(photos: list[Path]) -> list[bytes]:
    import io

    out = []
    for p in photos:
        img = Image.open(p).convert("RGB")
        buf = io.BytesIO()
        img.resize((img.width // 2, img.height // 2)).save(buf, format="JPEG", quality=85)
        out.append(buf.getvalue())
    return out


def recall(photos: list[Path]) -> None:
    say("## Recall per transform at bank_distance 31 (the originals as a bank)\n")
    originals = {p: hashed(p.read_bytes()) for p in photos}
    usable = [p for p in photos if originals[p][1] >= 50]
    listed, unlisted = usable[::2], usable[1::2]
    bank = Bank("b", "", np.frombuffer(b"".join(originals[p][0] for p in listed), np.uint8).reshape(-1, BYTES))
    ingest = {d: Banks("x", 31, d, 50) for d in (False, True)}
    for b in ingest.values():
        b._banks = {"b": bank}
    rows, false = [], {False: 0, True: 0, "derived": 0}
    for name, transform in TRANSFORMS.items():
        found = {False: 0, True: 0, "derived": 0}
        for group, counted in ((listed, found), (unlisted, false)):
            for p in group:
                h, q, variants = hashed(transform(Image.open(p).convert("RGB")))
                if q < 50:
                    continue
                query = [("00" * 32, FileHashes("", h, q, tuple(variants)))]
                for d in (False, True):
                    counted[d] += ingest[d].match_many(query)[0] is not None
                derived = turned(np.frombuffer(h, np.uint8).reshape(1, -1))[0]
                bits = min(int(np.bitwise_count(np.bitwise_xor(bank.pdq, v)).sum(axis=1).min()) for v in derived)
                counted["derived"] += bits <= 31
        rows.append([name, f"{found[False] / len(listed):.2f}", f"{found[True] / len(listed):.2f}",
                     f"{found['derived'] / len(listed):.2f}"])
    table(["transform", "ingest, plain", "ingest, rotations and flips", "stored rows (derived variants)"], rows)
    say(f"{len(listed)} photos listed, {len(unlisted)} not; false matches among the unlisted photos' "
        f"{len(TRANSFORMS)} transforms each: plain {false[False]}, with rotations and flips {false[True]}, "
        f"derived {false['derived']}\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", default=os.environ.get("CLIPWATCH_PHOTOS", ""), help="scripts/photos.py --all")
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument("--only", default="lmrp", help="which parts (l m r p)")
    args = parser.parse_args()
    photos, _, _ = load_corpus(Path(args.photos))
    name, flags = cpu()
    say(f"CPU: {name}; flags: {' '.join(flags) or '-'}; {os.cpu_count()} cores\n")
    sizes = [100_000, 1_000_000] if args.quick else [1_000_000, 10_000_000]
    if "l" in args.only:
        load(sizes)
    if "m" in args.only:
        match(sizes, photos)
    if "r" in args.only:
        retro(*((100_000, 10_000) if args.quick else (1_000_000, 100_000)), photos)
    if "p" in args.only:
        recall(photos[:60] if args.quick else photos)
    return 0


if __name__ == "__main__":
    sys.exit(main())
