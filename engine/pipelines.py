"""Loading diffusers pipelines: one set of weights shared by text-to-image, image-to-image and
inpainting, the model's family (engine/families/) and the per-model settings the engine needs
(native size, defaults)."""

from __future__ import annotations

import json
import logging
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoPipelineForImage2Image,
    AutoPipelineForInpainting,
    AutoPipelineForText2Image,
    DiffusionPipeline,
)

from engine.families import RANDOM_MODELS, Family, ModelSettings, build_random, family_of
from engine.memory_modes import MemoryModeError, apply_offload, check_offload, quantization
from engine.params import Params
from engine.shapes import MODEL_DIR as SHAPES_DIR
from engine.shapes import SD3_MODEL_DIR as SHAPES_SD3_DIR

log = logging.getLogger(__name__)

BUNDLED = {"bundled:shapes": SHAPES_DIR, "bundled:shapes-sd3": SHAPES_SD3_DIR}
SETTINGS_FILE = "canvas.json"  # optional per-model settings inside a model folder
# A tokenizer folder holds one of these (CLIP's BPE, a fast tokenizer, T5's SentencePiece).
TOKENIZER_FILES = ("vocab.json", "tokenizer.json", "spiece.model", "tokenizer.model")


@dataclass
class Pipelines:
    checkpoint: str  # the weights, as configured (`bundled:shapes`, a folder, a hub id)
    text2img: DiffusionPipeline
    img2img: DiffusionPipeline | None  # None: diffusers has no such pipeline for this model
    inpaint: DiffusionPipeline | None
    settings: ModelSettings
    device: torch.device
    dtype: torch.dtype
    family: Family
    compiled: bool = False  # the denoiser runs through torch.compile
    configured: Params = Params()  # engine.models' defaults for this model, over the family's
    offload: str = "none"  # weights kept in CPU RAM and brought to the GPU as used

    @property
    def defaults(self) -> Params:
        """The model's own defaults, the last layer a job's parameters resolve from."""
        return self.configured.resolve(Params(steps=self.settings.default_steps,
                                              cfg=self.settings.default_guidance,
                                              checkpoint=self.checkpoint))

    def for_kind(self, kind: str) -> DiffusionPipeline:
        """The pipeline for a job's kind; a ValueError the user can read when there is none."""
        pipe = {"txt2img": self.text2img, "img2img": self.img2img,
                "inpaint": self.inpaint}[kind]
        if pipe is None:
            what = {"img2img": "/vary", "inpaint": "/inpaint"}[kind]
            raise ValueError(f"This model ({self.family.label}, "
                             f"{type(self.text2img).__name__}) cannot do {what}: diffusers has "
                             "no pipeline for it.")
        return pipe

    def text_to_image(self, prompts: list[str], steps: int, width: int, height: int,
                      **extra: Any) -> Any:
        """A plain text-to-image call at the model's defaults (warm-up, memory probe)."""
        arguments = self.family.call_arguments(prompts, [""] * len(prompts),
                                               self.settings.default_guidance)
        with torch.inference_mode():
            return self.text2img(**arguments, **self.settings.call, num_inference_steps=steps,
                                 width=width, height=height,
                                 generator=torch.Generator("cpu").manual_seed(0), **extra)


def resolve_model(spec: str) -> str:
    """`bundled:NAME`, a local diffusers folder, or a hub id, as a from_pretrained argument
    (`random:…` models are built, not loaded)."""
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


# Families whose activations overflow float16 (FLUX.1 and SD 3 are trained and shipped in bf16).
BFLOAT16_PIPELINES = ("Flux", "StableDiffusion3")


def pick_dtype(setting: str, device: torch.device, spec: str = "") -> torch.dtype:
    if setting != "auto":
        return getattr(torch, setting)
    if device.type != "cuda":
        return torch.float32
    return torch.bfloat16 if pipeline_class(spec).startswith(BFLOAT16_PIPELINES) else torch.float16


def pipeline_class(spec: str) -> str:
    """The pipeline class a model names (its model_index.json), without loading it; '' where
    it cannot be read."""
    random_classes = {"random:sd3": "StableDiffusion3Pipeline", "random:flux": "FluxPipeline"}
    for prefix, name in random_classes.items():
        if spec.startswith(prefix):
            return name
    if not spec or spec.startswith("random:"):
        return ""
    try:
        return DiffusionPipeline.load_config(resolve_model(spec)).get("_class_name", "")
    except Exception:  # offline, a single file, or no such model: the load will say
        return ""


