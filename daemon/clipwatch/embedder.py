"""The CLIP model behind one small class: `load()` once, then `embed_images()` / `embed_texts()`.

Nothing else in clipwatch knows the model is torch and sentence-transformers.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from PIL import Image

from .errors import ModelLoadError
from .logs import get_logger

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


class Embedder:
    """A sentence-transformers CLIP model. Vectors are L2-normalised float32, so dot product = cosine."""

    def __init__(self, name: str, device: str = "auto", cache_dir: str = "") -> None:
        self.name = name
        self.identity = model_identity(name)
        self.device_setting = device
        self.cache_dir = cache_dir
        self.device = ""
        self.dimension = 0
        self._model: Any = None  # a SentenceTransformer, once loaded
        self._lock = threading.Lock()  # the worker, the reference refresh and searches share one model

    def load(self) -> None:
        """Load the model and probe it with one image. Raises ModelLoadError with a message for the user."""
        from sentence_transformers import SentenceTransformer

        self.device = resolve_device(self.device_setting)
        options: dict[str, Any] = dict(device=self.device, cache_folder=self.cache_dir or None)
        if self.name.startswith(("/", "./", "../", "~")) and not os.path.isdir(os.path.expanduser(self.name)):
            raise ModelLoadError(f"model.name = {self.name!r} could not be loaded: there is no such directory. "
                                 "Point model.name (or CLIPWATCH_MODEL__NAME) at the directory that holds the "
                                 "model (its config.json and weights), or give a hub id such as clip-ViT-B-32.")
        try:
            if os.path.isdir(self.name):
                self._model = SentenceTransformer(self.name, **options)
            else:
                self._model = self._load_from_hub(SentenceTransformer, options)
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
        log.info("model_loaded", model=self.name, device=self.device, dimension=self.dimension)

    def _load_from_hub(self, loader: Any, options: dict[str, Any]) -> Any:
        """The cached copy if there is one; else download, after checking that the hub answers at all
        (without a network the hub client retries for over a minute before it gives up)."""
        try:
            return loader(self.name, local_files_only=True, **options)
        except Exception:
            pass
        if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
            raise ModelLoadError(f"model.name = {self.name!r} is not a local directory and is not in the model "
                                 "cache, and HF_HUB_OFFLINE is set. " + HOW_TO_FIX)
        endpoint = urlsplit(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
        try:
            socket.create_connection((endpoint.hostname or "", endpoint.port or 443), timeout=10).close()
        except OSError as exc:
            raise ModelLoadError(f"model.name = {self.name!r} is not a local directory and is not cached, and the "
                                 f"model hub {endpoint.hostname} cannot be reached ({exc}). " + HOW_TO_FIX) from None
        return loader(self.name, **options)

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """One forward pass for the whole list; returns an (n, dimension) float32 array of unit vectors."""
        return self._encode(list(images))

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        return self._encode(list(texts))

    def _encode(self, items: list[Image.Image] | list[str]) -> np.ndarray:
        import torch

        if self._model is None:
            raise RuntimeError("Embedder.load() was not called")
        with self._lock, torch.inference_mode():
            vectors = self._model.encode(items, batch_size=max(len(items), 1), convert_to_numpy=True,
                                         normalize_embeddings=True, show_progress_bar=False)
        return np.ascontiguousarray(vectors, dtype=np.float32)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else "no details"
