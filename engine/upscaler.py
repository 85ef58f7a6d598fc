"""Upscaling models for /upscale, as `engine.upscaler` names one: an ESRGAN-family file
(`.pth`, `.safetensors`; loaded with spandrel, which knows those architectures), or diffusers'
SD x4 upscaler (a folder or hub id of a StableDiffusionUpscalePipeline). Without one, an
upscale is a "hires fix" by the picture's own model (engine/worker.py).

Either gives exactly the size asked for: a model that enlarges by another factor than the
job's runs until the picture is at least that large, and the result is resized to fit.
The upscaler is loaded at its first job and kept; it is not one of the named models, so
engine.memory does not count it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from PIL import Image

log = logging.getLogger(__name__)

MODEL_FILES = (".pth", ".pt", ".safetensors", ".ckpt")
# The SD x4 upscaler's noise augmentation of its low-resolution input (diffusers' default):
# more smooths away noise in the picture, and its detail with it.
NOISE_LEVEL = 20

Steps = Callable[[int, int], None]  # (steps done, steps in all), for progress


class UpscalerError(ValueError):
    """An upscaler that cannot load; the message says what to change."""


class Upscaler(Protocol):
    name: str

    def upscale(self, image: Image.Image, size: tuple[int, int], prompt: str, seed: int,
                steps: int, on_step: Steps) -> Image.Image: ...


def load_upscaler(source: str, device: torch.device, dtype: torch.dtype) -> Upscaler:
    path = Path(source)
    if path.suffix.lower() in MODEL_FILES:
        if not path.is_file():
            raise UpscalerError(f"engine.upscaler: there is no file {path}")
        return SpandrelUpscaler(path, device)
    return DiffusersUpscaler(source, device, dtype)


class SpandrelUpscaler:
    def __init__(self, path: Path, device: torch.device) -> None:
        try:
            import spandrel
        except Exception as error:  # not installed, or its torchvision does not import
            raise UpscalerError(
                f"engine.upscaler: {path.name} is an upscaling model file, which spandrel "
                "loads: install it beside the engine (pip install 'magic-canvas[upscale]', "
                f"which needs a torchvision that matches torch) ({error})") from error
        try:
            model = spandrel.ModelLoader(device=device).load_from_file(path)
        except Exception as error:
            raise UpscalerError(f"engine.upscaler: spandrel cannot read {path.name}: "
                                f"{error}") from error
        if not isinstance(model, spandrel.ImageModelDescriptor) or model.scale < 2:
            raise UpscalerError(f"engine.upscaler: {path.name} is a {model.architecture.name} "
                                "model that does not enlarge pictures")
        self.model = model.eval()
        self.device = device
        self.name = f"{path.stem} ({model.architecture.name}, {model.scale}×)"

    def upscale(self, image: Image.Image, size: tuple[int, int], prompt: str, seed: int,
                steps: int, on_step: Steps) -> Image.Image:
        passes = _passes(image.size, size, self.model.scale)
        for done in range(passes):
            pixels = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255)
            with torch.inference_mode():
                out = self.model(pixels.permute(2, 0, 1)[None].to(self.device))
            array = out[0].clamp(0, 1).permute(1, 2, 0).float().cpu().numpy()
            image = Image.fromarray((array * 255).round().astype(np.uint8))
            on_step(done + 1, passes)
        return _fit(image, size)


class DiffusersUpscaler:
    """The SD x4 upscaler: a diffusion model that redraws the picture four times as large,
    guided by its prompt. Asked for 2×, it enlarges a half-size copy."""

    def __init__(self, source: str, device: torch.device, dtype: torch.dtype) -> None:
        from diffusers import StableDiffusionUpscalePipeline

        try:
            pipe = StableDiffusionUpscalePipeline.from_pretrained(
                source, dtype=dtype, safety_checker=None)
        except Exception as error:
            raise UpscalerError(f"engine.upscaler: {source} is not an upscaling model file, "
                                f"nor an SD x4 upscaler diffusers can load: {error}") from error
        pipe.set_progress_bar_config(disable=True)
        self.pipe = pipe.to(device)
        self.factor = pipe.vae_scale_factor  # 4 for the SD x4 upscaler
        self.name = f"{Path(source).name or source} (SD x{self.factor} upscaler)"

    def upscale(self, image: Image.Image, size: tuple[int, int], prompt: str, seed: int,
                steps: int, on_step: Steps) -> Image.Image:
        # Its input: the picture at a factor-th of the size asked for, in whole latent cells.
        width, height = (max(8, round(side / self.factor / 8) * 8) for side in size)
        low = image.convert("RGB").resize((width, height), Image.Resampling.LANCZOS)
        with torch.inference_mode():
            out = self.pipe(prompt=prompt, image=low, num_inference_steps=steps,
                            noise_level=NOISE_LEVEL,
                            generator=torch.Generator("cpu").manual_seed(seed),
                            callback=lambda step, timestep, latents: on_step(step + 1, steps),
                            callback_steps=1)
        return _fit(out.images[0], size)


def _passes(have: tuple[int, int], want: tuple[int, int], scale: int) -> int:
    passes, width = 1, have[0] * scale
    while width < want[0]:
        passes, width = passes + 1, width * scale
    return passes


def _fit(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    return image if image.size == size else image.resize(size, Image.Resampling.LANCZOS)
