"""The CLIP model behind one small class: `load()` once, then `prepare()` (bytes to pixels, any thread)
and `embed_images()` / `embed_texts()` (one forward pass per call).

Nothing else in clipwatch knows the model is torch and sentence-transformers. Images take the fast path
when the model's image processor is one `imaging.Preprocessing` reproduces (CLIP's is): our pixels go
straight into the model's own `forward`, skipping the library's per-image preprocessing. Otherwise images
go through `SentenceTransformer.encode` as PIL images.

The precision is chosen at load by measurement (`precision.py`). On the CPU, bf16 and int8 are copies of
the model whose vision tower is converted (bf16 weights; int8 dynamic quantization of its linear layers),
built only while probing or once chosen; the copy then replaces the fp32 model (its text tower stays
fp32 weights). On CUDA, fp16 and bf16 are autocast around the forward pass, and a batch is copied from
pinned memory. Vectors come out float32 either way. The CUDA path cannot run on the machines this
project is built on (no GPU): it is kept small, and `cuda` without a GPU falls back to CPU.
"""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeAlias
from urllib.parse import urlsplit

import numpy as np
from PIL import Image

from . import ovmodel, precision
from .errors import ModelLoadError
from .imaging import Preprocessing, decode_image
from .logs import get_logger
from .pdq import DRAFT_SIDE

log = get_logger(__name__)

# Progress bars and chatter from the libraries make no sense in a daemon's log.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


HOW_TO_FIX = ("Without network access, copy the model directory to this machine (for example with "
              "`hf download sentence-transformers/clip-ViT-B-32 --local-dir clip-ViT-B-32` elsewhere) and set "
              "model.name (or CLIPWATCH_MODEL__NAME) to that directory.")


def model_identity(name: str) -> str:
    """What goes into each row's `model` column: the hub id, or a local directory's name.

    A local copy of clip-ViT-B-32 in /opt/models/clip-ViT-B-32 is the same model as the hub's, so its rows
    stay valid when the directory moves or the daemon switches between hub and local copy.
    """
    return os.path.basename(os.path.normpath(name)) if os.path.isdir(name) else name


def resolve_device(setting: str) -> str:
    import torch

    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if setting == "cuda" and not torch.cuda.is_available():
        log.warning("cuda_unavailable", setting="model.device = cuda", using="cpu",
                    reason="torch reports no usable CUDA device")
        return "cpu"
    return setting


