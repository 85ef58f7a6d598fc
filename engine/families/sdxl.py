"""Stable Diffusion XL: a UNet on two CLIP encoders' states, plus the pooled embedding of the
second and the "time ids" (original size, crop corner, target size) as extra conditioning.

Training follows diffusers' train_dreambooth_lora_sdxl.py: the conditioning is the pipeline's
own `encode_prompt` and `_get_add_time_ids` for an uncropped square at the native size; the
target is ε or v as the scheduler predicts; the VAE encodes in fp32 (`force_upcast`).
"""

from __future__ import annotations

import torch
from diffusers import (
    DPMSolverMultistepScheduler,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from engine.families.base import Conditioning
from engine.families.parts import CLIP_G, CLIP_L, clip_tokenizer, scheduler_betas, tiny_clip, vae
from engine.families.sd import DenoisingFamily


class SDXL(DenoisingFamily):
    name = "sdxl"
    label = "Stable Diffusion XL"
    pipelines = ("StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline",
                 "StableDiffusionXLInpaintPipeline")
    default_guidance = 6.0

    def encode_prompts(self, prompts: list[str]) -> Conditioning:
        pipe = self.pipe
        embeddings, _, pooled, _ = pipe.encode_prompt(
            prompts, device=self.denoiser.device, num_images_per_prompt=1,
            do_classifier_free_guidance=False)
        size = (self.settings().native_size,) * 2
        time_ids = pipe._get_add_time_ids(
            size, (0, 0), size, dtype=embeddings.dtype,
            text_encoder_projection_dim=pipe.text_encoder_2.config.projection_dim)
        return Conditioning({"encoder_hidden_states": embeddings, "text_embeds": pooled,
                             "time_ids": time_ids.repeat(len(prompts), 1).to(pooled.device)})

    def predict(self, noisy: torch.Tensor, timesteps: torch.Tensor,
                conditioning: dict[str, torch.Tensor]) -> torch.Tensor:
        added = {"text_embeds": conditioning["text_embeds"],
                 "time_ids": conditioning["time_ids"]}
        return self.module(noisy, timesteps, conditioning["encoder_hidden_states"],
                             added_cond_kwargs=added).sample


def build_random(tiny: bool) -> StableDiffusionXLPipeline:
    if tiny:
        first, second = tiny_clip(32), tiny_clip(32, hidden_act="gelu")
        time_dim = 8
        unet = UNet2DConditionModel(
            sample_size=8, layers_per_block=1, cross_attention_dim=64,
            block_out_channels=(32, 64), norm_num_groups=8, attention_head_dim=(2, 4),
            use_linear_projection=True,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            addition_embed_type="text_time", addition_time_embed_dim=time_dim,
            projection_class_embeddings_input_dim=6 * time_dim + second.projection_dim)
        image_vae, tokens = vae(tiny=True, sample_size=32, force_upcast=True), 16
    else:
        first, second = CLIPTextConfig(**CLIP_L), CLIPTextConfig(**CLIP_G)
        unet = UNet2DConditionModel(
            sample_size=128, layers_per_block=2, cross_attention_dim=2048,
            block_out_channels=(320, 640, 1280), attention_head_dim=(5, 10, 20),
            transformer_layers_per_block=(1, 2, 10), use_linear_projection=True,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            addition_embed_type="text_time", addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816)
        image_vae = vae(tiny=False, sample_size=1024, scaling_factor=0.13025, force_upcast=True)
        tokens = 77
    return StableDiffusionXLPipeline(
        vae=image_vae, text_encoder=CLIPTextModel(first),
        text_encoder_2=CLIPTextModelWithProjection(second),
        tokenizer=clip_tokenizer(tokens), tokenizer_2=clip_tokenizer(tokens), unet=unet,
        scheduler=DPMSolverMultistepScheduler(**scheduler_betas()))
