"""PDQ, Meta's perceptual hash: the signal that tells a *copy* (re-encoded, resized, recompressed, lightly
edited) from a look-alike, which CLIP cannot (two different dogs score 0.96 in CLIP).

A PDQ hash is 256 bits from a DCT of a 64x64 luminance image, with a quality score 0..100: flat or
featureless images score low and their hashes are unreliable. Two images whose hashes are at most 31 bits
apart (Hamming distance) are copies by Meta's recommended starting point, for hashes of quality >= 50
(docs/benchmarks.md has what that gives on real photographs).

Hashes come from `pdqhash`, the Python binding of Meta's own C++ (facebook/ThreatExchange, pdq/cpp), the
library python-threatexchange itself uses: the same bits as every hash list the industry shares, which a
re-implementation would have to prove. It is hashed from the image the decode threads already made for
the model (a JPEG decoded at >= DRAFT_SIDE), reduced by a whole factor to 512-1,023 px (a 1600 px array
costs ~90 ms, a 512 px one a few); on photos of quality >= 80 that stays within Meta's conformance rule, 10
bits of the reference hash of the full-resolution file (tests/test_copies.py; docs/benchmarks.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

REDUCED_SIDE = 512  # an image is hashed with its longest side from this to twice this
# A JPEG is decoded with libjpeg's DCT downscale to no fewer than this many pixels a side, for the model and
# the hash alike (a hash must not depend on the model, and `clipwatch hash` prints the hash the row holds).
# Measured on real JPEGs of quality >= 80 (docs/benchmarks.md): at 512 every hash is within Meta's 10 bits of
# the reference on the full-resolution array (2 on average); at 224, the model's own need, up to 18.
DRAFT_SIDE = 512
BITS = 256
BYTES = BITS // 8


@dataclass(frozen=True)
class FileHashes:
    """What a file's row keeps beside its vector: its MD5 (hash lists carry MD5s) and its PDQ hash."""

    md5: str
    pdq: bytes | None = None  # 32 bytes, the hash's 256 bits, most significant first (hex: Meta's format)
    pdq_quality: int | None = None
    dihedral: tuple[bytes, ...] = ()  # the 8 rotations' and flips' hashes (the first is `pdq`); never stored

    @property
    def pdq_hex(self) -> str | None:
        return None if self.pdq is None else self.pdq.hex()


def hashes_of(img: Image.Image, md5: str) -> FileHashes:
    """A decoded file's hashes, its dihedral variants with them (one DCT gives all eight)."""
    variants, quality = dihedral_of(img)
    return FileHashes(md5, variants[0], quality, tuple(variants))


def pdq_of(img: Image.Image) -> tuple[bytes, int]:
    """(hash, quality) of a decoded image, hashed `reduced`."""
    import pdqhash

    bits, quality = pdqhash.compute(np.asarray(reduced(img).convert("RGB")))
    return packed(bits), int(quality)


def pdq_of_full(pixels: np.ndarray) -> tuple[bytes, int]:
    """Meta's reference on the array as given (no reduction): what conformance is measured against."""
    import pdqhash

    bits, quality = pdqhash.compute(np.ascontiguousarray(pixels, dtype=np.uint8))
    return packed(bits), int(quality)


def dihedral_of(img: Image.Image) -> tuple[list[bytes], int]:
    """The hashes of the image's eight rotations and flips (one DCT), and its quality; the first is `pdq_of`'s."""
    import pdqhash

    hashes, quality = pdqhash.compute_dihedral(np.asarray(reduced(img).convert("RGB")))
    return [packed(h) for h in hashes], int(quality)


def reduced(img: Image.Image) -> Image.Image:
    """The image reduced by a whole factor to a longest side from REDUCED_SIDE to twice that: a box average,
    what PDQ's own Jarosz filter is made of. Measured (docs/benchmarks.md): closer to the reference on the
    full-resolution array than a resize to exactly 512 px, and half its cost."""
    return img.reduce(max(1, max(img.size) // REDUCED_SIDE))


def packed(bits: np.ndarray) -> bytes:
    """pdqhash's 256 0/1 values (most significant first) as 32 bytes."""
    return np.packbits(np.asarray(bits, dtype=np.uint8)).tobytes()


def distance(a: bytes, b: bytes) -> int:
    """Hamming distance between two hashes."""
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).bit_count()


def usable(quality: int | None, min_quality: int) -> bool:
    """Whether a hash of this quality may decide a match (`duplicates.pdq_min_quality`)."""
    return quality is not None and quality >= min_quality
