"""Parts the random-weight builders of several families share.

The tokenizers are the bundled model's (a tokenizer costs nothing to run, and the real
vocabularies would have to be downloaded); the full-size text encoders keep the real
vocabulary sizes, so their cost is the real one.
"""

from __future__ import annotations

from diffusers import AutoencoderKL
from transformers import CLIPTextConfig, CLIPTokenizer, T5Config

from engine.shapes import MODEL_DIR as SHAPES_DIR


def clip_tokenizer(max_length: int) -> CLIPTokenizer:
    return CLIPTokenizer.from_pretrained(SHAPES_DIR / "tokenizer", model_max_length=max_length)


def scheduler_betas() -> dict:
    """The Stable Diffusion 1.x-XL noise schedule."""
    return dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                num_train_timesteps=1000, steps_offset=1)


def vae(tiny: bool, sample_size: int, latent_channels: int = 4, **config) -> AutoencoderKL:
    """SD's VAE (8× smaller latents), or a tiny one (4×) for CPU tests."""
    if tiny:
        return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=latent_channels,
                             layers_per_block=1, block_out_channels=(16, 32, 32),
                             norm_num_groups=8, sample_size=sample_size,
                             down_block_types=("DownEncoderBlock2D",) * 3,
                             up_block_types=("UpDecoderBlock2D",) * 3, **config)
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=latent_channels,
                         layers_per_block=2, block_out_channels=(128, 256, 512, 512),
                         sample_size=sample_size,
                         down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4, **config)


CLIP_L = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
              num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
              projection_dim=768)
CLIP_G = dict(vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
              num_attention_heads=20, max_position_embeddings=77, hidden_act="gelu",
              projection_dim=1280)
T5_XXL = dict(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24,
              num_heads=64, feed_forward_proj="gated-gelu", is_encoder_decoder=False)


def tiny_clip(width: int = 32, **extra) -> CLIPTextConfig:
    tokenizer = clip_tokenizer(16)
    return CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=width,
                          intermediate_size=2 * width, num_hidden_layers=2,
                          num_attention_heads=2, max_position_embeddings=16,
                          projection_dim=width, bos_token_id=tokenizer.bos_token_id,
                          eos_token_id=tokenizer.eos_token_id,
                          pad_token_id=tokenizer.pad_token_id, **extra)


def tiny_t5(width: int = 32) -> T5Config:
    tokenizer = clip_tokenizer(16)
    return T5Config(vocab_size=len(tokenizer), d_model=width, d_kv=8, d_ff=2 * width,
                    num_layers=1, num_heads=2, feed_forward_proj="gated-gelu",
                    is_encoder_decoder=False, relative_attention_num_buckets=8,
                    pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
