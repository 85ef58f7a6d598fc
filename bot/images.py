"""Checking images that users send, before anything else touches them.

Sizes are checked from the header before a pixel is decoded, so a decompression bomb is refused
cheaply. Accepted images are normalised (EXIF rotation applied, first frame only, 16 bits
scaled to 8, RGB) and written as PNG under a generated name, so the engine only ever opens
files the bot wrote.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

ACCEPTED_FORMATS = {"PNG", "JPEG", "WEBP", "GIF", "BMP"}


class ImageError(ValueError):
    """An image the bot cannot use; the message is for the user."""


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int
    max_pixels: int


def open_image(data: bytes, limits: ImageLimits, what: str = "image") -> Image.Image:
    """Decode an uploaded image, or raise ImageError saying politely what is wrong with it."""
    if not data:
        raise ImageError(f"The {what} is empty (0 bytes).")
    if len(data) > limits.max_bytes:
        raise ImageError(f"The {what} is {_mb(len(data))}; the limit is {_mb(limits.max_bytes)}.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.format not in ACCEPTED_FORMATS:
                raise ImageError(f"The {what} is a {image.format} file; please send a PNG, "
                                 "JPEG, WebP, GIF or BMP.")
            width, height = image.size
            if width * height > limits.max_pixels:
                raise ImageError(f"The {what} is {width}×{height} pixels; the limit is "
                                 f"{limits.max_pixels:,} pixels in all.")
            image.load()
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(f"The {what} is not an image file I can read.") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        # Pillow's own guard fired while reading the header: far beyond any sensible size.
        raise ImageError(f"The {what} is far too large; the limit is {limits.max_pixels:,} "
                         "pixels in all.") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageError(f"The {what} looks damaged and could not be read ({error}).") from None
    return _eight_bit(ImageOps.exif_transpose(image))


def _eight_bit(image: Image.Image) -> Image.Image:
    """16-bit greyscale (a 16-bit PNG opens as I;16 or I) scaled to 8 bits: Pillow's own
    conversion to L or RGB clips every value above 255, which turns the picture white."""
    if image.mode == "I" or image.mode.startswith("I;16"):
        return image.convert("I").point(lambda value: value * (1 / 256)).convert("L")
    return image


def split_image_and_mask(image: Image.Image, mask: Image.Image | None) -> tuple[Image.Image,
                                                                                 Image.Image]:
    """The RGB picture and an L mask (white = repaint): from a separate mask, or else from the
    image's transparency (transparent = repaint)."""
    if mask is None:
        if "A" not in image.getbands() and "transparency" not in image.info:
            raise ImageError("Inpainting needs a mask: attach a second image (white = repaint) "
                             "or send one PNG whose transparent part is to be repainted.")
        alpha = image.convert("RGBA").getchannel("A")
        mask = ImageOps.invert(alpha)
    elif mask.size != image.size:
        raise ImageError(f"The mask is {mask.width}×{mask.height} but the image is "
                         f"{image.width}×{image.height}; they must be the same size.")
    mask = mask.convert("L")
    _, high = mask.getextrema()
    if high < 128:
        raise ImageError("The mask is black all over, so there is nothing to repaint. "
                         "Paint the part to change white.")
    return image.convert("RGB"), mask


def png_for_chat(path: str | Path, min_size: int) -> bytes:
    """A result as PNG bytes for a chat, enlarged so its shorter side is at least `min_size`
    (a 64-pixel image is a smudge in a chat window)."""
    with Image.open(path) as image:
        factor = max(1, -(-min_size // min(image.size)))  # ceiling division
        if factor > 1:
            image = image.resize((image.width * factor, image.height * factor),
                                 Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
    return buffer.getvalue()


def _mb(size: int) -> str:
    return f"{size / 1_000_000:.1f} MB"


def deleted_notice(size: int = 256) -> bytes:
    """A plain grey square PNG: what a deleted picture's chat message shows instead."""
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (128, 128, 128)).save(buffer, format="PNG")
    return buffer.getvalue()
