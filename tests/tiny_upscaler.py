"""A tiny SD x4 upscaler with random weights (diffusers' StableDiffusionUpscalePipeline at a
toy size, on the bundled model's tokenizer and text encoder), saved as a folder the way one
from the hub is: for tests of `engine.upscaler`'s diffusers path. Random weights draw noise, so
what a test can check is the path: the size, the lineage, the progress."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    StableDiffusionUpscalePipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextModel, CLIPTokenizer

from engine.shapes import MODEL_DIR

MAX_NOISE_LEVEL = 350


def write_tiny_x4_upscaler(folder: Path) -> Path:
    torch.manual_seed(0)
    text_encoder = CLIPTextModel.from_pretrained(MODEL_DIR / "text_encoder")
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=7, out_channels=4,  # latents and the low-res picture
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), block_out_channels=(16, 32),
        layers_per_block=1, cross_attention_dim=text_encoder.config.hidden_size,
        attention_head_dim=2, norm_num_groups=8, num_class_embeds=MAX_NOISE_LEVEL + 1)
    vae = AutoencoderKL(  # three blocks: four times the latents' size, as the real one
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8, 16),
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        layers_per_block=1, norm_num_groups=8, scaling_factor=0.08333)
    pipe = StableDiffusionUpscalePipeline(
        vae=vae, text_encoder=text_encoder,
        tokenizer=CLIPTokenizer.from_pretrained(MODEL_DIR / "tokenizer"), unet=unet,
        low_res_scheduler=DDPMScheduler(), scheduler=DDIMScheduler(prediction_type="v_prediction"),
        max_noise_level=MAX_NOISE_LEVEL)
    pipe.save_pretrained(folder)
    return folder
