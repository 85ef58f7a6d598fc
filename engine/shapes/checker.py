"""Read a shapes picture by plain pixel analysis: its background colour, the shape's colour and
the shape. No learned model, only numpy and PIL, so chat adapter tests may import it.

Every pixel is given the nearest palette colour; the background is the commonest colour on the
border, the shape's colour the commonest other colour. The shape is a triangle when most of it
lies in the lower half of its bounding box, otherwise whichever of a square or a circle fitted
to that box overlaps it best.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from engine.shapes.draw import PALETTE

NAMES = tuple(PALETTE)
COLOURS_RGB = np.array([PALETTE[name] for name in NAMES], dtype=np.float32)
MIN_SHAPE_SHARE = 0.02  # fewer shape pixels than this share of the picture: no shape
TRIANGLE_TOP_SHARE = 0.4


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
    """Masks of a circle and a square filling `box`, on a canvas of `shape` (height, width)."""
    top, bottom, left, right = box
    ys, xs = np.mgrid[: shape[0], : shape[1]].astype(np.float32) + 0.5
    y0, y1, x0, x1 = top, bottom + 1, left, right + 1
    inside = (ys >= y0) & (ys <= y1) & (xs >= x0) & (xs <= x1)
    cy, cx, ry, rx = (y0 + y1) / 2, (x0 + x1) / 2, (y1 - y0) / 2, (x1 - x0) / 2
    ellipse = ((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2 <= 1
    return {"circle": ellipse, "square": inside}


def top_half_share(mask: np.ndarray, box: tuple[int, int, int, int]) -> float:
    """The share of the shape's pixels in the upper half of its bounding box: an upright
    triangle has a quarter there, a circle or a square half."""
    top, bottom, left, right = box
    rows = mask[top : bottom + 1, left : right + 1].sum(axis=1)
    height = len(rows)
    upper = np.clip(height / 2 - np.arange(height), 0, 1)  # how much of each row is upper half
    return float((rows * upper).sum() / rows.sum())


def classify_shape(mask: np.ndarray) -> str:
    box = bounding_box(mask)
    # Blurred small triangles lose their corners and fit an ellipse well, but stay bottom-heavy.
    if top_half_share(mask, box) < TRIANGLE_TOP_SHARE:
        return "triangle"
    fits = templates(box, mask.shape)
    overlap = {name: (mask & fits[name]).sum() / (mask | fits[name]).sum() for name in fits}
    return max(("circle", "square"), key=overlap.__getitem__)


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
