"""What a model family is: the one place that answers every family-specific question.

The engine never reads `pipe.unet` or assumes a loss. It asks the pipeline's `Family` for its
denoiser, its native size and size grid, its defaults, which options it honours and how, its
LoRA targets, and, for /retrain, how to encode examples, noise them and what the denoiser
should predict. `engine/families/__init__.py` picks the family of a loaded pipeline.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from diffusers import DiffusionPipeline


@dataclass(frozen=True)
class ModelSettings:
    native_size: int = 512
    size_multiple: int = 8
    default_steps: int = 30
    default_guidance: float = 7.5
    min_output_size: int = 0
    # Extra keyword arguments for every pipeline call of this model (its canvas.json may say).
    call: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Conditioning:
    """Text conditioning for training, one row per example, indexed together."""

    tensors: dict[str, torch.Tensor]

    def __getitem__(self, picks: torch.Tensor) -> dict[str, torch.Tensor]:
        return {name: tensor[picks] for name, tensor in self.tensors.items()}


@dataclass(frozen=True)
class Noised:
    """One training step's input and the denoiser's target."""

    noisy: torch.Tensor
    timesteps: torch.Tensor
    target: torch.Tensor


class NotTrainable(Exception):
    """/retrain is not supported for this model's family."""


class Family:
    """A model family. Subclasses set the class attributes and override what differs."""

    name: ClassVar[str] = "unknown"
    label: ClassVar[str] = "a model no family here knows"
    denoiser_name: ClassVar[str] = "unet"
    # Modules of the denoiser a LoRA adapts (peft's target_modules).
    lora_targets: ClassVar[tuple[str, ...]] = ("to_q", "to_k", "to_v", "to_out.0")
    # Convolutional denoisers run faster in NHWC on a GPU's tensor cores.
    channels_last: ClassVar[bool] = True
    trainable: ClassVar[bool] = False
    # diffusers' pipeline classes of this family: text-to-image, image-to-image, inpainting
    pipelines: ClassVar[tuple[str, ...]] = ()

    def __init__(self, pipe: DiffusionPipeline) -> None:
        self.pipe = pipe
        self.call: dict[str, Any] = {}  # the model's own call options (ModelSettings.call)

    @classmethod
    def recognises(cls, pipe: DiffusionPipeline) -> bool:
        return class_named(pipe, *cls.pipelines)

    # ---- generation -----------------------------------------------------------------------

    @property
    def denoiser(self) -> torch.nn.Module:
        return getattr(self.pipe, self.denoiser_name)

    @property
    def module(self) -> torch.nn.Module:
        """The denoiser itself, not its torch.compile wrapper: for training and adapters."""
        return getattr(self.denoiser, "_orig_mod", self.denoiser)

    def set_denoiser(self, module: torch.nn.Module, *pipes: DiffusionPipeline) -> None:
        for pipe in (self.pipe, *pipes):
            setattr(pipe, self.denoiser_name, module)

    @property
    def vae_scale_factor(self) -> int:
        return getattr(self.pipe, "vae_scale_factor", 8)

    def settings(self) -> ModelSettings:
        """Defaults read from the loaded model's configuration."""
        sample_size = getattr(self.denoiser.config, "sample_size", 64)
        return ModelSettings(native_size=sample_size * self.vae_scale_factor,
                             size_multiple=self.vae_scale_factor)

    def unsupported(self, pipe: DiffusionPipeline, negative_prompt: str,
                    guidance: float | None) -> str | None:
        """Why `pipe` (this model's pipeline for the job's kind) cannot honour the options the
        user gave (a guidance of None was not given), or None when it can."""
        if negative_prompt and not accepts(pipe, "negative_prompt"):
            return f"This model ({type(pipe).__name__}) takes no negative prompt: drop --no."
        if guidance is not None and not accepts(pipe, "guidance_scale"):
            return f"This model ({type(pipe).__name__}) has no guidance scale: drop --cfg."
        return None

    def option_notes(self) -> list[str]:
        """What /help says about this family's options (empty: it honours them all as usual)."""
        return []

    def call_arguments(self, prompts: list[str], negative_prompts: list[str],
                       guidance: float) -> dict[str, Any]:
        """The prompt and guidance arguments of one pipeline call."""
        return {"prompt": prompts, "negative_prompt": negative_prompts,
                "guidance_scale": guidance}

    def batch_options(self, negative_prompt: str) -> tuple:
        """What else, beyond size, steps and guidance, jobs must share to run in one batch."""
        return ()

    def text_options(self) -> dict[str, Any]:
        """The model's call options that shape its prompt encoding, which training must match."""
        return {k: v for k, v in self.call.items() if k == "max_sequence_length"}

    # ---- training -------------------------------------------------------------------------

    def encode_prompts(self, prompts: list[str]) -> Conditioning:
        raise NotTrainable(self.not_trainable())

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """Latents of preprocessed pixels in [-1, 1], scaled as the denoiser sees them."""
        vae = self.pipe.vae
        upcast = vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False)
        if upcast:  # SDXL's VAE overflows in fp16, as its pipelines know
            vae.to(torch.float32)
        try:
            latents = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist.mean
        finally:
            if upcast:
                vae.to(torch.float16)
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        return (latents.float() - shift) * vae.config.scaling_factor

    def noised(self, latents: torch.Tensor, noise: torch.Tensor,
               generator: torch.Generator) -> Noised:
        raise NotTrainable(self.not_trainable())

    def predict(self, noisy: torch.Tensor, timesteps: torch.Tensor,
                conditioning: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotTrainable(self.not_trainable())

    def not_trainable(self) -> str:
        return (f"/retrain is not supported for {type(self.pipe).__name__} ({self.label}); it "
                "works on Stable Diffusion 1.x, 2.x, XL, 3.x and FLUX.1 models.")


def accepts(pipe: DiffusionPipeline, argument: str) -> bool:
    return argument in inspect.signature(pipe.__call__).parameters


def class_named(pipe: DiffusionPipeline, *names: str) -> bool:
    """Whether the pipeline, or the text-to-image pipeline it was made from, is one of these."""
    return type(pipe).__name__ in names
