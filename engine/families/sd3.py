"""Stable Diffusion 3.x: an MMDiT transformer on two CLIP encoders and T5 (which a model may
leave out), with rectified flow.

Training follows diffusers' train_dreambooth_lora_sd3.py: latents shifted then scaled by the
VAE's factors; σ drawn from a logit-normal density and mapped onto the scheduler's own
(shifted) σ grid; noisy = (1 − σ)·x + σ·ε; the transformer predicts the velocity ε − x at
timestep σ·1000, unweighted.
"""

from __future__ import annotations

from functools import cached_property

import torch
from diffusers import (
    FlowMatchEulerDiscreteScheduler,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
)
from diffusers.training_utils import compute_density_for_timestep_sampling
from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

from engine.families.base import Conditioning, Family, ModelSettings, Noised
from engine.families.parts import CLIP_G, CLIP_L, T5_XXL, clip_tokenizer, tiny_clip, tiny_t5, vae

ATTENTION = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj",
             "to_add_out")


class FlowFamily(Family):
    """What the rectified-flow transformers (SD 3.x, FLUX.1) share."""

    denoiser_name = "transformer"
    channels_last = False
    trainable = True
    lora_targets = ATTENTION
    # train_dreambooth_lora_sd3.py draws σ logit-normally; the FLUX script uniformly.
    density = "logit_normal"

    @cached_property
    def flow_schedule(self) -> FlowMatchEulerDiscreteScheduler:
        return FlowMatchEulerDiscreteScheduler.from_config(self.pipe.scheduler.config)

    def noised(self, latents: torch.Tensor, noise: torch.Tensor,
               generator: torch.Generator) -> Noised:
        schedule = self.flow_schedule
        u = compute_density_for_timestep_sampling(self.density, len(latents), logit_mean=0.0,
                                                  logit_std=1.0, generator=generator)
        indices = (u * schedule.config.num_train_timesteps).long()
        sigmas = schedule.sigmas[indices].to(latents).view(-1, *[1] * (latents.ndim - 1))
        noisy = (1 - sigmas) * latents + sigmas * noise
        timesteps = schedule.timesteps[indices].to(latents.device)
        return Noised(noisy, timesteps, noise - latents)


class SD3(FlowFamily):
    name = "sd3"
    label = "Stable Diffusion 3.x"
    pipelines = ("StableDiffusion3Pipeline", "StableDiffusion3Img2ImgPipeline",
                 "StableDiffusion3InpaintPipeline")

    def settings(self) -> ModelSettings:
        patch = self.denoiser.config.patch_size
        return ModelSettings(
            native_size=self.denoiser.config.sample_size * self.vae_scale_factor,
            size_multiple=self.vae_scale_factor * patch,
            default_steps=28, default_guidance=4.5)  # SD 3.5 Medium's model card

    def encode_prompts(self, prompts: list[str]) -> Conditioning:
        embeddings, _, pooled, _ = self.pipe.encode_prompt(
            prompts, None, None, device=self.denoiser.device, do_classifier_free_guidance=False,
            **self.text_options())
        return Conditioning({"encoder_hidden_states": embeddings, "pooled_projections": pooled})

    def predict(self, noisy: torch.Tensor, timesteps: torch.Tensor,
                conditioning: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.module(hidden_states=noisy, timestep=timesteps, **conditioning).sample


def build_random(tiny: bool) -> StableDiffusion3Pipeline:
    """SD 3.5 Medium's published configuration (MMDiT-X: dual attention in the first 13
    layers), or the same classes at a tiny size."""
    if tiny:
        first, second, t5 = tiny_clip(32), tiny_clip(32, hidden_act="gelu"), tiny_t5(64)
        transformer = SD3Transformer2DModel(
            sample_size=8, patch_size=2, in_channels=16, out_channels=16, num_layers=2,
            attention_head_dim=16, num_attention_heads=2, joint_attention_dim=64,
            caption_projection_dim=32, pooled_projection_dim=64, pos_embed_max_size=32,
            dual_attention_layers=(0,), qk_norm="rms_norm")
        # 16 latent channels, as SD 3's: its inpainting pipeline takes no other number.
        image_vae = vae(tiny=True, sample_size=32, latent_channels=16, shift_factor=0.0,
                        use_quant_conv=False, use_post_quant_conv=False)
        tokens, shift = 16, 1.0
    else:
        first, second, t5 = (CLIPTextConfig(**CLIP_L), CLIPTextConfig(**CLIP_G),
                             T5Config(**T5_XXL))
        transformer = SD3Transformer2DModel(
            sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=24,
            attention_head_dim=64, num_attention_heads=24, joint_attention_dim=4096,
            caption_projection_dim=1536, pooled_projection_dim=2048, pos_embed_max_size=384,
            dual_attention_layers=tuple(range(13)), qk_norm="rms_norm")
        image_vae = vae(tiny=False, sample_size=1024, latent_channels=16, scaling_factor=1.5305,
                        shift_factor=0.0609, use_quant_conv=False, use_post_quant_conv=False)
        tokens, shift = 77, 3.0
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift),
        vae=image_vae,
        text_encoder=CLIPTextModelWithProjection(first), tokenizer=clip_tokenizer(tokens),
        text_encoder_2=CLIPTextModelWithProjection(second), tokenizer_2=clip_tokenizer(tokens),
        text_encoder_3=T5EncoderModel(t5), tokenizer_3=clip_tokenizer(tokens))
