"""Bytes to a pixel-ready RGB image: decode safely, apply EXIF orientation, bound the pixel count."""

from __future__ import annotations

import io
import warnings

from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import FileRejected

warnings.simplefilter("ignore", Image.DecompressionBombWarning)


def decode_image(data: bytes, max_pixels: int) -> Image.Image:
    """Decode an image file's bytes into an RGB image (first frame of an animation).

    Pillow checks the declared size against `max_pixels` before allocating anything, so a tiny file
    that declares 50,000 x 50,000 pixels is refused without using the memory.
    """
    # Pillow refuses (DecompressionBombError) above twice its limit, also for frames it meets on seek;
    # set so that it refuses above ours. Its warning between 1x and 2x is ignored: we check ourselves.
    Image.MAX_IMAGE_PIXELS = max(max_pixels // 2, 1)
    try:
        img: Image.Image = Image.open(io.BytesIO(data))
        _check_pixels(img, max_pixels)
        img.seek(0)
        _check_pixels(img, max_pixels)  # the first frame of an animation may be larger than its header says
        img.load()
        img = ImageOps.exif_transpose(img)
        return _to_rgb(img)
    except FileRejected:
        raise
    except UnidentifiedImageError:
        raise FileRejected("not_an_image", "not an image file Pillow can read") from None
    except Image.DecompressionBombError as exc:
        raise FileRejected("too_many_pixels", str(exc)) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise FileRejected("decode_error", f"broken image data: {exc}") from None
    except Exception as exc:  # hostile files reach odd corners of the decoders (struct.error, IndexError...)
        raise FileRejected("decode_error", f"broken image data ({type(exc).__name__}: {exc})") from None


def _check_pixels(img: Image.Image, max_pixels: int) -> None:
    width, height = img.size
    if width * height > max_pixels:
        raise FileRejected("too_many_pixels", f"{width}x{height} pixels is over model.max_image_pixels = {max_pixels}")


def _to_rgb(img: Image.Image) -> Image.Image:
    """RGB for the model; transparent areas become white, as a viewer shows them on a page."""
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if img.mode.startswith("I;16") or img.mode == "I":
        img = img.point(lambda v: v / 256).convert("L")
    return img.convert("RGB")
