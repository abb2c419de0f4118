"""The fast image preparation (JPEG draft decode + one resize/crop + numpy normalise) against the library's.

The model is a tiny random CLIP with ViT-B/32's input geometry (224 px, 32 px patches), so resizing and
cropping happen exactly as for the real model; its weights are random (no model hub here), which makes
it more sensitive to pixel differences than a trained model, not less.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from clipwatch.embedder import Embedder
from clipwatch.imaging import decode_image
from clipwatch.testing import build_random_clip


def photo(width: int, height: int, seed: int, fmt: str = "JPEG", exif_orientation: int = 0) -> bytes:
    """Smooth colour blobs plus sensor-like noise: what phone and web photos look like to a decoder."""
    rng = np.random.default_rng(seed)
    blobs = Image.fromarray(rng.integers(0, 256, (height // 64 + 2, width // 64 + 2, 3), dtype=np.uint8))
    pixels = np.asarray(blobs.resize((width, height), Image.Resampling.BICUBIC), dtype=np.int16)
    pixels = np.clip(pixels + rng.normal(0, 10, pixels.shape), 0, 255).astype(np.uint8)
    img = Image.fromarray(pixels)
    buf = io.BytesIO()
    if fmt == "PNG":
        img.putalpha(Image.fromarray(np.where(rng.random((height, width)) < 0.1, 0, 255).astype(np.uint8)))
        img.save(buf, format="PNG")
    else:
        exif = Image.Exif()
        if exif_orientation:
            exif[0x0112] = exif_orientation
        img.save(buf, format="JPEG", quality=88, exif=exif)
    return buf.getvalue()


CASES = {
    "phone-12mp": (4032, 3024, "JPEG", 0),
    "phone-portrait-exif": (3024, 2268, "JPEG", 6),
    "web-1024x768": (1024, 768, "JPEG", 0),
    "web-portrait": (768, 1024, "JPEG", 0),
    "small": (180, 120, "JPEG", 0),
    "png-alpha": (800, 600, "PNG", 0),
}


@pytest.fixture(scope="module")
def model_224(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_random_clip(tmp_path_factory.mktemp("model") / "tiny-clip-224", tiny=True, image_size=224)


def test_fast_preparation_agrees_with_the_librarys_preprocessing(model_224: Path):
    from sentence_transformers import SentenceTransformer

    embedder = Embedder(str(model_224), device="cpu")
    embedder.load()
    assert embedder.preprocessing is not None, "CLIP's image processor must take the fast path"
    library = SentenceTransformer(str(model_224), device="cpu")
    files = [photo(w, h, seed, fmt, orientation) for seed, (w, h, fmt, orientation) in enumerate(CASES.values())]
    # The library's reference: the whole decoded image (EXIF applied, alpha on white), its own processor.
    references = []
    for data in files:
        img = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
        if img.mode == "RGBA":
            white = Image.new("RGB", img.size, (255, 255, 255))
            white.paste(img, mask=img.getchannel("A"))
            img = white
        references.append(img.convert("RGB"))
    expected = library.encode(references, normalize_embeddings=True, convert_to_numpy=True)
    fast = embedder.embed_images([embedder.prepare(data, 64_000_000) for data in files])
    agreement = dict(zip(CASES, (float(a @ b) for a, b in zip(expected, fast, strict=True)), strict=True))
    print("cosine fast vs library:", {k: round(v, 5) for k, v in agreement.items()})
    assert min(agreement.values()) >= 0.99, agreement
    # the figures are not trivially 1: a rotated image must not agree with its unrotated self
    unrotated = Image.open(io.BytesIO(files[1])).convert("RGB")
    assert float(embedder.embed_images([unrotated])[0] @ fast[1]) < min(agreement.values())


def test_a_phone_photo_is_decoded_at_a_fraction_of_its_size():
    data = photo(4032, 3024, seed=1)
    img = decode_image(data, max_pixels=64_000_000, draft=224)
    # libjpeg's DCT scaling: 1/8 keeps both sides >= 224, so 12 MP are never decoded at full size
    assert img.size == (504, 378)
    assert decode_image(data, max_pixels=64_000_000).size == (4032, 3024)


def test_the_drafted_decode_keeps_the_exif_orientation():
    img = decode_image(photo(3024, 2268, seed=2, exif_orientation=6), max_pixels=64_000_000, draft=224)
    assert img.size == (284, 378)  # 1/8 of 3024 x 2268 (sides rounded up), then turned to portrait, as shown


def test_without_the_fast_path_images_go_through_the_library_bounded_in_size(model_224: Path):
    """A model whose processor the fast path does not reproduce: the library preprocesses, and what the
    decode threads hold per image stays small (here, the fast path is switched off to stand for one)."""
    fast = Embedder(str(model_224), device="cpu")
    fast.load()
    library = Embedder(str(model_224), device="cpu", fast_preprocessing=False)
    library.load()
    assert library.preprocessing is None
    data = photo(4032, 3024, seed=5)
    prepared = library.prepare(data, 64_000_000)
    assert isinstance(prepared, Image.Image) and min(prepared.size) == 1024
    a = library.embed_images([prepared])[0]
    b = fast.embed_images([fast.prepare(data, 64_000_000)])[0]
    assert float(a @ b) >= 0.99


@pytest.mark.parametrize(("precision", "minimum"), [("bf16", 0.999), ("int8", 0.995)])
def test_reduced_precision_vectors_agree_with_fp32_on_the_test_images(model_224: Path, precision: str,
                                                                      minimum: float):
    """What `model.precision` may choose on a CPU (issue 12): bf16 weights, or int8 dynamic quantization of
    the vision tower, against fp32 on the same prepared pixels; through the library's path too."""
    fp32 = Embedder(str(model_224), device="cpu", precision="fp32")
    fp32.load()
    reduced = Embedder(str(model_224), device="cpu", precision=precision)
    reduced.load()
    assert reduced.precision == precision
    files = [photo(w, h, seed, fmt, orientation) for seed, (w, h, fmt, orientation) in enumerate(CASES.values())]
    pixels = [fp32.prepare(data, 64_000_000) for data in files]
    a, b = fp32.embed_images(pixels), reduced.embed_images(pixels)
    agreement = dict(zip(CASES, (float(x @ y) for x, y in zip(a, b, strict=True)), strict=True))
    print(f"cosine {precision} vs fp32:", {k: round(v, 5) for k, v in agreement.items()})
    assert min(agreement.values()) >= minimum, agreement
    assert not np.array_equal(a, b)  # it did run in the reduced precision
    library = Embedder(str(model_224), device="cpu", precision=precision, fast_preprocessing=False)
    library.load()
    assert library.precision == precision
    c = library.embed_images([library.prepare(files[2], 64_000_000)])[0]
    assert c.dtype == np.float32 and float(c @ a[2]) >= 0.99
