"""Stable Diffusion 1.x and 2.x: a UNet on one CLIP text encoder's states.

Training follows diffusers' train_text_to_image_lora.py: uniform timesteps, the DDPM forward
process with the sampler's own betas, and the target the scheduler's `prediction_type` names
(the noise ε, or the velocity v = √ᾱ·ε − √(1−ᾱ)·x for SD 2.x's 768-v models).
"""

from __future__ import annotations

from functools import cached_property
from typing import ClassVar

import torch
from diffusers import (
    DDPMScheduler,
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel

from engine.families.base import Conditioning, Family, ModelSettings, Noised, class_named
from engine.families.parts import CLIP_L, clip_tokenizer, scheduler_betas, tiny_clip, vae


class DenoisingFamily(Family):
    """What every ε- or v-prediction UNet family shares (SD 1.x, 2.x and XL)."""

    trainable = True
    default_guidance: ClassVar[float] = 7.5

    def settings(self) -> ModelSettings:
        unet = self.pipe.unet.config
        down_steps = len(unet.block_out_channels) - 1
        return ModelSettings(native_size=unet.sample_size * self.vae_scale_factor,
                             size_multiple=self.vae_scale_factor * 2**down_steps,
                             default_steps=30, default_guidance=self.default_guidance)

    @cached_property
    def noise_schedule(self) -> DDPMScheduler:
        return DDPMScheduler.from_config(self.pipe.scheduler.config)

    @property
    def prediction_type(self) -> str:
        return self.noise_schedule.config.prediction_type

    def noised(self, latents: torch.Tensor, noise: torch.Tensor,
               generator: torch.Generator) -> Noised:
        schedule = self.noise_schedule
        timesteps = torch.randint(0, schedule.config.num_train_timesteps, (len(latents),),
                                  generator=generator).to(latents.device)
        noisy = schedule.add_noise(latents, noise, timesteps)
        if self.prediction_type == "epsilon":
            target = noise
        elif self.prediction_type == "v_prediction":
            target = schedule.get_velocity(latents, noise, timesteps)
        else:
            raise ValueError(f"cannot train a model that predicts {self.prediction_type!r}")
        return Noised(noisy, timesteps, target)


class SD15(DenoisingFamily):
    name = "sd15"
    label = "Stable Diffusion 1.x"
    pipelines = ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline",
                 "StableDiffusionInpaintPipeline")

    @classmethod
    def recognises(cls, pipe: DiffusionPipeline) -> bool:
        return class_named(pipe, *cls.pipelines) and not _openclip(pipe)

    def encode_prompts(self, prompts: list[str]) -> Conditioning:
        embeddings, _ = self.pipe.encode_prompt(prompts, self.denoiser.device, 1, False)
        return Conditioning({"encoder_hidden_states": embeddings})

    def predict(self, noisy: torch.Tensor, timesteps: torch.Tensor,
                conditioning: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.module(noisy, timesteps, **conditioning).sample


class SD2(SD15):
    """SD 2.x: the same UNet on OpenCLIP-H's wider states; the 768 models predict v."""

    name = "sd2"
    label = "Stable Diffusion 2.x"

    @classmethod
    def recognises(cls, pipe: DiffusionPipeline) -> bool:
        return class_named(pipe, *cls.pipelines) and _openclip(pipe)


def _openclip(pipe: DiffusionPipeline) -> bool:
    """SD 2.x's text encoder is OpenCLIP-H (1024 wide, plain GELU); 1.x's is OpenAI's CLIP-L
    (768 wide, quick GELU)."""
    text = pipe.text_encoder.config
    return text.hidden_size == 1024 or text.hidden_act == "gelu"


def build_random(tiny: bool, two: bool = False) -> StableDiffusionPipeline:
    """SD 1.5's (or, with `two`, SD 2.1 768-v's) published architecture with random weights;
    `tiny`: the same classes at a size the CPU test suite runs in milliseconds."""
    if tiny:
        width = 32
        text = tiny_clip(width, hidden_act="gelu" if two else "quick_gelu")
        unet = UNet2DConditionModel(
            sample_size=8, layers_per_block=1, cross_attention_dim=width,
            block_out_channels=(32, 64), norm_num_groups=8, attention_head_dim=2,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            use_linear_projection=two)
        return StableDiffusionPipeline(
            vae=vae(tiny=True, sample_size=32), text_encoder=CLIPTextModel(text),
            tokenizer=clip_tokenizer(16), unet=unet,
            scheduler=DPMSolverMultistepScheduler(
                **scheduler_betas(), prediction_type="v_prediction" if two else "epsilon"),
            safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    if two:  # SD 2.1 768-v: OpenCLIP ViT-H/14's text tower, v-prediction
        text = CLIPTextConfig(vocab_size=49408, hidden_size=1024, intermediate_size=4096,
                              num_hidden_layers=23, num_attention_heads=16,
                              max_position_embeddings=77, hidden_act="gelu",
                              projection_dim=512)
        unet = UNet2DConditionModel(
            sample_size=96, layers_per_block=2, cross_attention_dim=1024,
            block_out_channels=(320, 640, 1280, 1280), attention_head_dim=(5, 10, 20, 20),
            use_linear_projection=True,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
        image_size, prediction = 768, "v_prediction"
    else:
        text = CLIPTextConfig(**CLIP_L)
        unet = UNet2DConditionModel(
            sample_size=64, layers_per_block=2, cross_attention_dim=768,
            block_out_channels=(320, 640, 1280, 1280), attention_head_dim=8,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
        image_size, prediction = 512, "epsilon"
    return StableDiffusionPipeline(
        vae=vae(tiny=False, sample_size=image_size), text_encoder=CLIPTextModel(text),
        tokenizer=clip_tokenizer(77), unet=unet,
        scheduler=DPMSolverMultistepScheduler(**scheduler_betas(), prediction_type=prediction),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)

