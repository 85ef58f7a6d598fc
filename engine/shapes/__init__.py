"""The bundled `bundled:shapes` model: a tiny 64×64 Stable-Diffusion-style diffusers folder.

Importing this package stays light (no torch); `python -m engine.shapes.build` (re)creates the
folder.
"""

from pathlib import Path

MODEL_DIR = Path(__file__).parent / "model"
SD3_MODEL_DIR = Path(__file__).parent / "model-sd3"  # bundled:shapes-sd3
