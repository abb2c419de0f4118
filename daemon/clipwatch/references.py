"""The prohibited reference set: images from `prohibited.reference_dir` and text from `prohibited.prompts`.

An image's label is its sub-folder's name (`weapons/knife-01.jpg` -> `weapons`), or its file stem at
the top level (`logo-acme.png` -> `logo-acme`). A prompt's label is the prompt. Reference images are
embedded once and cached by content (sha256) in the data directory; the directory is checked every
`prohibited.refresh_interval_s` and only new or changed images are embedded again.
"""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .banks import Banks
from .config import Config
from .embedder import Embedder, Prepared
from .errors import FileRejected
from .files import PathFilter, read_file
from .logs import get_logger

log = get_logger(__name__)


@dataclass(frozen=True)
class ReferenceMatch:
    label: str
    score: float
    kind: str  # "image" or "text"


@dataclass(frozen=True)
class _Set:
    labels: tuple[str, ...]
    vectors: np.ndarray  # (n, dim) unit vectors
    threshold: float


class References:
    def __init__(self, config: Config, embedder: Embedder, banks: Banks | None = None) -> None:
        self.config = config
        self.banks = banks  # the hash lists (banks.py), judged beside the references
        self.embedder = embedder
        self.directory = config.prohibited.reference_dir
        self.cache_path = Path(config.daemon.data_dir) / f"references-{_safe(embedder.identity)}.npz"
        self._images = _Set((), np.zeros((0, 1), np.float32), config.prohibited.image_threshold)
        self._texts = _Set((), np.zeros((0, 1), np.float32), config.prohibited.text_threshold)
        self._signature: tuple[tuple[str, int, int], ...] | None = None
        self._examples: dict[str, tuple[str, str]] = {}  # label -> (path, sha256) of its first image
        self._lock = threading.Lock()

    def example(self, label: str) -> tuple[str, str] | None:
        """The first reference image of `label` (path, sha256), for the review page; None for a prompt."""
        return self._examples.get(label)

    @property
    def enabled(self) -> bool:
        return bool(self.directory or self.config.prohibited.prompts)

    def __len__(self) -> int:
        return len(self._images.labels) + len(self._texts.labels)

    def load(self) -> None:
        prompts = self.config.prohibited.prompts
        if prompts:
            self._texts = _Set(tuple(prompts), self.embedder.embed_texts(list(prompts)), self._texts.threshold)
        self.refresh()

    def refresh(self) -> bool:
        """Re-read the reference directory if anything in it changed. True if the set was rebuilt."""
        if not self.directory:
            return False
        with self._lock:
            files = self._listing()
            signature = tuple((str(p), s, m) for p, s, m in files)
            if signature == self._signature:
                return False
            cache = self._read_cache()
            entries: list[list[Any]] = []  # [label, sha256, vector]; vectors of new images come in batches
            pending: list[tuple[list[Any], Prepared]] = []
            examples: dict[str, tuple[str, str]] = {}
            for path, _, _ in files:
                try:
                    data = read_file(str(path), self.config.watch.max_file_bytes)
                    vector = cache.get(data.sha256)
                    image = None if vector is not None else self.embedder.prepare(
                        data.data, self.config.model.max_image_pixels)
                except FileRejected as exc:
                    log.warning("reference_rejected", path=str(path), reason=exc.reason, error=str(exc))
                    continue
                entries.append([_label(Path(self.directory), path), data.sha256, vector])
                examples.setdefault(entries[-1][0], (str(path), data.sha256))
                if image is not None:
                    pending.append((entries[-1], image))
                if len(pending) == self.config.model.batch_size:
                    self._embed(pending)
            self._embed(pending)
            labels = [label for label, _, _ in entries]
            vectors = [vector for _, _, vector in entries]
            fresh = {sha: vector for _, sha, vector in entries}
            matrix = np.stack(vectors) if vectors else np.zeros((0, 1), np.float32)
            self._images = _Set(tuple(labels), matrix, self._images.threshold)
            self._examples = examples
            self._signature = signature
            self._write_cache(fresh)
        log.info("references_loaded", images=len(labels), prompts=len(self._texts.labels), directory=self.directory)
        return True

    def _embed(self, pending: list[tuple[list[Any], Prepared]]) -> None:
        """One forward pass for the new reference images collected so far."""
        if pending:
            for (entry, _), vector in zip(pending, self.embedder.embed_images([i for _, i in pending]), strict=True):
                entry[2] = vector
            pending.clear()

    def match(self, vector: np.ndarray, skip: frozenset[str] = frozenset()) -> ReferenceMatch | None:
        """The reference `vector` is closest to among those above their threshold; the largest margin over
        its own threshold wins (image-to-image and text-to-image similarities live on different scales).
        References whose label is in `skip` (dismissed for this file) are not considered."""
        best: tuple[float, ReferenceMatch] | None = None
        for kind, ref in (("image", self._images), ("text", self._texts)):
            if not ref.labels:
                continue
            scores = ref.vectors @ vector
            if skip:
                scores = np.where([label in skip for label in ref.labels], -np.inf, scores)
            i = int(np.argmax(scores))
            score = float(scores[i])
            if score >= ref.threshold and (best is None or score - ref.threshold > best[0]):
                best = (score - ref.threshold, ReferenceMatch(ref.labels[i], score, kind))
        return best[1] if best else None

    def _listing(self) -> list[tuple[Path, int, int]]:
        images = PathFilter([self.directory], self.config.watch.extensions, self.config.watch.ignore)
        found = []
        if os.path.isdir(self.directory):
            for entry in images.walk(self.directory):
                st = entry.stat(follow_symlinks=False)
                found.append((Path(entry.path), st.st_size, st.st_mtime_ns))
        else:
            log.warning("reference_dir_missing", directory=self.directory)
        return sorted(found)

    def _read_cache(self) -> dict[str, np.ndarray]:
        try:
            with np.load(self.cache_path) as data:
                return dict(zip(data["sha256"].tolist(), data["vectors"], strict=True))
        except (OSError, KeyError, ValueError):
            return {}

    def _write_cache(self, vectors: dict[str, np.ndarray]) -> None:
        if not vectors:
            return
        try:
            self.cache_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.cache_path.with_suffix(".tmp.npz")
            np.savez(tmp, sha256=np.array(list(vectors)), vectors=np.stack(list(vectors.values())))
            os.replace(tmp, self.cache_path)
        except OSError as exc:
            log.warning("reference_cache_not_written", path=str(self.cache_path), error=str(exc))


def _label(directory: Path, path: Path) -> str:
    parts = path.relative_to(directory).parts
    return parts[0] if len(parts) > 1 else path.stem


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:100]
