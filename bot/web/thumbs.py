"""Gallery thumbnails: made once per picture with Pillow, then served from a cache folder.

Keyed by the picture's blob key, which is its content's hash, so a thumbnail is never stale.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from PIL import Image

SIDE = 256


def thumbnail(source: Path, cache: Path, key: str) -> Path:
    """The cached thumbnail of `source` (a PNG), made first if need be. Blocking: call it in
    a thread."""
    target = cache / f"{key}.webp"
    if target.is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with Image.open(source) as image:
        image.load()
        small = image.convert("RGB")
    small.thumbnail((SIDE, SIDE), Image.Resampling.LANCZOS)
    if max(small.size) < SIDE:  # the bundled models draw 64 px: enlarge, crisply
        scale = SIDE // max(small.size)
        small = small.resize((small.width * scale, small.height * scale),
                             Image.Resampling.NEAREST)
    # Written aside and renamed, so two requests at once never serve half a file.
    handle, temporary = tempfile.mkstemp(dir=cache, suffix=".part")
    os.close(handle)
    try:
        small.save(temporary, format="WEBP", quality=85)
        os.replace(temporary, target)
    finally:
        Path(temporary).unlink(missing_ok=True)
    return target
