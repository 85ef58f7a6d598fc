"""Uploaded images are checked before anything else touches them."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from bot.images import (
    ImageError,
    ImageLimits,
    open_image,
    png_for_chat,
    split_image_and_mask,
)

LIMITS = ImageLimits(max_bytes=2_000_000, max_pixels=4096 * 4096)


def encode(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def test_a_good_png_comes_back_as_is():
    image = open_image(encode(Image.new("RGB", (30, 20), "red")), LIMITS)
    assert image.size == (30, 20) and image.getpixel((0, 0)) == (255, 0, 0)


@pytest.mark.parametrize(("data", "message"), [
    (b"", "empty"),
    (b"just some text, renamed to .png", "not an image"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 30, "not an image"),
])
def test_non_images_are_refused(data, message):
    with pytest.raises(ImageError, match=message):
        open_image(data, LIMITS)


def test_a_truncated_image_is_called_damaged():
    data = encode(Image.effect_noise((128, 128), 64))
    with pytest.raises(ImageError, match="damaged"):
        open_image(data[: len(data) // 2], LIMITS)


def test_too_many_bytes_is_refused_before_decoding():
    with pytest.raises(ImageError, match=r"is 2\.\d MB; the limit is 2\.0 MB"):
        open_image(b"\x89PNG" + b"\x00" * 2_100_000, LIMITS)


def test_an_image_over_the_pixel_limit_is_refused_from_its_header():
    big = encode(Image.new("L", (5000, 4000)), optimize=True)  # 20 MP in a few KB
    assert len(big) < LIMITS.max_bytes
    with pytest.raises(ImageError, match="5000×4000 pixels; the limit is 16,777,216"):
        open_image(big, LIMITS)


def test_a_decompression_bomb_is_refused_from_its_header():
    bomb = encode(Image.new("L", (20_000, 20_000)), optimize=True)  # 400 MP in ~400 KB
    assert len(bomb) < LIMITS.max_bytes
    with pytest.raises(ImageError, match="far too large; the limit is 16,777,216 pixels"):
        open_image(bomb, LIMITS)


def test_exif_rotation_is_applied():
    image = Image.new("RGB", (40, 20), "blue")
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    rotated = open_image(encode(image, "JPEG", exif=exif), LIMITS)
    assert rotated.size == (20, 40)


def test_transparency_becomes_the_mask():
    image = Image.new("RGBA", (8, 8), (255, 0, 0, 255))
    image.putpixel((2, 3), (0, 0, 0, 0))
    rgb, mask = split_image_and_mask(image, None)
    assert rgb.mode == "RGB" and mask.getpixel((2, 3)) == 255 and mask.getpixel((0, 0)) == 0


def test_masks_of_the_wrong_size_or_all_black_or_missing_are_refused():
    image = Image.new("RGB", (8, 8))
    with pytest.raises(ImageError, match="mask is 4×4 but the image is 8×8"):
        split_image_and_mask(image, Image.new("L", (4, 4), 255))
    with pytest.raises(ImageError, match="black all over"):
        split_image_and_mask(image, Image.new("L", (8, 8), 0))
    with pytest.raises(ImageError, match="needs a mask"):
        split_image_and_mask(image, None)
    _, mask = split_image_and_mask(image, Image.new("L", (8, 8), 255))
    assert mask.getextrema() == (255, 255)  # all white: repaint everything, allowed


def test_results_are_enlarged_for_chats_to_the_models_minimum(tmp_path):
    path = tmp_path / "small.png"
    Image.new("RGB", (96, 48), "red").save(path)
    enlarged = Image.open(io.BytesIO(png_for_chat(path, 256)))
    assert enlarged.size == (576, 288)  # whole factor 6: the shorter side 48 -> 288 >= 256
    assert Image.open(io.BytesIO(png_for_chat(path, 0))).size == (96, 48)
