"""Pictures for the bundled shapes model: one coloured shape on a coloured background.

The training script draws its data here and the checker reads pictures with the same palette.
Only numpy, PIL and the standard library: the bot side may import this.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SIZE = 64
SHAPES = ("circle", "square", "triangle")
COLOURS = ("red", "orange", "yellow", "green", "blue", "purple", "black", "white")
DEFAULT_BACKGROUND = "grey"  # the light grey of a prompt that names no background
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 20, 20),
    "orange": (255, 140, 0),
    "yellow": (255, 225, 0),
    "green": (20, 160, 40),
    "blue": (20, 60, 220),
    "purple": (130, 40, 170),
    "black": (15, 15, 15),
    "white": (250, 250, 250),
    DEFAULT_BACKGROUND: (190, 190, 190),
}
MIN_SIDE, MAX_SIDE = 18, 40  # shape size in pixels on a 64-pixel picture
MARGIN = 3


@dataclass(frozen=True)
class Scene:
    shape: str
    colour: str
    background: str  # a colour name, or DEFAULT_BACKGROUND
    side: int  # width and height of the shape's bounding box, in pixels of a SIZE picture
    left: int
    top: int


def random_scene(
    rng: np.random.Generator,
    shape: str | None = None,
    colour: str | None = None,
    background: str | None = None,
) -> Scene:
    """A scene with the given parts; the others, size and position chosen at random."""
    if background is None:
        # A third of pictures keep the default background, so prompts without one are common.
        background = DEFAULT_BACKGROUND if rng.random() < 1 / 3 else str(rng.choice(COLOURS))
    if colour is None:
        colour = str(rng.choice([c for c in COLOURS if c != background]))
    if shape is None:
        shape = str(rng.choice(SHAPES))
    side = int(rng.integers(MIN_SIDE, MAX_SIDE + 1))
    left = int(rng.integers(MARGIN, SIZE - MARGIN - side + 1))
    top = int(rng.integers(MARGIN, SIZE - MARGIN - side + 1))
    return Scene(shape, colour, background, side, left, top)


def draw(scene: Scene, size: int = SIZE) -> Image.Image:
    """The scene as an RGB picture `size` pixels square (hard edges, exact palette colours)."""
    scale = size / SIZE
    image = Image.new("RGB", (size, size), PALETTE[scene.background])
    pen = ImageDraw.Draw(image)
    x0, y0 = scene.left * scale, scene.top * scale
    x1, y1 = (scene.left + scene.side) * scale - 1, (scene.top + scene.side) * scale - 1
    fill = PALETTE[scene.colour]
    if scene.shape == "circle":
        pen.ellipse((x0, y0, x1, y1), fill=fill)
    elif scene.shape == "square":
        pen.rectangle((x0, y0, x1, y1), fill=fill)
    else:
        pen.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)
    return image


def caption(scene: Scene, rng: np.random.Generator) -> str:
    """A prompt the scene fits, with the shape and its colour each sometimes left out.

    A coloured background is always named: a prompt without one asks for the default.
    """
    words = ["a"]
    if rng.random() < 0.8:
        words.append(scene.colour)
    words.append(scene.shape if rng.random() < 0.8 else "shape")
    text = " ".join(words)
    if scene.background != DEFAULT_BACKGROUND:
        if text == "a shape" and rng.random() < 0.5:
            return f"a {scene.background} background"
        return f"{text} on a {scene.background} background"
    if rng.random() < 0.1:
        grey = "grey" if rng.random() < 0.5 else "gray"
        return f"{text} on a {grey} background"
    return text


def prompt_for(shape: str | None, colour: str | None, background: str | None) -> str:
    """The full prompt naming the given parts, e.g. `a red circle on a blue background`."""
    text = " ".join(["a", *([colour] if colour else []), shape or "shape"])
    if background and background != DEFAULT_BACKGROUND:
        text += f" on a {background} background"
    return text
