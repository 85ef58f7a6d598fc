"""Read a shapes picture by plain pixel analysis: its background colour, the shape's colour and
the shape. No learned model, only numpy and PIL, so chat adapter tests may import it.

Every pixel is given the nearest palette colour; the background is the commonest colour on the
border, the shape's colour the commonest other colour, and the shape is whichever of an upright
triangle, a square or a circle, fitted to the shape's bounding box, overlaps it best.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from engine.shapes.draw import PALETTE, SHAPES

NAMES = tuple(PALETTE)
COLOURS_RGB = np.array([PALETTE[name] for name in NAMES], dtype=np.float32)
MIN_SHAPE_SHARE = 0.02  # fewer shape pixels than this share of the picture: no shape


@dataclass(frozen=True)
class Reading:
    background: str  # a palette name; "grey" is the default light grey
    colour: str | None  # None when there is no shape
    shape: str | None


def colour_map(image: Image.Image) -> np.ndarray:
    """The index into NAMES of each pixel's nearest palette colour."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    distances = ((pixels[:, :, None, :] - COLOURS_RGB) ** 2).sum(axis=-1)
    return distances.argmin(axis=-1)


def commonest(indices: np.ndarray) -> int:
    return int(np.bincount(indices.ravel(), minlength=len(NAMES)).argmax())


def border(labels: np.ndarray, width: int) -> np.ndarray:
    return np.concatenate([
        labels[:width].ravel(), labels[-width:].ravel(),
        labels[:, :width].ravel(), labels[:, -width:].ravel(),
    ])  # fmt: skip


def bounding_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(top, bottom, left, right), inclusive, of rows and columns holding at least two mask
    pixels, so a few stray pixels do not stretch the box."""
    rows = np.flatnonzero(mask.sum(axis=1) >= 2)
    cols = np.flatnonzero(mask.sum(axis=0) >= 2)
    if not len(rows) or not len(cols):
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])


def templates(box: tuple[int, int, int, int], shape: tuple[int, int]) -> dict[str, np.ndarray]:
    """Masks of each shape filling `box`, on a canvas of `shape` (height, width)."""
    top, bottom, left, right = box
    ys, xs = np.mgrid[: shape[0], : shape[1]].astype(np.float32) + 0.5
    y0, y1, x0, x1 = top, bottom + 1, left, right + 1
    inside = (ys >= y0) & (ys <= y1) & (xs >= x0) & (xs <= x1)
    cy, cx, ry, rx = (y0 + y1) / 2, (x0 + x1) / 2, (y1 - y0) / 2, (x1 - x0) / 2
    ellipse = ((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2 <= 1
    half_width = rx * (ys - y0) / (y1 - y0)  # an upright triangle widens downwards
    triangle = inside & (np.abs(xs - cx) <= half_width)
    return {"circle": ellipse, "square": inside, "triangle": triangle}


def classify_shape(mask: np.ndarray) -> str:
    fits = templates(bounding_box(mask), mask.shape)
    overlap = {name: (mask & t).sum() / (mask | t).sum() for name, t in fits.items()}
    return max(SHAPES, key=overlap.__getitem__)


def read(image: Image.Image) -> Reading:
    """What `image` shows: background colour, shape colour and shape."""
    labels = colour_map(image)
    width = max(1, labels.shape[0] // 32)
    background = commonest(border(labels, width))
    others = labels[labels != background]
    if others.size < MIN_SHAPE_SHARE * labels.size:
        return Reading(NAMES[background], None, None)
    colour = commonest(others)
    return Reading(NAMES[background], NAMES[colour], classify_shape(labels == colour))