def read_settings(family: Family, folder: Path | None) -> ModelSettings:
    """The folder's canvas.json if it has one, otherwise what the model's family reads from
    its configuration."""
    if folder is not None and (folder / SETTINGS_FILE).is_file():
        return ModelSettings(**json.loads((folder / SETTINGS_FILE).read_text()))
    return family.settings()


def absent_components(folder: Path | None) -> dict[str, None]:
    """Components the folder's model_index.json lists as null (SD 3 without T5, say), which
    from_pretrained must be told are meant to be missing."""
    index = folder / "model_index.json" if folder is not None else None
    if index is None or not index.is_file():
        return {}
    return {name: None for name, value in json.loads(index.read_text()).items()
            if isinstance(value, list) and value[:1] == [None]}


def load(spec: str, device_setting: str = "auto", dtype_setting: str = "auto",
         compile_models: bool = False, *, quantize: str = "none", offload: str = "none",
         config: str = "") -> Pipelines:
    """Load a model's pipelines onto the device, quantized and offloaded as asked
    (engine/memory_modes.py)."""
    source = resolve_model(spec)
    device = pick_device(device_setting)
    dtype = pick_dtype(dtype_setting, device, config or spec)
    # Where the model's configs (and its canvas.json) are: its folder, or a single file's
    # `config` folder.
    folder = Path(source) if Path(source).is_dir() else Path(config) if config else None
    check_offload(offload, device)
    log.info("loading %s on %s (%s%s%s)", spec, device, dtype,
             "" if quantize == "none" else f", {quantize}",
             "" if offload == "none" else f", offload {offload}")
    quantized = quantization(quantize, pipeline_class(config or spec), device, dtype)
    extra = {"quantization_config": quantized} if quantized else {}
    if spec in RANDOM_MODELS and quantized:
        text2img = _random_quantized(spec, dtype, extra)
    elif spec in RANDOM_MODELS:
        text2img = build_random(spec, device, dtype)
    elif Path(source).is_file() and Path(source).suffix.lower() == ".gguf":
        if quantized:
            raise MemoryModeError(f"{spec}: a .gguf file is quantized already (leave "
                                  "quantize: none)")
        text2img = _gguf(Path(source), folder, dtype)
    elif Path(source).is_file():
        if quantized:
            raise MemoryModeError(
                f"{spec}: a single-file checkpoint cannot be quantized while it loads; save "
                "it once as a diffusers folder (pipe.save_pretrained) and give that folder")
        text2img = _single_file(Path(source), config, dtype)
    else:
        text2img = AutoPipelineForText2Image.from_pretrained(source, dtype=dtype,
                                                             **absent_components(folder),
                                                             **extra)
    if offload == "none":
        text2img.to(device)
    else:
        apply_offload(text2img, offload, device)
    family = family_of(text2img)
    settings = read_settings(family, folder)
    family.call = settings.call
    log.info("%s is a %s model (%s)", spec, family.label, type(text2img).__name__)
    if device.type == "cuda":  # convolutions run faster in NHWC on tensor cores
        if family.channels_last:
            family.denoiser.to(memory_format=torch.channels_last)
        text2img.vae.to(memory_format=torch.channels_last)
    if compile_models:
        # Before from_pipe, so all three pipelines share the compiled modules.
        family.set_denoiser(torch.compile(family.denoiser))
        text2img.vae.decode = torch.compile(text2img.vae.decode)
    # from_pipe shares the loaded modules: three pipelines, one copy of the weights.
    img2img = _derived(AutoPipelineForImage2Image, text2img)
    inpaint = _derived(AutoPipelineForInpainting, text2img)
    for pipe in (text2img, img2img, inpaint):
        if pipe is not None:
            pipe.set_progress_bar_config(disable=True)
    pipelines = Pipelines(spec, text2img, img2img, inpaint, settings, device, dtype, family,
                          compile_models, offload=offload)
    if compile_models:
        warm_up(pipelines)
    return pipelines


