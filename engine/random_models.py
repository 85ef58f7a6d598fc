"""`random:sd15` and `random:sdxl`: the full Stable Diffusion 1.5 and SDXL architectures, built
from their published configurations with random weights, so the real cost of real models
(time, memory, batching) can be measured where no weights can be downloaded. The pictures are
noise; everything else follows the same code path as a real model.

The tokenizers are the bundled model's (a tokenizer costs nothing to run, and the real
vocabularies would have to be downloaded); the text encoders keep the real vocabulary size.
"""

from __future__ import annotations

import torch
from diffusers import (
    AutoencoderKL,
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
)

from engine.shapes import MODEL_DIR as SHAPES_DIR

RANDOM_MODELS = ("random:sd15", "random:sdxl")

_SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                  num_train_timesteps=1000, steps_offset=1)
_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
            block_out_channels=(128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4)
_CLIP_L = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072,
               num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77,
               hidden_act="quick_gelu", projection_dim=768)


def build(spec: str, dtype: torch.dtype, seed: int = 0) -> DiffusionPipeline:
    torch.manual_seed(seed)
    tokenizer = CLIPTokenizer.from_pretrained(SHAPES_DIR / "tokenizer", model_max_length=77)
    scheduler = DPMSolverMultistepScheduler(**_SCHEDULER)
    if spec == "random:sd15":
        pipe = StableDiffusionPipeline(
            vae=AutoencoderKL(**_VAE, sample_size=512, scaling_factor=0.18215),
            text_encoder=CLIPTextModel(CLIPTextConfig(**_CLIP_L)),
            tokenizer=tokenizer,
            unet=UNet2DConditionModel(
                sample_size=64, layers_per_block=2, cross_attention_dim=768,
                block_out_channels=(320, 640, 1280, 1280), attention_head_dim=8,
                down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3),
            scheduler=scheduler, safety_checker=None, feature_extractor=None,
            requires_safety_checker=False)
    elif spec == "random:sdxl":
        pipe = StableDiffusionXLPipeline(
            vae=AutoencoderKL(**_VAE, sample_size=1024, scaling_factor=0.13025,
                              force_upcast=True),
            text_encoder=CLIPTextModel(CLIPTextConfig(**_CLIP_L)),
            text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(
                vocab_size=49408, hidden_size=1280, intermediate_size=5120,
                num_hidden_layers=32, num_attention_heads=20, max_position_embeddings=77,
                hidden_act="gelu", projection_dim=1280)),
            tokenizer=tokenizer, tokenizer_2=tokenizer,
            unet=UNet2DConditionModel(
                sample_size=128, layers_per_block=2, cross_attention_dim=2048,
                block_out_channels=(320, 640, 1280), attention_head_dim=(5, 10, 20),
                transformer_layers_per_block=(1, 2, 10), use_linear_projection=True,
                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D",
                                  "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                addition_embed_type="text_time", addition_time_embed_dim=256,
                projection_class_embeddings_input_dim=2816),
            scheduler=scheduler)
    else:
        raise ValueError(f"unknown random model {spec!r}; random models: "
                         f"{', '.join(RANDOM_MODELS)}")
    return pipe.to(dtype=dtype)
