"""A corpus of hostile input, generated in memory: files users might send and commands they might
type, each with what the user should see.

Every item is either refused, with an error whose text contains the given words, or accepted: a
job is queued and an image delivered, after the documented normalisation (`check` looks at what
the bot stored for the engine: the picture, and the mask for /inpaint).

The same items run through the console, Telegram and Discord adapters (tests/test_hostile.py).
Files are built with Pillow and never touch the disk here.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

RED = (255, 0, 0)
GREEN = (0, 160, 0)
BLUE = (0, 0, 255)

# Cheap jobs: /vary runs int(default steps × strength) steps, /imagine and /inpaint --steps.
VARY = "/vary --strength 0.1"
INPAINT = "/inpaint a red circle --steps 2"
STEPS = 2

Check = Callable[[Image.Image, "Image.Image | None"], None]


# ---- files --------------------------------------------------------------------------------


def _save(image: Image.Image, format: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


def plain_png(colour: tuple[int, int, int] = BLUE, size: tuple[int, int] = (64, 64)) -> bytes:
    return _save(Image.new("RGB", size, colour), "PNG")


def truncated_png() -> bytes:
    """A real PNG cut off halfway through its pixel data."""
    whole = _save(Image.effect_noise((128, 128), 64), "PNG")
    return whole[: len(whole) // 2]


def zero_bytes() -> bytes:
    return b""


def text_as_png() -> bytes:
    """A text file someone renamed to .png."""
    return b"Dear diary, today I renamed this file to picture.png.\n" * 20


def decompression_bomb() -> bytes:
    """20000×20000 pixels (400 million) that compress to some tens of kilobytes."""
    return _save(Image.new("1", (20_000, 20_000), 0), "PNG", optimize=True)


def animated_gif() -> bytes:
    """Three frames: red, green, blue. Only the first (red) is used."""
    frames = [Image.new("RGB", (64, 64), colour) for colour in (RED, GREEN, BLUE)]
    return _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100,
                 loop=0)


def cmyk_jpeg() -> bytes:
    """A red picture stored as CMYK (as print workflows and some cameras save JPEGs)."""
    return _save(Image.new("CMYK", (64, 64), (0, 255, 255, 0)), "JPEG", quality=95)


def png_16_bit() -> bytes:
    """A 16-bit greyscale PNG (mode I;16): a left-to-right ramp from black to white."""
    image = Image.new("I;16", (64, 64))
    image.putdata([x * 1040 for _ in range(64) for x in range(64)])  # 0 … 65520
    return _save(image, "PNG")


def palette_png_with_transparency() -> bytes:
    """A palette (mode P) PNG: green, with a transparent square in the middle (palette entry 1
    is transparent), the way image editors save 'indexed' PNGs."""
    image = Image.new("P", (64, 64), 0)
    image.putpalette([*GREEN, 0, 0, 0] + [0, 0, 0] * 254)
    image.paste(1, (16, 16, 48, 48))
    return _save(image, "PNG", transparency=1)


def exif_rotated_jpeg() -> bytes:
    """Stored 80×40 (left half red, right half blue) with EXIF orientation 6: shown rotated 90°
    clockwise, 40×80 with red on top, as a phone camera saves a portrait photo."""
    image = Image.new("RGB", (80, 40), BLUE)
    image.paste(RED, (0, 0, 40, 40))
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise to display
    return _save(image, "JPEG", exif=exif, quality=95)


def mask(size: tuple[int, int], fill: int, hole: tuple[int, int, int, int] | None = None
         ) -> bytes:
    image = Image.new("L", size, fill)
    if hole:
        image.paste(255, hole)
    return _save(image, "PNG")


# ---- checks on what the bot stored for the engine -----------------------------------------


def _near(pixel: tuple[int, ...], colour: tuple[int, int, int], tolerance: int = 40) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(pixel[:3], colour, strict=True))


def rgb_of(size: tuple[int, int], colour: tuple[int, int, int]) -> Check:
    def check(image: Image.Image, mask: Image.Image | None) -> None:
        assert image.mode == "RGB" and image.size == size, (image.mode, image.size)
        centre = image.getpixel((size[0] // 2, size[1] // 2))
        assert _near(centre, colour), centre
    return check


def grey_ramp(image: Image.Image, mask: Image.Image | None) -> None:
    """16 bits scaled to 8, not clipped: dark on the left, light on the right, grey between."""
    assert image.mode == "RGB" and image.size == (64, 64)
    left, middle, right = (image.getpixel((x, 32))[0] for x in (0, 32, 63))
    assert left < 16 and 100 < middle < 160 and right > 240, (left, middle, right)


def turned_upright(image: Image.Image, mask: Image.Image | None) -> None:
    assert image.mode == "RGB" and image.size == (40, 80), image.size
    assert _near(image.getpixel((20, 10)), RED) and _near(image.getpixel((20, 70)), BLUE)


def mask_from_transparency(image: Image.Image, mask: Image.Image | None) -> None:
    assert image.mode == "RGB" and image.size == (64, 64)
    assert _near(image.getpixel((2, 2)), GREEN)
    assert mask is not None and mask.mode == "L"
    assert mask.getpixel((32, 32)) == 255 and mask.getpixel((2, 2)) == 0  # transparent = repaint


def repaint_everything(image: Image.Image, mask: Image.Image | None) -> None:
    assert image.mode == "RGB" and mask is not None and mask.getextrema() == (255, 255)


# ---- the file corpus ----------------------------------------------------------------------


@dataclass(frozen=True)
class Upload:
    """One hostile file sent with `command` (a /vary or /inpaint line; the file is attached)."""

    name: str
    command: str
    image: bytes
    filename: str
    mime: str
    mask: bytes | None = None
    refused: tuple[str, ...] = ()  # words the error must contain; () means it is accepted
    check: Check | None = None  # for accepted files: the stored picture (and mask)
    normalisation: str = ""

    @property
    def accepted(self) -> bool:
        return not self.refused


def uploads() -> list[Upload]:
    """Every hostile file, freshly generated."""
    blue = plain_png()
    return [
        Upload("truncated PNG", VARY, truncated_png(), "cut.png", "image/png",
               refused=("damaged",)),
        Upload("zero bytes", VARY, zero_bytes(), "empty.png", "image/png",
               refused=("empty", "0 bytes")),
        Upload("text renamed .png", VARY, text_as_png(), "notes.png", "image/png",
               refused=("not an image file I can read",)),
        Upload("decompression bomb", VARY, decompression_bomb(), "bomb.png", "image/png",
               refused=("far too large",)),
        Upload("animated GIF", VARY, animated_gif(), "anim.gif", "image/gif",
               check=rgb_of((64, 64), RED), normalisation="first frame only, as RGB"),
        Upload("CMYK JPEG", VARY, cmyk_jpeg(), "print.jpg", "image/jpeg",
               check=rgb_of((64, 64), RED), normalisation="converted to RGB"),
        Upload("16-bit PNG", VARY, png_16_bit(), "deep.png", "image/png",
               check=grey_ramp, normalisation="scaled to 8 bits, then RGB"),
        Upload("palette PNG with transparency", "/inpaint a red circle --steps 2",
               palette_png_with_transparency(), "indexed.png", "image/png",
               check=mask_from_transparency,
               normalisation="RGB; its transparent part becomes the mask (white = repaint)"),
        Upload("EXIF-rotated JPEG", VARY, exif_rotated_jpeg(), "portrait.jpg", "image/jpeg",
               check=turned_upright, normalisation="turned upright by its EXIF orientation"),
        Upload("mask of the wrong size", INPAINT, blue, "scene.png", "image/png",
               mask=mask((32, 32), 255), refused=("mask is 32×32", "64×64", "same size")),
        Upload("all-black mask", INPAINT, blue, "scene.png", "image/png",
               mask=mask((64, 64), 0), refused=("black all over", "nothing to repaint")),
        Upload("all-white mask", INPAINT, blue, "scene.png", "image/png",
               mask=mask((64, 64), 255), check=repaint_everything,
               normalisation="accepted: the whole picture is repainted"),
    ]


# ---- typed commands ----------------------------------------------------------------------


@dataclass(frozen=True)
class Typed:
    """One hostile command. `text` is what a user types in a chat or the console; `discord` the
    same as Discord's typed slash-command options (None where Discord's own fields make it
    impossible, such as an option given twice), and `discord_stored` the prompt stored when
    Discord's typed options keep something verbatim that the text syntax reads otherwise."""

    name: str
    text: str
    refused: tuple[str, ...] = ()
    stored: str | None = None  # the prompt as stored in SQLite, for accepted commands
    discord: dict[str, Any] | None = field(default=None)
    discord_command: str = "imagine"
    discord_refused: tuple[str, ...] | None = None  # when Discord's words differ
    discord_stored: str | None = None
    normalisation: str = ""

    @property
    def accepted(self) -> bool:
        return not self.refused