def _single_file(path: Path, config: str, dtype: torch.dtype) -> DiffusionPipeline:
    """A checkpoint in one .safetensors file (as shared on model sites), loaded with
    from_single_file; `config` is a local folder of its diffusers configs (model_index.json,
    each component's config, the tokenizer's files and the scheduler's), so no download is
    needed to read it. Without one, diffusers guesses the configs and downloads them."""
    import diffusers

    if config:
        _check_config_folder(Path(config))
    name = pipeline_class(config) if config else "StableDiffusionPipeline"
    cls = getattr(diffusers, name or "StableDiffusionPipeline")
    try:
        return cls.from_single_file(str(path), config=config or None, torch_dtype=dtype)
    except (IndexError, KeyError, RuntimeError) as error:  # diffusers' converters, unguarded
        raise ValueError(f"{path} does not fit the configs in {config or 'diffusers guessed'}"
                         f" (a checkpoint of another family or size?): {error}") from error


def _gguf(path: Path, config: Path | None, dtype: torch.dtype) -> DiffusionPipeline:
    """A denoiser quantized in a GGUF file, as pre-quantized FLUX.1 and SD 3.5 denoisers are
    shared (Q8_0, Q4_K and the rest; diffusers dequantizes each layer as it runs); the rest of
    the pipeline (text encoders, VAE, scheduler) from `config`, a local diffusers copy of the
    same model, whose own denoiser weights are not read."""
    import diffusers
    from diffusers import GGUFQuantizationConfig

    if config is None:
        raise ValueError(f"{path.name} holds only a denoiser: give the model a config (a "
                         "local diffusers copy of the same model) for the rest")
    _check_config_folder(config)
    index = DiffusionPipeline.load_config(config)
    part = next((name for name in ("transformer", "unet") if name in index), None)
    if part is None:
        raise ValueError(f"config: {config} names no transformer or unet for {path.name}")
    denoiser_class = getattr(diffusers, index[part][1])
    try:
        denoiser = denoiser_class.from_single_file(
            str(path), config=str(config), subfolder=part, torch_dtype=dtype,
            quantization_config=GGUFQuantizationConfig(compute_dtype=dtype))
    except (IndexError, KeyError, RuntimeError) as error:
        raise ValueError(f"{path} does not fit the {part} configured in {config}: "
                         f"{error}") from error
    return AutoPipelineForText2Image.from_pretrained(config, dtype=dtype, **{part: denoiser},
                                                     **absent_components(config))


def _check_config_folder(folder: Path) -> None:
    """Each component model_index.json names has its folder: a missing tokenizer would load
    without a word of warning and draw noise."""
    index = folder / "model_index.json"
    if not index.is_file():
        raise ValueError(f"config: {folder} has no model_index.json; give the folder of a "
                         "diffusers copy of the model's family (its configs and tokenizer)")
    wanted = [name for name, value in json.loads(index.read_text()).items()
              if isinstance(value, list) and value[:1] != [None]]
    missing = [name for name in wanted if not (folder / name).is_dir()
               or not any((folder / name).iterdir())
               or name.startswith("tokenizer") and not any(
                   (folder / name / file).is_file() for file in TOKENIZER_FILES)]
    if missing:
        raise ValueError(f"config: {folder} lacks {', '.join(missing)}: copy those folders "
                         "(without their weights) from a diffusers copy of the model")


def _random_quantized(spec: str, dtype: torch.dtype, extra: dict) -> DiffusionPipeline:
    """diffusers quantizes while it loads, so a random model is built in CPU RAM, saved to a
    scratch folder and loaded back from there (a full-size FLUX.1 in bf16 needs 24 GB of RAM
    and of disk for a moment)."""
    built = build_random(spec, "cpu", dtype)
    with tempfile.TemporaryDirectory(prefix="canvas-random-") as folder:
        built.save_pretrained(folder)
        del built
        return AutoPipelineForText2Image.from_pretrained(folder, dtype=dtype, **extra)


def _derived(auto: type, text2img: DiffusionPipeline) -> DiffusionPipeline | None:
    try:
        return auto.from_pipe(text2img)
    except ValueError as error:  # AutoPipeline knows no such pipeline for this model
        log.info("%s: %s", auto.__name__, error)
        return None


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
        pipelines.text_to_image(["warm up"] * images, 2, width, height)


def fit_size(aspect: tuple[int, int], settings: ModelSettings) -> tuple[int, int]:
    """Width and height with the given aspect ratio and about the model's native area, each a
    multiple of what the model accepts."""
    aspect_w, aspect_h = aspect
    area = settings.native_size**2
    width = math.sqrt(area * aspect_w / aspect_h)
    height = area / width
    step = settings.size_multiple
    return (max(step, round(width / step) * step), max(step, round(height / step) * step))
