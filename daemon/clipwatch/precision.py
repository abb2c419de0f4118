"""Which precision the model runs in: measured on this machine, not assumed.

CPUs with AMX run CLIP several times faster in bf16 than in fp32; CPUs without bf16 units run bf16 several
times *slower*, and int8 (dynamic quantization, VNNI) was the fastest on one without AMX (measured on this
project's machines: bf16 128 against 28 img/s on one; 1.7 against 12 on another; int8 73, bf16 17, fp32
25 on a third: docs/benchmarks.md). So `model.precision = "auto"` times a probe batch in each precision
the device supports, keeps a precision only if its image vectors agree with fp32's (cosine >=
`AGREEMENT_MIN[precision]`), and picks the fastest. Text vectors (prompts, `search --text`) get the same
float precision if a probe text agrees as closely too, else fp32 (texts are few: their precision costs
nothing; int8 quantizes the vision tower only). The
choice is cached (keyed by the CPU model and its relevant flags, torch's version, the model, the device
and the thread count), so later starts skip the probe. A precision given explicitly is checked for
agreement the same way, and fp32 is used if it fails. Vectors are always returned as float32 unit
vectors: the stored column does not change.
"""

from __future__ import annotations

import json
import os
import platform
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import ovmodel
from .logs import get_logger

log = get_logger(__name__)
AGREEMENT_MIN = {"fp32": 1.0, "bf16": 0.999, "fp16": 0.999, "int8": 0.995,  # cosine to fp32 on the probe
                 ovmodel.PRECISION: ovmodel.AGREEMENT_MIN}  # (openvino-int8 also on real photos: ovmodel.py)
PROBE_BATCH = 4
FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8")


def supported(device: str) -> list[str]:
    import torch

    if device.startswith("cuda"):
        return ["fp32", "fp16", *(["bf16"] if torch.cuda.is_bf16_supported() else [])]
    quantized = {"x86", "fbgemm"} & set(torch.backends.quantized.supported_engines)
    missing = ovmodel.available()
    if missing:
        log.info("model_precision_unavailable", precision=ovmodel.PRECISION, reason=missing)
    return ["fp32", "bf16", *(["int8"] if quantized and hasattr(torch, "ao") else []),
            *([] if missing else [ovmodel.PRECISION])]


