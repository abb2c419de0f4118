"""Thumbnails for the review page, made on demand from the files and cached by sha256.

Only files under a watched root or the quarantine directory are ever read (after resolving links), so
a row of another server, or one whose path now leads elsewhere, gets nothing. Images go through the
same decoder as ingest (`imaging.decode_image`: EXIF orientation, pixel limit, JPEG draft mode), then are
shrunk to at most `SIDE` pixels a side. The cache holds at most `CACHE_MAX` files; the oldest go first.
"""

from __future__ import annotations

import io
import os
import re
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from ..errors import FileRejected
from ..files import within
from ..imaging import decode_image

SIDE = 360
CACHE_MAX = 20_000
SHA256 = re.compile(r"^[0-9a-f]{64}$")


class Thumbnails:
    def __init__(self, cache_dir: Path, roots: Sequence[str], quarantine_dir: str, max_pixels: int, max_bytes: int,
                 instance: str = "", reference_dir: str = "") -> None:
        self.cache_dir, self.max_pixels, self.max_bytes, self.instance = cache_dir, max_pixels, max_bytes, instance
        self.roots = tuple(os.path.realpath(a) for a in roots)
        self.allowed = (*self.roots, *([os.path.realpath(quarantine_dir)] if quarantine_dir else []))
        self.references = (os.path.realpath(reference_dir),) if reference_dir else ()
        self._written = 0
        self._lock = threading.Lock()

    def resolve(self, path: str) -> str | None:
        """The file's real path (links resolved) if it is an existing regular file under a root or the
        quarantine, else None: the one check before anything of a row's file is read or served."""
        return _existing_within(path, self.allowed)

    def under_root(self, path: str) -> bool:
        return _inside(os.path.realpath(path), self.roots)

    def get(self, path: str, sha256: str, reference: bool = False) -> bytes | None:
        """A JPEG thumbnail of the file, or None when it cannot be served (gone, outside, not an image).
        `reference`: a prohibited reference image, which must be under `prohibited.reference_dir` instead."""
        real = _existing_within(path, self.references if reference else self.allowed)
        if not SHA256.match(sha256) or real is None:
            return None
        cached = self.cache_dir / sha256[:2] / f"{sha256}.jpg"
        try:
            return cached.read_bytes()
        except OSError:
            pass
        try:
            with open(real, "rb") as f:
                data = f.read(self.max_bytes + 1)
            if len(data) > self.max_bytes:
                return None
            image = decode_image(data, self.max_pixels, draft=SIDE)
        except (OSError, FileRejected):
            return None
        image.thumbnail((SIDE, SIDE), Image.Resampling.LANCZOS)
        out = io.BytesIO()
        image.save(out, "JPEG", quality=82)
        self._store(cached, out.getvalue())
        return out.getvalue()

    @staticmethod
    def dimensions(real: str) -> tuple[int, int] | None:
        """Width and height as shown (EXIF rotation applied), from the header only, of a path `resolve`
        returned."""
        try:
            with Image.open(real) as img:
                width, height = img.size
                turned = img.getexif().get(0x0112) in (5, 6, 7, 8)
        except Exception:  # any file a decoder chokes on is "unknown size" here
            return None
        return (height, width) if turned else (width, height)

    def _store(self, target: Path, data: bytes) -> None:
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".part")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, target)
        except OSError:
            return  # a cache that cannot be written only costs time
        with self._lock:
            self._written += 1
            due = self._written % 500 == 0
        if due:
            self._prune()

    def _prune(self) -> None:
        files = sorted(self.cache_dir.glob("??/*.jpg"), key=lambda p: p.stat().st_mtime if p.exists() else 0)
        for old in files[:max(0, len(files) - CACHE_MAX)]:
            old.unlink(missing_ok=True)


def _existing_within(path: str, directories: Sequence[str]) -> str | None:
    real = os.path.realpath(path)
    return real if _inside(real, directories) and os.path.isfile(real) else None


def _inside(real: str, directories: Sequence[str]) -> bool:
    return any(within(real, d) for d in directories)