# What `prepare` returns: model-ready pixels (fast path) or a decoded RGB image (library path).
Prepared: TypeAlias = "np.ndarray | Image.Image"
PARITY_MIN = 0.99  # the fast path is used only if it agrees with the library on a probe image
LIBRARY_PATH_MAX_SIDE = 1024  # shortest side of images prepared for models without the fast path


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class Embedder:
    """A sentence-transformers CLIP model. Vectors are L2-normalised float32, so dot product = cosine."""

    def __init__(self, name: str, device: str = "auto", cache_dir: str = "", threads: int = 0,
                 fast_preprocessing: bool = True, precision: str = "fp32", choice_cache: str = "") -> None:
        self.name = name
        self.identity = model_identity(name)
        self.device_setting = device
        self.cache_dir = cache_dir
        self.threads = threads  # torch intra-op threads; 0: one per CPU core available to this process
        self.device = ""
        self.dimension = 0
        self.preprocessing: Preprocessing | None = None  # set by load() when the fast path applies
        self._fast_wanted = fast_preprocessing
        self._features: dict[str, Any] = {}  # what the model's preprocess() gives for one image, minus pixels
        self._model: Any = None  # a SentenceTransformer, once loaded (after the choice: in its precision)
        self._variants: dict[str, Any] = {}  # while probing: CPU copies of the model in bf16 / int8
        self._tower: Any = None  # openvino-int8: the compiled vision tower (ovmodel.py), beside the fp32 model
        self._lock = threading.Lock()  # the worker, the reference refresh and searches share one model
        self.precision_setting = precision  # "auto", "fp32", "bf16" or "fp16"
        self.precision = "fp32"  # what runs, once loaded
        self.text_precision = "fp32"  # the texts' (the same, when a probe text agrees as closely)
        self.choice_cache = choice_cache  # where `auto` keeps its choice (a JSON file), or "" for nowhere
        self.choice: dict[str, Any] = {}  # once loaded: what choosing the precision cost, and its figures

    @classmethod
    def from_config(cls, model: Any, choice_cache: str = "") -> Embedder:
        """From the `[model]` section (a config.ModelConfig)."""
        return cls(model.name, model.device, model.cache_dir, threads=model.threads, precision=model.precision,
                   choice_cache=choice_cache)

    def load(self) -> None:
        """Load the model and probe it with one image. Raises ModelLoadError with a message for the user."""
        import torch
        from sentence_transformers import SentenceTransformer

        self.device = resolve_device(self.device_setting)
        if self.device == "cpu":
            torch.set_num_threads(self.threads or cpu_count())
        options: dict[str, Any] = dict(device=self.device, cache_folder=self.cache_dir or None)
        if self.name.startswith(("/", "./", "../", "~")) and not os.path.isdir(os.path.expanduser(self.name)):
            raise ModelLoadError(f"model.name = {self.name!r} could not be loaded: there is no such directory. "
                                 "Point model.name (or CLIPWATCH_MODEL__NAME) at the directory that holds the "
                                 "model (its config.json and weights), or give a hub id such as clip-ViT-B-32.")
        try:
            if os.path.isdir(self.name):
                self._model = SentenceTransformer(self.name, **options)
            else:
                self._model = _load_from_hub(self.name, SentenceTransformer, options)
        except ModelLoadError:
            raise
        except Exception as exc:  # the library raises many types: OSError, HTTP errors, ValueError...
            raise ModelLoadError(
                f"model.name = {self.name!r} could not be loaded ({type(exc).__name__}: {_first_line(exc)}). "
                "It must be a sentence-transformers model id that can be downloaded from the Hugging Face hub, "
                "or a local directory holding the model. " + HOW_TO_FIX) from None
        try:
            probe = self.embed_images([Image.new("RGB", (64, 64), (127, 127, 127))])
        except Exception as exc:
            raise ModelLoadError(f"model.name = {self.name!r} loaded but cannot embed images "
                                 f"({type(exc).__name__}: {_first_line(exc)}); is it a CLIP model?") from None
        self.dimension = int(probe.shape[1])
        if self._fast_wanted:
            self.preprocessing = self._fast_path()
        self._choose_precision()
        log.info("model_loaded", model=self.name, device=self.device, dimension=self.dimension,
                 threads=torch.get_num_threads(), fast_preprocessing=self.preprocessing is not None,
                 precision=self.precision)

    def _choose_precision(self) -> None:
        import torch

        started = time.perf_counter()
        made: dict[str, Any] = {}  # the probe batch, made only if something is measured (not when cached)

        def images(how: str) -> np.ndarray:
            if not made:
                made["batch"] = [_probe_image(seed) for seed in range(precision.PROBE_BATCH)]
                made["pixels"] = np.stack([self.preprocessing.pixels(i) for i in made["batch"]]) \
                    if self.preprocessing else None
            wanted, _, one = how.partition(":")
            count = 1 if one else precision.PROBE_BATCH
            if made["pixels"] is not None:
                return self._forward_pixels(made["pixels"][:count], wanted)
            return self._library_images(made["batch"][:count], wanted)

        def text(how: str) -> np.ndarray | None:
            try:
                return self._encode(["a photo of a bicycle leaning on a wall", "a red car"], how)
            except Exception:  # a model without a text tower: texts stay in fp32
                return None

        cache = Path(self.choice_cache) if self.choice_cache else None
        key = (precision.machine_key(self.identity, self.device, torch.get_num_threads())
               if self.precision_setting == "auto" else "")  # only `auto` looks up or keeps a choice
        probe = precision.Probe(images, text)
        try:
            self.precision, figures = precision.choose(self.precision_setting, self.device, probe, cache, key)
            self.text_precision = precision.for_texts(probe, self.precision)
        finally:  # the chosen copy replaces the fp32 model (its text tower is fp32); the others are dropped
            chosen = self._variants.pop(self.precision, None)
            self._variants.clear()
            if self.precision != ovmodel.PRECISION:
                self._tower = None
        chose_s, started = time.perf_counter() - started, time.perf_counter()
        if chosen is not None:
            self._model = chosen
        elif self.precision in ("bf16", "int8") and not self.device.startswith("cuda"):  # chosen from the cache
            self._model = precision.converted(self._model, self.precision, in_place=True)
        elif self.precision == ovmodel.PRECISION and self._tower is None:  # chosen from the cache: load it
            self._openvino()
        self.choice = {"seconds": round(chose_s, 3), "converted_s": round(time.perf_counter() - started, 3),
                       "figures": figures or None, **{k: v for k, v in self.choice.items() if k == "openvino"}}
        log.info("model_precision_chosen", precision=self.precision, texts=self.text_precision,
                 setting=self.precision_setting, **self.choice)

    def _fast_path(self) -> Preprocessing | None:
        """Our preprocessing, if the model's image processor is one it reproduces and the model's forward
        takes our pixels: checked on a probe image against the library's own path."""
        processor = next((getattr(getattr(m, "processor", None), "image_processor", None)
                          for m in self._model.children() if hasattr(m, "processor")), None)
        prep = Preprocessing.from_processor(processor) if processor is not None else None
        if prep is None or not hasattr(self._model, "preprocess"):
            log.info("fast_preprocessing_unavailable", reason="the model's image processor is not CLIP's")
            return None
        probe = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8))
        try:
            features = dict(self._model.preprocess([probe]))
            features.pop("pixel_values")
            self._features = features
            reference = self._library_images([probe])[0]
            fast = self._forward_pixels(prep.pixels(probe)[None])[0]
        except Exception as exc:
            log.info("fast_preprocessing_unavailable", reason=f"{type(exc).__name__}: {_first_line(exc)}")
            return None
        agreement = float(reference @ fast)
        if agreement < PARITY_MIN:
            log.warning("fast_preprocessing_unavailable", reason="disagrees with the library", cosine=agreement)
            return None
        return prep

    def prepare(self, data: bytes, max_pixels: int) -> Prepared:
        """`pixels_of(decode(...))`, in any thread. Raises FileRejected like `decode_image`."""
        return self.pixels_of(self.decode(data, max_pixels))

    def decode(self, data: bytes, max_pixels: int) -> Image.Image:
        """Bytes decoded as small as this model's input and the PDQ hash allow (a JPEG's DCT downscale)."""
        draft = self.preprocessing.size if self.preprocessing is not None else LIBRARY_PATH_MAX_SIDE
        return decode_image(data, max_pixels, draft=max(draft, DRAFT_SIDE))

    def pixels_of(self, img: Image.Image) -> Prepared:
        """A decoded image to what `embed_images` takes. A model whose processor we do not reproduce gets
        the image, at most 1024 px (batches decoded ahead hold megabytes, not gigabytes)."""
        if self.preprocessing is not None:
            return self.preprocessing.pixels(img)
        if min(img.size) > LIBRARY_PATH_MAX_SIDE:
            scale = LIBRARY_PATH_MAX_SIDE / min(img.size)
            img = img.resize((round(img.width * scale), round(img.height * scale)), Image.Resampling.BICUBIC)
        return img

    def embed_images(self, images: Sequence[Prepared]) -> np.ndarray:
        """One forward pass for the whole list (PIL images, or arrays from `prepare`); returns an
        (n, dimension) float32 array of unit vectors."""
        if self.preprocessing is None:
            return self._library_images([i if isinstance(i, Image.Image) else _unexpected(i) for i in images])
        if not images:
            return np.zeros((0, self.dimension), np.float32)
        prep = self.preprocessing
        return self._forward_pixels(np.stack([prep.pixels(i) if isinstance(i, Image.Image) else i for i in images]))

    def _model_for(self, wanted: str) -> Any:
        """The model to run `wanted` in: while probing on the CPU, a converted copy (built once); else the
        model (after the choice, the chosen copy: its text tower is fp32, so texts run in it too)."""
        if self.device.startswith("cuda") or wanted == "fp32" or self.precision == wanted:
            return self._model
        if wanted not in self._variants:
            self._variants[wanted] = precision.converted(self._model, wanted)
        return self._variants[wanted]

    def _openvino(self) -> Any:
        """The int8 OpenVINO tower (ovmodel.py), built or loaded once; raises where it cannot run or disagrees."""
        if self._tower is None:
            if self.preprocessing is None or self.device != "cpu":
                raise ValueError("openvino-int8 needs the CPU and the fast preprocessing path")
            base = Path(self.choice_cache).parent if self.choice_cache else Path(tempfile.gettempdir()) / "clipwatch"
            self._tower, self.choice["openvino"] = ovmodel.build(
                precision.clip_module(self._model), self.preprocessing, self.identity, base / "openvino",
                lambda batch: self._forward_pixels(batch, "fp32"))
        return self._tower

    def _forward_pixels(self, batch: np.ndarray, wanted: str | None = None) -> np.ndarray:
        """The model's own forward on an (n, 3, H, W) float32 batch of our preprocessed pixels, in the
        chosen precision (or `wanted`, while it is being chosen)."""
        import torch

        if (wanted or self.precision) == ovmodel.PRECISION:
            tower = self._openvino()
            with self._lock:
                vectors: np.ndarray = tower(batch)
            return vectors

        features = {k: (v * len(batch) if isinstance(v, list) and len(v) == 1 else v)
                    for k, v in self._features.items()}
        features["pixel_values"] = torch.from_numpy(batch)
        return self._forward(features, wanted)

    def _library_images(self, images: list[Image.Image], wanted: str | None = None) -> np.ndarray:
        """The library's own preprocessing (what `encode` does for images), then the same forward."""
        if self._model is None:
            raise RuntimeError("Embedder.load() was not called")
        return self._forward(dict(self._model.preprocess(images)), wanted)

    def _forward(self, features: dict[str, Any], wanted: str | None) -> np.ndarray:
        """One forward pass of image features; pixels cast to what the vision tower takes (bf16 for a
        bf16 copy). Unit float32 vectors out."""
        import torch

        wanted = wanted or self.precision
        with self._lock, torch.inference_mode(), _autocast(self.device, wanted):
            model = self._model_for(wanted)
            for k, v in features.items():
                if isinstance(v, torch.Tensor):
                    if self.device.startswith("cuda"):  # untested here (no GPU): see docs/benchmarks.md
                        v = (v.pin_memory() if k == "pixel_values" else v).to(self.device, non_blocking=True)
                    features[k] = v.to(precision.input_dtype(model)) if k == "pixel_values" else v
            out = model.forward(features)["sentence_embedding"]
            out = torch.nn.functional.normalize(out.float(), dim=-1)
        return np.ascontiguousarray(out.cpu().numpy(), dtype=np.float32)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        return self._encode(list(texts), self.text_precision)

    def _encode(self, texts: list[str], wanted: str) -> np.ndarray:
        """Texts through the library's `encode`, in the model holding the images' precision (its text tower
        is fp32 weights); `wanted` bf16 or fp16 runs the text tower under autocast."""
        import torch

        if self._model is None:
            raise RuntimeError("Embedder.load() was not called")
        with self._lock, torch.inference_mode(), _autocast(self.device, wanted, texts=True):
            vectors = self._model.encode(texts, batch_size=max(len(texts), 1), convert_to_numpy=True,
                                         normalize_embeddings=True, show_progress_bar=False)
        return np.ascontiguousarray(vectors, dtype=np.float32)