def cpu() -> tuple[str, list[str]]:
    """The CPU's model name and which of the flags that decide the precision it has."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")),
                platform.processor() or platform.machine())
    return name, [f for f in FLAGS if re.search(rf"\b{f}\b", info)]


def machine_key(model: str, device: str, threads: int) -> str:
    """What the choice depends on: the CPU (model name and the flags that matter), torch, model, device."""
    import torch

    name, flags = cpu()
    gpu = torch.cuda.get_device_name(0) if device.startswith("cuda") else ""
    return "|".join([name, ",".join(flags), torch.__version__, model, device, gpu, str(threads)])


@dataclass(frozen=True)
class Probe:
    """The model on a fixed probe batch in a given precision (`images("bf16")`, or `images("bf16:one")`
    for its first image alone), and on a probe text (None when the model has no text tower)."""

    images: Callable[[str], np.ndarray]
    text: Callable[[str], np.ndarray | None]


def choose(setting: str, device: str, probe: Probe, cache: Path | None, key: str) -> tuple[str, dict[str, Any]]:
    """The precision to run in, and the figures behind the choice (for the log)."""
    available = supported(device)
    if setting != "auto":
        if setting not in available:
            log.warning("model_precision_unavailable", asked=setting, device=device, using="fp32")
            return "fp32", {}
        try:
            agreement = _agreement(probe, setting, probe.images("fp32")) if setting != "fp32" else 1.0
        except Exception as exc:  # the model cannot be converted (no vision tower)
            log.warning("model_precision_unavailable", asked=setting, using="fp32",
                        reason=f"{type(exc).__name__}: {exc}")
            return "fp32", {}
        if agreement < AGREEMENT_MIN[setting]:
            log.warning("model_precision_disagrees", asked=setting, using="fp32", minimum=AGREEMENT_MIN[setting],
                        cosine_min=round(agreement, 6))
            return "fp32", {}
        return setting, {}
    cached = _read(cache).get(key)
    if cached in available:
        return str(cached), {"cached": True}
    figures = measure(probe, available)
    usable = {p: f["img_per_s"] for p, f in figures.items() if f.get("agrees", True) and f["img_per_s"]}
    best = max(usable, key=lambda p: usable[p]) if usable else "fp32"
    _write(cache, key, best)
    return best, figures


def measure(probe: Probe, available: list[str]) -> dict[str, dict[str, Any]]:
    """img/s per precision on the probe batch. A precision whose first image alone takes longer than the
    whole fp32 batch is slower for certain: it is not timed further (on a CPU without bf16 units, a full
    bf16 batch would cost seconds at every first start). A precision the model cannot be converted to
    (no vision tower to convert) is left out, with the reason."""
    probe.images("fp32")  # warm-up: the first call pays for allocations
    started = time.perf_counter()
    reference = probe.images("fp32")
    fp32_s = time.perf_counter() - started
    figures: dict[str, dict[str, Any]] = {"fp32": {"img_per_s": round(PROBE_BATCH / fp32_s, 1)}}
    for precision in available[1:]:
        try:
            probe.images(precision + ":one")  # builds the converted copy (untimed)
        except Exception as exc:
            figures[precision] = {"img_per_s": 0.0, "note": f"{type(exc).__name__}: {exc}"}
            continue
        started = time.perf_counter()
        probe.images(precision + ":one")  # warm-up on one image, timed
        if time.perf_counter() - started > fp32_s:
            figures[precision] = {"img_per_s": 0.0, "note": "one image took longer than the fp32 batch"}
            continue
        started = time.perf_counter()
        probe.images(precision)
        seconds = time.perf_counter() - started
        agreement = _agreement(probe, precision, reference)
        figures[precision] = {"img_per_s": round(PROBE_BATCH / seconds, 1), "cosine_min": round(agreement, 6),
                              "agrees": agreement >= AGREEMENT_MIN[precision]}
    return figures


def _agreement(probe: Probe, precision: str, reference: np.ndarray) -> float:
    return float(np.min(np.sum(probe.images(precision) * reference, axis=1)))


def for_texts(probe: Probe, precision: str) -> str:
    """The precision for text vectors: the images' float precision if a probe text agrees with fp32,
    else fp32 (int8 converts the vision tower only)."""
    if precision not in ("bf16", "fp16"):
        return "fp32"
    reference, vectors = probe.text("fp32"), probe.text(precision)
    if reference is None or vectors is None:
        return "fp32"
    agreement = float(np.min(np.sum(reference * vectors, axis=1)))
    return precision if agreement >= AGREEMENT_MIN[precision] else "fp32"


def _read(cache: Path | None) -> dict[str, Any]:
    if cache is None:
        return {}
    try:
        data = json.loads(cache.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write(cache: Path | None, key: str, precision: str) -> None:
    if cache is None:
        return
    try:
        data = _read(cache)
        data[key] = precision
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, cache)
    except OSError as exc:
        log.warning("model_precision_not_cached", path=str(cache), error=str(exc))


def clip_module(model: Any) -> Any:
    """The module holding the vision tower (transformers' CLIPModel inside the SentenceTransformer)."""
    found = next((m for m in model.modules() if hasattr(m, "vision_model")), None)
    if found is None:
        raise ValueError("the model has no vision_model to convert")
    return found


def input_dtype(model: Any) -> Any:
    """The dtype the vision tower takes its pixels in (bf16 for a bf16 copy; else float32)."""
    import torch

    try:
        return next(clip_module(model).vision_model.parameters()).dtype
    except (ValueError, StopIteration):
        return torch.float32


def converted(model: Any, how: str, in_place: bool = False) -> Any:
    """A copy of the model (or the model itself, `in_place`) whose vision tower runs in bf16 weights (with
    its projection), or in int8 (torch's dynamic quantization of the vision transformer's linear layers:
    int8 weights, activations quantized per batch; the small projection stays fp32). The text tower stays
    fp32. Raises if there is no vision tower."""
    import copy
    import warnings

    import torch

    root = model if in_place else copy.deepcopy(model)
    clip = clip_module(root)
    tower = {name for name in ("vision_model", "visual_projection") if getattr(clip, name, None) is not None}
    if how == "bf16":
        for name in tower:
            getattr(clip, name).to(torch.bfloat16)
    elif how == "int8":
        with warnings.catch_warnings():  # torch deprecates eager-mode quantization for torchao: docs/benchmarks.md
            warnings.simplefilter("ignore")
            # by type on the vision transformer itself: the same spec by module names ran 30% slower here
            torch.ao.quantization.quantize_dynamic(clip.vision_model, {torch.nn.Linear}, dtype=torch.qint8,
                                                   inplace=True)  # type: ignore[no-untyped-call]
    else:
        raise ValueError(f"no converted copy for {how!r}")
    return root
