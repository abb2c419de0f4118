"""Which paths are watched images, reading them safely, and decoding what uploads really contain."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipwatch.errors import FileRejected
from clipwatch.files import PathFilter, read_file
from clipwatch.imaging import decode_image
from conftest import write_image

DEFAULT_IGNORE = (".*", "*.tmp", "*.part", "*.crdownload", "*~")


@pytest.mark.parametrize(("path", "accepted"), [
    ("/srv/up/a.jpg", True),
    ("/srv/up/deep/er/B.JPEG", True),
    ("/srv/up/x.webp", True),
    ("/srv/up/x.tiff", True),
    ("/srv/up/x.txt", False),
    ("/srv/up/.x.jpg", False),
    ("/srv/up/.cache/x.jpg", False),  # hidden directory
    ("/srv/up/x.jpg.part", False),
    ("/srv/up/x.tmp", False),
    ("/srv/up/x.jpg.crdownload", False),
    ("/srv/upload-other/x.jpg", False),  # a sibling that shares the root's prefix
    ("/srv/up", False),
])
def test_path_filter(path: str, accepted: bool):
    assert PathFilter(["/srv/up"], ["jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff"],
                      DEFAULT_IGNORE).accepts(path) is accepted


def test_read_file_hashes_the_bytes(tmp_path: Path):
    import hashlib

    path = write_image(tmp_path / "a.jpg", seed=1)
    got = read_file(str(path), max_bytes=10**6)
    assert got.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert (got.size, got.mtime) == (path.stat().st_size, path.stat().st_mtime)


@pytest.mark.timeout(10)  # opening a FIFO for reading would block forever
@pytest.mark.parametrize(("make", "reason"), [
    (lambda p: os.mkfifo(p), "not_a_file"),
    (lambda p: os.mkdir(p), "not_a_file"),  # a directory named photo.jpg
    (lambda p: os.symlink("/etc/passwd", p), "not_a_file"),
    (lambda p: p.write_bytes(b""), "empty"),
    (lambda p: p.write_bytes(b"x" * 2000), "too_large"),
])
def test_read_file_refuses_what_is_not_a_plain_image_file(tmp_path: Path, make, reason: str):
    path = tmp_path / "photo.jpg"
    make(path)
    with pytest.raises(FileRejected) as info:
        read_file(str(path), max_bytes=1000)
    assert info.value.reason == reason


def test_a_name_that_is_not_utf8_is_refused_with_a_reason(tmp_path: Path):
    raw = os.path.join(os.fsencode(tmp_path), b"caf\xe9.jpg")
    with open(raw, "wb") as f:
        f.write(b"data")
    with pytest.raises(FileRejected) as info:
        read_file(os.fsdecode(raw), max_bytes=1000)
    assert info.value.reason == "bad_name" and "not valid UTF-8" in str(info.value)


def encoded(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_exif_orientation_is_applied_before_embedding():
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise when shown
    out = decode_image(encoded(img, "JPEG", exif=exif), max_pixels=10**6)
    assert out.size == (20, 40)


@pytest.mark.parametrize("make", [
    lambda: Image.new("CMYK", (16, 16), (0, 255, 255, 0)),
    lambda: Image.new("RGBA", (16, 16), (255, 0, 0, 0)),
    lambda: Image.new("P", (16, 16), 3),
    lambda: Image.new("L", (16, 16), 128),
    lambda: Image.new("I;16", (16, 16), 40000),
], ids=["cmyk", "rgba", "palette", "grey", "16-bit"])
def test_common_image_modes_become_rgb(make):
    img = make()
    fmt = "JPEG" if img.mode == "CMYK" else "PNG"
    out = decode_image(encoded(img, fmt), max_pixels=10**6)
    assert out.mode == "RGB" and out.size == (16, 16)


def test_transparent_pixels_become_white():
    out = decode_image(encoded(Image.new("RGBA", (4, 4), (255, 0, 0, 0)), "PNG"), max_pixels=100)
    assert out.getpixel((0, 0)) == (255, 255, 255)


def test_animated_gif_gives_its_first_frame():
    frames = [Image.new("P", (8, 8), i) for i in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    assert decode_image(buf.getvalue(), max_pixels=100).size == (8, 8)


def test_a_decompression_bomb_is_refused_before_its_pixels_exist():
    # A valid PNG header declaring 50,000 x 50,000 pixels, with almost no data behind it.
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 50_000, 50_000, 8, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b"")
    with pytest.raises(FileRejected) as info:
        decode_image(png, max_pixels=64_000_000)
    assert info.value.reason == "too_many_pixels"


def test_a_small_limit_does_not_become_the_whole_process_limit():
    # The daemon's limit is its own: a caller with a small one must not stop other code (the review pages,
    # a library) from opening an image Pillow itself allows.
    decode_image(encoded(Image.new("RGB", (8, 8)), "PNG"), max_pixels=100)
    big = encoded(Image.new("RGB", (2000, 1000)), "PNG")
    assert Image.open(io.BytesIO(big)).size == (2000, 1000)
    with pytest.raises(FileRejected) as info:
        decode_image(big, max_pixels=100)
    assert info.value.reason == "too_many_pixels"


@pytest.mark.parametrize(("data", "reason"), [
    (b"just some text, named .jpg", "not_an_image"),
    (encoded(Image.fromarray(np.zeros((64, 64, 3), np.uint8)), "JPEG")[:200], "decode_error"),
    (encoded(Image.fromarray(np.zeros((64, 64, 3), np.uint8)), "PNG")[:60], "decode_error"),
], ids=["text", "truncated-jpeg", "truncated-png"])
def test_broken_files_are_refused_with_a_reason(data: bytes, reason: str):
    with pytest.raises(FileRejected) as info:
        decode_image(data, max_pixels=10**6)
    assert info.value.reason == reason
