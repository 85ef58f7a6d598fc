"""Loading diffusers pipelines: one set of weights shared by text-to-image, image-to-image and
inpainting, plus the per-model settings the engine needs (native size, defaults)."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import (
    AutoPipelineForImage2Image,
    AutoPipelineForInpainting,
    AutoPipelineForText2Image,
    DiffusionPipeline,
)

from engine.random_models import RANDOM_MODELS
from engine.random_models import build as build_random
from engine.shapes import MODEL_DIR as SHAPES_DIR

log = logging.getLogger(__name__)

BUNDLED = {"bundled:shapes": SHAPES_DIR}
SETTINGS_FILE = "canvas.json"  # optional per-model settings inside a model folder


@dataclass(frozen=True)
class ModelSettings:
    native_size: int = 512
    size_multiple: int = 8
    default_steps: int = 30
    default_guidance: float = 7.5
    min_output_size: int = 0


@dataclass
class Pipelines:
    name: str
    text2img: DiffusionPipeline
    img2img: DiffusionPipeline
    inpaint: DiffusionPipeline
    settings: ModelSettings
    device: torch.device
    dtype: torch.dtype


def resolve_model(spec: str) -> str:
    """`bundled:NAME`, a local diffusers folder, or a hub id, as a from_pretrained argument
    (`random:sd15` and `random:sdxl` are built, not loaded)."""
    if spec in BUNDLED:
        return str(BUNDLED[spec])
    if spec.startswith("bundled:"):
        raise ValueError(f"unknown bundled model {spec!r}; bundled models: {', '.join(BUNDLED)}")
    return spec


def pick_device(setting: str) -> torch.device:
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if setting == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("engine.device is cuda but PyTorch sees no CUDA device")
    return torch.device(setting)


def pick_dtype(setting: str, device: torch.device) -> torch.dtype:
    if setting == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return getattr(torch, setting)


def read_settings(pipe: DiffusionPipeline, folder: Path | None) -> ModelSettings:
    """The folder's canvas.json if it has one, otherwise what the model's config implies."""
    if folder is not None and (folder / SETTINGS_FILE).is_file():
        return ModelSettings(**json.loads((folder / SETTINGS_FILE).read_text()))
    vae_factor = getattr(pipe, "vae_scale_factor", 8)
    down_steps = len(pipe.unet.config.block_out_channels) - 1
    return ModelSettings(
        native_size=pipe.unet.config.sample_size * vae_factor,
        size_multiple=vae_factor * 2**down_steps,
    )


def load(spec: str, device_setting: str = "auto", dtype_setting: str = "auto",
         compile_models: bool = False) -> Pipelines:
    source = resolve_model(spec)
    device = pick_device(device_setting)
    dtype = pick_dtype(dtype_setting, device)
    log.info("loading %s on %s (%s)", spec, device, dtype)
    if spec in RANDOM_MODELS:
        text2img = build_random(spec, dtype)
    else:
        text2img = AutoPipelineForText2Image.from_pretrained(source, dtype=dtype)
    text2img.to(device)
    if device.type == "cuda":  # convolutions run faster in NHWC on tensor cores
        text2img.unet.to(memory_format=torch.channels_last)
        text2img.vae.to(memory_format=torch.channels_last)
    if compile_models:
        # Before from_pipe, so all three pipelines share the compiled modules.
        text2img.unet = torch.compile(text2img.unet)
        text2img.vae.decode = torch.compile(text2img.vae.decode)
    # from_pipe shares the loaded modules: three pipelines, one copy of the weights.
    img2img = AutoPipelineForImage2Image.from_pipe(text2img)
    inpaint = AutoPipelineForInpainting.from_pipe(text2img)
    for pipe in (text2img, img2img, inpaint):
        pipe.set_progress_bar_config(disable=True)
    folder = Path(source) if Path(source).is_dir() else None
    settings = read_settings(text2img, folder)
    pipelines = Pipelines(spec, text2img, img2img, inpaint, settings, device, dtype)
    if compile_models:
        warm_up(pipelines)
    return pipelines


def warm_up(pipelines: Pipelines) -> None:
    """Compile at start, not in a user's job. torch.compile specialises on the first shapes
    it sees and, when a shape changes, compiles once more with the changed sizes left
    dynamic, except a batch of one, which it always specialises: so one image at the native
    size, two at another aspect ratio, and one at a third leave graphs that serve every batch
    size and aspect ratio (checked on the CPU: no compiling after these)."""
    square = (pipelines.settings.native_size,) * 2
    wide = fit_size((2, 1), pipelines.settings)
    tall = fit_size((1, 2), pipelines.settings)
    for images, (width, height) in ((1, square), (2, wide), (1, tall)):
        log.info("warming up the compiled model: %d at %dx%d", images, width, height)
        with torch.inference_mode():
            pipelines.text2img(["warm up"] * images, num_inference_steps=2, width=width,
                               height=height, generator=torch.Generator("cpu").manual_seed(0))


def fit_size(aspect: tuple[int, int], settings: ModelSettings) -> tuple[int, int]:
    """Width and height with the given aspect ratio and about the model's native area, each a
    multiple of what the model accepts."""
    aspect_w, aspect_h = aspect
    area = settings.native_size**2
    width = math.sqrt(area * aspect_w / aspect_h)
    height = area / width
    step = settings.size_multiple
    return (max(step, round(width / step) * step), max(step, round(height / step) * step))