LONG_PROMPT = "x" * 10_000
NULLS = "a red\x00 circle on a\x00 blue background\x00"
EMOJI = "a red circle 🔴🎨 on a blue background 👍🏽"
RTL = "دائرة حمراء على خلفية زرقاء \u202ba red circle\u202c"
SQL = "a red circle'); DROP TABLE jobs; -- \" OR 1=1 /* ; DELETE FROM images"
HUGE = "9" * 40
ENORMOUS = "1" + "0" * 5000  # more digits than int() parses by default (4300)


def _imagine(prompt: str, **options: Any) -> dict[str, Any]:
    return {"prompt": prompt, **options}


def typed() -> list[Typed]:
    fast = f"--steps {STEPS}"
    return [
        Typed("prompt of 10,000 characters", f"/imagine {LONG_PROMPT}",
              refused=("10000 characters", "the limit is 1000"),
              discord=_imagine(LONG_PROMPT)),
        Typed("prompt with null bytes", f"/imagine {NULLS} {fast}",
              stored="a red circle on a blue background",
              discord=_imagine(NULLS, steps=STEPS), normalisation="control characters removed"),
        Typed("prompt with emoji", f"/imagine {EMOJI} {fast}", stored=EMOJI,
              discord=_imagine(EMOJI, steps=STEPS), normalisation="kept verbatim"),
        Typed("right-to-left prompt", f"/imagine {RTL} {fast}", stored=RTL,
              discord=_imagine(RTL, steps=STEPS),
              normalisation="kept verbatim, direction marks included"),
        Typed("SQL-looking prompt", f"/imagine {SQL} {fast}", stored=SQL,
              discord=_imagine(SQL, steps=STEPS), normalisation="kept verbatim"),
        Typed("negative steps", "/imagine a red circle --steps -3",
              refused=("number of steps", "from 1 to 100", "-3"),
              discord=_imagine("a red circle", steps=-3)),
        Typed("negative seed", "/imagine a red circle --seed -1",
              refused=("seed", "from 0 to 4294967295", "-1"),
              discord=_imagine("a red circle", seed=-1)),
        Typed("huge steps", f"/imagine a red circle --steps {HUGE}",
              refused=("number of steps", "from 1 to 100"),
              discord=_imagine("a red circle", steps=int(HUGE))),
        Typed("enormous seed", f"/imagine a red circle --seed {ENORMOUS}",
              refused=("seed", "whole number"),
              discord=_imagine("a red circle", seed=10**30)),
        Typed("huge number of pictures", "/imagine a red circle --n 1000000",
              refused=("number of pictures", "from 1 to 4"),
              discord=_imagine("a red circle", n=1_000_000)),
        Typed("zero-sized aspect", "/imagine a red circle --ar 0:0",
              refused=("aspect ratio", "0:0"),
              discord=_imagine("a red circle", aspect="0:0"),
              discord_refused=("'0:0'", "choices")),
        Typed("NaN CFG", "/imagine a red circle --cfg nan",
              refused=("CFG scale", "from 0 to 30"),
              discord=_imagine("a red circle", cfg=math.nan)),
        Typed("infinite CFG", "/imagine a red circle --cfg inf",
              refused=("CFG scale", "from 0 to 30"),
              discord=_imagine("a red circle", cfg=math.inf)),
        Typed("minus infinite CFG", "/imagine a red circle --cfg -inf",
              refused=("CFG scale", "from 0 to 30"),
              discord=_imagine("a red circle", cfg=-math.inf)),
        Typed("overflowing CFG", "/imagine a red circle --cfg 1e309",
              refused=("CFG scale", "from 0 to 30"),
              discord=_imagine("a red circle", cfg=1e300)),
        Typed("NaN strength", "/vary 1 --strength nan",
              refused=("strength", "above 0 and at most 1"),
              discord={"id": "1", "strength": math.nan}, discord_command="vary"),
        Typed("negative strength", "/vary 1 --strength -0.5",
              refused=("strength", "above 0 and at most 1"),
              discord={"id": "1", "strength": -0.5}, discord_command="vary"),
        Typed("repeated option", "/imagine a red circle --seed 1 --seed 2",
              refused=("--seed twice",),
              discord=_imagine("a red circle --seed 1 --seed 2", steps=STEPS),
              discord_stored="a red circle --seed 1 --seed 2",
              normalisation="on Discord, text typed in the prompt field is the prompt"),
        Typed("repeated text option", "/imagine a red circle --no blur --no dark",
              refused=("--no twice",)),
        Typed("unknown option", "/imagine a red circle --sharpness 11",
              refused=("Unknown option --sharpness", "--steps")),
        Typed("misspelt option", "/imagine a red circle --stesp 3",
              refused=("Unknown option --stesp", "Did you mean --steps?")),
        Typed("unknown command", "/imagin a red circle",
              refused=("Unknown command /imagin", "Did you mean /imagine?")),
    ]


FINAL_PROMPT = "a red circle"  # the next user's ordinary /imagine after all of the above
