"""The `bundled:shapes-sd3` architecture: the shapes model on Stable Diffusion 3's design.

An MMDiT transformer (SD3Transformer2DModel) with a flow-matching scheduler, two small CLIP text
encoders with projections and no T5 (SD 3 allows leaving it out), and a VAE shaped like
SD 3's (8× smaller, 16 latent channels). `python -m engine.shapes.train_sd3` trains it from
scratch and writes `engine/shapes/model-sd3/`.

Without T5 the pipeline would pad the prompt with `max_sequence_length` (256) zero tokens; this
model is trained and run with none (`"call": {"max_sequence_length": 0}` in its canvas.json),
so its joint attention sees only the CLIP tokens.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
)
from transformers import CLIPTextModelWithProjection, CLIPTokenizer

from engine.shapes import SD3_MODEL_DIR, build

NATIVE_SIZE = build.NATIVE_SIZE
TEXT_HIDDEN_SIZE = 64
TEXT_LAYERS = 3  # SD 3 reads the penultimate layer's states: two layers do the work
HEADS, HEAD_DIM = 4, 32
LAYERS = 6
# SD 3's VAE shrinks 8× to 16 channels: at 64 pixels, 8×8 latents (as many numbers as
# bundled:shapes' 16×16×4), one token each, so the transformer sees 64 image tokens.
VAE_CHANNELS = (16, 32, 64, 64)
PATCH = 1
# SD 3's 16 latent channels (diffusers' SD 3 inpainting pipeline accepts no other number).
LATENT_CHANNELS = 16
SEED = 10  # away from bundled:shapes' seeds, so the two models start differently
CALL_OPTIONS = {"max_sequence_length": 0}


def build_text_encoder(tokenizer: CLIPTokenizer) -> CLIPTextModelWithProjection:
    return CLIPTextModelWithProjection(build.text_encoder_config(tokenizer, TEXT_LAYERS))


def build_transformer() -> SD3Transformer2DModel:
    # 8×8 latents, one token each: 64 image tokens beside 2 × 16 prompt tokens.
    return SD3Transformer2DModel(
        sample_size=NATIVE_SIZE // 2 ** (len(VAE_CHANNELS) - 1),
        patch_size=PATCH,
        in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        num_layers=LAYERS,
        attention_head_dim=HEAD_DIM,
        num_attention_heads=HEADS,
        joint_attention_dim=2 * TEXT_HIDDEN_SIZE,  # both CLIPs' states side by side
        caption_projection_dim=HEADS * HEAD_DIM,
        pooled_projection_dim=2 * TEXT_HIDDEN_SIZE,
        pos_embed_max_size=32,  # fixed sin-cos positions: room for a 4:1 picture
        qk_norm="rms_norm",  # as SD 3.5: keeps attention logits tame when training from scratch
    )


def build_vae() -> AutoencoderKL:
    # bundled:shapes' VAE with one more downsampling block, likewise without attention so it
    # trains on crops.
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=LATENT_CHANNELS,
        down_block_types=("DownEncoderBlock2D",) * len(VAE_CHANNELS),
        up_block_types=("UpDecoderBlock2D",) * len(VAE_CHANNELS),
        block_out_channels=VAE_CHANNELS, layers_per_block=1,
        norm_num_groups=build.VAE_NORM_GROUPS, sample_size=NATIVE_SIZE,
        mid_block_add_attention=False)
    vae.register_to_config(shift_factor=0.0)  # SD 3 pipelines shift latents; set after training
    return vae


def build_scheduler() -> FlowMatchEulerDiscreteScheduler:
    # No shift: SD 3 shifts its schedule towards noise for 1024² images; at 64² none is needed.
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)


def build_pipeline() -> StableDiffusion3Pipeline:
    tokenizer = build.build_tokenizer()
    build.check_tokenizer(tokenizer)
    torch.manual_seed(SEED)
    text_encoder = build_text_encoder(tokenizer)
    torch.manual_seed(SEED + 1)
    text_encoder_2 = build_text_encoder(tokenizer)
    torch.manual_seed(SEED + 2)
    vae = build_vae()
    torch.manual_seed(SEED + 3)
    transformer = build_transformer()
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=build_scheduler(), vae=vae,
        text_encoder=text_encoder, tokenizer=tokenizer,
        text_encoder_2=text_encoder_2, tokenizer_2=build.build_tokenizer(),
        text_encoder_3=None, tokenizer_3=None,
    )


def canvas_settings() -> dict:
    return {
        "native_size": NATIVE_SIZE,
        "size_multiple": 2 ** (len(VAE_CHANNELS) - 1) * PATCH,
        "default_steps": 20,
        "default_guidance": 5.0,
        "min_output_size": 256,
        "call": CALL_OPTIONS,
    }


def save(pipe: StableDiffusion3Pipeline, folder: Path) -> None:
    pipe.save_pretrained(folder, safe_serialization=True)
    build.write_bpe_files(folder / "tokenizer")
    build.write_bpe_files(folder / "tokenizer_2")
    build.write_json(folder / "canvas.json", canvas_settings())


def write_folder(pipe: StableDiffusion3Pipeline, model_dir: Path = SD3_MODEL_DIR) -> Path:
    return build.write_folder(pipe, model_dir, save)


def main() -> None:
    print(f"wrote {write_folder(build_pipeline())}")


if __name__ == "__main__":
    main()
