"""Create the `bundled:shapes` diffusers folder at `engine/shapes/model/`.

Run with `python -m engine.shapes.build`. The weights are randomly initialised from a fixed seed,
so two runs give byte-identical files. `python -m engine.shapes.train` starts from the same
architecture, trains it and writes the committed folder. The architecture is
sized for 64×64 pictures of one coloured shape on a coloured background.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from engine.shapes import MODEL_DIR

SEED = 0
NATIVE_SIZE = 64
LATENT_CHANNELS = 4

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
END_OF_WORD = "</w>"
LETTERS = "abcdefghijklmnopqrstuvwxyz"

SHAPES = ("circle", "square", "triangle")
COLOURS = (
    "red", "orange", "yellow", "green", "blue", "purple",
    "black", "white", "grey", "gray",
)  # fmt: skip
FILLER_WORDS = ("a", "an", "on", "the", "background", "shape")
VOCAB_WORDS = FILLER_WORDS + SHAPES + COLOURS

TEXT_HIDDEN_SIZE = 64
TEXT_MAX_LENGTH = 16  # bos + eos + 14 words: far more than any shapes prompt needs

VAE_CHANNELS = (16, 32, 64)
UNET_CHANNELS = (32, 64, 64)
# Few, wide groups: GroupNorm removes each group's mean, and in flat-coloured pictures the
# colour lives in those means.
VAE_NORM_GROUPS = 4
UNET_NORM_GROUPS = 8


def word_symbols(word: str) -> list[str]:
    """The initial BPE symbols of `word`: its characters, the last one marked as word end."""
    return [*word[:-1], word[-1] + END_OF_WORD]


def build_bpe(words: tuple[str, ...]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Vocabulary and merges under which every word in `words` is a single token.

    Each word gets a chain of merges growing it from its first character to `word</w>`. Longer
    words go first so their chains outrank the opening pair of a shorter word found inside them
    (the "gr" of "green" in "background", the "re" of "red" in "green"); `check_tokenizer`
    verifies the outcome.
    """
    tokens = [*LETTERS, *(letter + END_OF_WORD for letter in LETTERS)]
    merges: list[tuple[str, str]] = []
    for word in sorted(set(words), key=lambda w: (-len(w), w)):
        symbols = word_symbols(word)
        prefix = symbols[0]
        for symbol in symbols[1:]:
            if (prefix, symbol) not in merges:
                merges.append((prefix, symbol))
                tokens.append(prefix + symbol)
            prefix += symbol
    tokens += [BOS_TOKEN, EOS_TOKEN]
    return {token: index for index, token in enumerate(tokens)}, merges


def build_tokenizer() -> CLIPTokenizer:
    vocab, merges = build_bpe(VOCAB_WORDS)
    return CLIPTokenizer(
        vocab=vocab,
        merges=merges,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        model_max_length=TEXT_MAX_LENGTH,
    )


def check_tokenizer(tokenizer: CLIPTokenizer) -> None:
    """Fail unless every vocabulary word is one token and a sample prompt tokenizes per word."""
    for word in VOCAB_WORDS:
        pieces = tokenizer.tokenize(word)
        if pieces != [word + END_OF_WORD]:
            raise RuntimeError(f"{word!r} tokenizes to {pieces}, not one token")
    prompt = "a red circle on a blue background"
    ids = tokenizer(prompt).input_ids
    expected = [tokenizer.bos_token_id]
    expected += [tokenizer.convert_tokens_to_ids(w + END_OF_WORD) for w in prompt.split()]
    expected += [tokenizer.eos_token_id]
    if ids != expected:
        raise RuntimeError(f"{prompt!r} tokenizes to {ids}, expected {expected}")


def text_encoder_config(tokenizer: CLIPTokenizer, layers: int = 2) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=TEXT_HIDDEN_SIZE,
        intermediate_size=4 * TEXT_HIDDEN_SIZE,
        projection_dim=TEXT_HIDDEN_SIZE,
        num_hidden_layers=layers,
        num_attention_heads=4,
        max_position_embeddings=TEXT_MAX_LENGTH,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def build_text_encoder(tokenizer: CLIPTokenizer) -> CLIPTextModel:
    return CLIPTextModel(text_encoder_config(tokenizer))


