"""The model on this CPU (issue 12): each precision's ceiling, what `model.precision = "auto"` chose and what
the choice costs at start, the decode side, and clipwatch end to end against the best ceiling.

    scripts/bench cpu                  # bootstraps, starts the private MySQL 9, runs this
    .venv/bin/python benchmarks/cpu.py --mysql-url mysql://root@127.0.0.1:33069/clipwatch_test [--quick]

Everything is measured in one run, so the ratios hold on a noisy machine:
(1) the CPU: model name, the flags that decide the precision, cores, torch;
(2) the ceiling in each precision the CPU supports: the ViT-B/32 vision tower on ready tensors, batch 32,
    and its vectors' agreement (cosine) with fp32 on photo-like 1024x768 JPEGs (openvino-int8 also on the
    7 real photos it is checked on at load, and what converting it cost);
(3) `auto`: the precision it chose, its probe figures, the start-up cost without and with a cached choice;
(4) the decode side alone: CPU time per file, and files per second with one and two decode threads (if two
    threads do not come near twice one, the GIL binds and processes would be needed);
(5) `clipwatch scan` into MySQL 9 of 1024x768 and 12 MP JPEGs, in the chosen precision and in fp32, with the
    profile from the daemon's own stage metrics, against the seed recipe (one `encode` per image, one
    INSERT per row) and the best precision's ceiling.

Uses the helpers of benchmarks/ingest.py (the same images, model and recipe). Not a test: it prints figures.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ingest import CACHE, image_set, model_ceiling, naive_recipe, print_results, result, say, scan_rate

from clipwatch import precision
from clipwatch.embedder import Embedder, cpu_count
from clipwatch.logs import configure_logging
from clipwatch.testing import build_random_clip


def loaded(model_dir: Path, setting: str, cache: Path | None = None) -> tuple[Embedder, dict[str, Any]]:
    """An embedder in `setting`, and what choosing its precision cost (as logged in `model_precision_chosen`)."""
    e = Embedder(str(model_dir), device="cpu", precision=setting, choice_cache=str(cache) if cache else "")
    e.load()
    return e, e.choice


def decode_rates(e: Embedder, files: list[Path]) -> tuple[float, float, float]:
    """CPU ms per file (one thread), and files/s with one and with two decode threads (nothing else running)."""
    data = [f.read_bytes() for f in files]
    started = time.thread_time()
    for d in data:
        e.prepare(d, 64_000_000)
    cpu_ms = (time.thread_time() - started) / len(data) * 1000
    rates = []
    for threads in (1, 2):
        with ThreadPoolExecutor(threads) as pool:
            started = time.perf_counter()
            list(pool.map(lambda d: e.prepare(d, 64_000_000), data))
            rates.append(len(data) / (time.perf_counter() - started))
    return cpu_ms, rates[0], rates[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mysql-url", required=True)
    parser.add_argument("--quick", action="store_true", help="smaller sets: a smoke run")
    args, _ = parser.parse_known_args()  # scripts/bench passes ingest.py's options (--only) to both
    configure_logging("console", "warning")
    work = Path(tempfile.mkdtemp(prefix="clipwatch-bench-cpu-"))
    name, flags = precision.cpu()
    say(f"(1) CPU: {name}; flags: {' '.join(flags) or 'none of ' + ' '.join(precision.FLAGS)}; "
        f"{cpu_count()} cores; torch {torch.__version__}, {cpu_count()} threads")
    result("CPU", f"{name}, {' '.join(flags)}, {cpu_count()} cores")
    model_dir = CACHE / "clip-vit-b-32-random"
    if not (model_dir / "config.json").exists():
        build_random_clip(model_dir, tiny=False)
    web = sorted(image_set("web", 48 if args.quick else 192, (1024, 768)).iterdir())
    phone = sorted(image_set("phone", 16 if args.quick else 160, (4032, 3024)).iterdir())
    batches = 2 if args.quick else 4
    try:
        say("(2) the ceiling in each precision (vision tower, ready tensors, batch 32)")
        ceilings: dict[str, float] = {}
        reference: np.ndarray | None = None
        for p in precision.supported("cpu"):
            e, _ = loaded(model_dir, p)
            if e.precision != p:
                say(f"  {p}: refused at load (its vectors disagree with fp32), not measured")
                continue
            vectors = e.embed_images([e.prepare(f.read_bytes(), 64_000_000) for f in web[:16]])
            reference = vectors if reference is None else reference
            cosine = float(np.min(np.sum(vectors * reference, axis=1)))
            ceilings[p] = model_ceiling(e, batches)
            ov = e.choice.get("openvino")  # openvino-int8: conversion cost, agreement on the shipped real photos
            real = f"; on 7 real photos >= {ov['cosine_min']:.5f}, converted in {ov['converted_s']} s" if ov else ""
            say(f"  {p}: {ceilings[p]:.1f} img/s, cosine to fp32 >= {cosine:.5f} on 16 photo-like JPEGs{real}")
            result(f"ceiling, {p}", f"{ceilings[p]:.1f} img/s ({ceilings[p] / ceilings['fp32']:.2f}x fp32; "
                   f"cosine to fp32 >= {cosine:.5f}{real})")
            del e
        best = max(ceilings, key=lambda p: ceilings[p])
        today = max((p for p in ceilings if p != "openvino-int8"), key=lambda p: ceilings[p])  # torch's best
        if "openvino-int8" in ceilings:
            gain = ceilings["openvino-int8"] / ceilings[today]
            result("openvino-int8 ceiling / the best of torch's", f"{gain:.2f}x ({today})", ">= 1.3x", gain >= 1.3)
        say("(3) model.precision = auto")
        cache = work / "precision.json"
        auto, first = loaded(model_dir, "auto", cache)
        del auto
        auto, cached = loaded(model_dir, "auto", cache)
        say(f"  chose {auto.precision} (best measured here: {best}); probe {first['figures']}")
        result("`auto` chose", f"{auto.precision} (the best ceiling above: {best})", "the best precision",
               auto.precision == best)
        once = first.get("openvino", {}).get("converted_s", 0.0)  # converting openvino-int8: once per machine
        result("start-up cost of `auto`, no cached choice", f"{(first['seconds'] - once) * 1000:.0f} ms (probe)"
               + (f", + {once:.1f} s converting openvino-int8 (once: kept in data_dir/openvino)" if once else ""),
               "< 3 s (probe)", first["seconds"] - once < 3)
        converting = cached["converted_s"] * 1000
        result("start-up cost of `auto`, cached choice", f"{cached['seconds'] * 1000:.0f} ms (+ {converting:.0f} ms "
               f"converting the model to {auto.precision}, as an explicit setting costs)", "< 50 ms",
               cached["seconds"] < 0.05)
        say("(4) the decode side alone (clipwatch's preparation: draft decode, resize, normalise)")
        costs = {}
        for label, files in (("1024x768 JPEG", web[:32]), ("12 MP JPEG", phone[:16])):
            cpu_ms, one, two = decode_rates(auto, files)
            costs[label] = cpu_ms
            gil = "the GIL does not bind" if two / one > 1.6 else "GIL-bound"
            result(f"decode, {label}", f"{cpu_ms:.1f} CPU ms per file; {one:.0f} files/s with one thread, "
                   f"{two:.0f} with two ({two / one:.2f}x: {gil})")
        say("(5) clipwatch scan into MySQL 9")
        fp32, _ = loaded(model_dir, "fp32")
        scans = {}
        for label, files, tag in (("1024x768 JPEG", web, "web"), ("12 MP JPEG", phone, "phone")):
            scans[(label, auto.precision)] = scan_rate(args.mysql_url, auto, files, work, f"cpu_{tag}_auto")
            if auto.precision != "fp32":
                scans[(label, "fp32")] = scan_rate(args.mysql_url, fp32, files, work, f"cpu_{tag}_fp32")
        del fp32
        if auto.precision != today and today != "fp32":  # what `auto` chose before openvino-int8 was offered
            before, _ = loaded(model_dir, today)
            scans[("1024x768 JPEG", today)] = scan_rate(args.mysql_url, before, web, work, "cpu_web_today")
            del before
        say("  the seed recipe (one encode per image, one INSERT per row; fp32, as it runs)")
        naive = {"1024x768 JPEG": naive_recipe(model_dir, web[:16 if args.quick else 32], args.mysql_url),
                 "12 MP JPEG": naive_recipe(model_dir, phone[:8 if args.quick else 16], args.mysql_url)}
        for label in ("1024x768 JPEG", "12 MP JPEG"):
            ours, plain = scans[(label, auto.precision)], scans.get((label, "fp32"), scans[(label, auto.precision)])
            bound = cpu_count() / (cpu_count() / ceilings[auto.precision] + costs[label] / 1000)
            result(f"scan, {label}, {auto.precision}", f"{ours:.1f} img/s = {ours / ceilings[best]:.2f}x the best "
                   f"ceiling ({best}), {ours / plain:.2f}x fp32 end to end ({plain:.1f} img/s), "
                   f"{ours / naive[label]:.1f}x the seed recipe ({naive[label]:.2f} img/s); the cores allow at "
                   f"most {bound:.1f} img/s ({bound / ceilings[best]:.2f}x the ceiling)")
        web_ratio = scans[("1024x768 JPEG", auto.precision)] / ceilings[best]
        web_fp32 = scans[("1024x768 JPEG", auto.precision)] / scans.get(("1024x768 JPEG", "fp32"),
                                                                         scans[("1024x768 JPEG", auto.precision)])
        phone_naive = scans[("12 MP JPEG", auto.precision)] / naive["12 MP JPEG"]
        result("1024x768 end to end / best ceiling", f"{web_ratio:.2f}x", ">= 0.65x", web_ratio >= 0.65)
        if auto.precision != today:
            web_today = scans[("1024x768 JPEG", auto.precision)] / scans[("1024x768 JPEG", today)]
            result(f"1024x768 end to end, {auto.precision} / torch's best ({today})", f"{web_today:.2f}x", ">= 1.25x",
                   web_today >= 1.25)
        result("1024x768 end to end / fp32 end to end", f"{web_fp32:.2f}x", ">= 3x", web_fp32 >= 3)
        result("12 MP end to end / seed recipe", f"{phone_naive:.1f}x", ">= 10x", phone_naive >= 10)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print_results()
    return 0


if __name__ == "__main__":
    sys.exit(main())