def _load_from_hub(name: str, loader: Any, options: dict[str, Any]) -> Any:
    """The cached copy if there is one; else download, after checking that the hub answers at all
    (without a network the hub client retries for over a minute before it gives up)."""
    try:
        return loader(name, local_files_only=True, **options)
    except Exception:
        pass
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        raise ModelLoadError(f"model.name = {name!r} is not a local directory and is not in the model "
                             "cache, and HF_HUB_OFFLINE is set. " + HOW_TO_FIX)
    endpoint = urlsplit(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((endpoint.hostname or "", endpoint.port or 443), timeout=10).close()
    except OSError as exc:
        raise ModelLoadError(f"model.name = {name!r} is not a local directory and is not cached, and the "
                             f"model hub {endpoint.hostname} cannot be reached ({exc}). " + HOW_TO_FIX) from None
    return loader(name, **options)


def _autocast(device: str, wanted: str, texts: bool = False) -> Any:
    """Autocast where the precision needs it: bf16 and fp16 on CUDA (untested here: no GPU), and bf16
    texts on the CPU (the text tower keeps fp32 weights). CPU images need none: their copy converts."""
    import torch

    if device.startswith("cuda") and wanted in ("bf16", "fp16"):
        return torch.autocast("cuda", dtype=torch.bfloat16 if wanted == "bf16" else torch.float16)
    if wanted == "bf16" and texts:
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _probe_image(seed: int) -> Image.Image:
    """A photo-like probe image: smooth colour blobs (pixel noise would be nothing like an upload)."""
    rng = np.random.default_rng(seed)
    blobs = Image.fromarray(rng.integers(0, 256, (40, 54, 3), dtype=np.uint8))
    return blobs.resize((640, 480), Image.Resampling.BICUBIC)


def _unexpected(item: object) -> Image.Image:
    raise TypeError(f"expected a PIL image, got {type(item).__name__} (the fast preprocessing is off)")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else "no details"