def build_vae() -> AutoencoderKL:
    # Three blocks mean two downsamples: 64×64 pixels -> 16×16 latents.
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(VAE_CHANNELS),
        up_block_types=("UpDecoderBlock2D",) * len(VAE_CHANNELS),
        block_out_channels=VAE_CHANNELS,
        layers_per_block=1,
        latent_channels=LATENT_CHANNELS,
        norm_num_groups=VAE_NORM_GROUPS,
        sample_size=NATIVE_SIZE,
        # Without attention the VAE is purely convolutional, so it can train on small crops.
        mid_block_add_attention=False,
    )


def build_unet() -> UNet2DConditionModel:
    # Plain convolutions at 16×16, cross-attention at 8×8, 4×4 and in the middle block.
    # diffusers reads `attention_head_dim` as the number of heads (a legacy naming quirk):
    # 2 heads of 32 channels each.
    return UNet2DConditionModel(
        sample_size=NATIVE_SIZE // 4,
        in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=UNET_CHANNELS,
        layers_per_block=1,
        norm_num_groups=UNET_NORM_GROUPS,
        cross_attention_dim=TEXT_HIDDEN_SIZE,
        attention_head_dim=2,
        use_linear_projection=True,
    )


def build_scheduler() -> DPMSolverMultistepScheduler:
    # The Stable Diffusion 1.x noise schedule; training must use the same betas.
    # steps_offset=1 only keeps the pipeline from flagging the config as outdated.
    return DPMSolverMultistepScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
        algorithm_type="dpmsolver++",
        solver_order=2,
        timestep_spacing="linspace",
        steps_offset=1,
    )


def size_multiple(vae: AutoencoderKL, unet: UNet2DConditionModel) -> int:
    """The side lengths the model accepts are multiples of this many pixels."""
    vae_factor = 2 ** (len(vae.config.block_out_channels) - 1)
    unet_downsamples = len(unet.config.down_block_types) - 1  # the last block keeps its size
    return vae_factor * 2**unet_downsamples


def canvas_settings(pipe: StableDiffusionPipeline) -> dict[str, int | float]:
    """The per-model settings Magic Canvas reads from canvas.json."""
    return {
        "native_size": NATIVE_SIZE,
        "size_multiple": size_multiple(pipe.vae, pipe.unet),
        "default_steps": 20,
        "default_guidance": 5.0,
        "min_output_size": 256,
    }


def seeded(seed: int) -> torch.Generator:
    """Reset torch's global RNG, which diffusers and transformers use to initialise weights."""
    return torch.manual_seed(seed)


def build_pipeline() -> StableDiffusionPipeline:
    tokenizer = build_tokenizer()
    check_tokenizer(tokenizer)
    # One seed per component, so resizing one part leaves the others' weights unchanged.
    seeded(SEED)
    text_encoder = build_text_encoder(tokenizer)
    seeded(SEED + 1)
    vae = build_vae()
    seeded(SEED + 2)
    unet = build_unet()
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=build_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def write_json(path: Path, data: object) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def write_bpe_files(tokenizer_dir: Path) -> None:
    """vocab.json and merges.txt, the classic CLIP tokenizer files.

    transformers 5 saves only tokenizer.json; these keep the folder readable by tokenizers that
    are built from the BPE files (transformers 4's slow CLIPTokenizer among them).
    """
    vocab, merges = build_bpe(VOCAB_WORDS)
    write_json(tokenizer_dir / "vocab.json", vocab)
    lines = ["#version: 0.2", *(f"{left} {right}" for left, right in merges)]
    (tokenizer_dir / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


def save(pipe: StableDiffusionPipeline, folder: Path) -> None:
    pipe.save_pretrained(folder, safe_serialization=True)
    write_bpe_files(folder / "tokenizer")
    write_json(folder / "canvas.json", canvas_settings(pipe))


def write_folder(pipe: DiffusionPipeline, model_dir: Path = MODEL_DIR,
                 save: Callable[[DiffusionPipeline, Path], None] = save) -> Path:
    """Write `pipe` with `save` as the model folder `model_dir`, replacing any earlier one."""
    # Build next to the target and swap it in, so a failed run leaves no half-written folder.
    staging = model_dir.with_name(f".{model_dir.name}-staging")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        save(pipe, staging)
        shutil.rmtree(model_dir, ignore_errors=True)
        staging.rename(model_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return model_dir


def build(model_dir: Path = MODEL_DIR) -> Path:
    """Write the untrained model folder to `model_dir`, replacing any earlier build."""
    return write_folder(build_pipeline(), model_dir)


def main() -> None:
    folder = build()
    print(f"wrote {folder}")


if __name__ == "__main__":
    main()
