"""Write a diffusers Stable Diffusion 1.x folder as one checkpoint in the original (LDM /
CompVis) layout, as model sites share them, for tests of loading such a file.

Each component's keys are renamed by prefix: a diffusers block (`down_blocks.1.resnets.0.`)
becomes its LDM block (`input_blocks.4.0.`), and inside ResNet and VAE attention blocks the
layer names change too. The block numbering follows the component's config.json.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
               "norm2": "out_layers.0", "conv2": "out_layers.3",
               "conv_shortcut": "skip_connection"}
VAE_RESNET = {"conv_shortcut": "nin_shortcut"}
VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v",
                 "to_out.0": "proj_out"}

Blocks = dict[str, tuple[str, dict[str, str]]]  # diffusers prefix: (LDM prefix, layer names)


def unet_blocks(config: dict) -> Blocks:
    """UNet2DConditionModel blocks as LDM numbers them: input_blocks.0 is conv_in, then each
    down block's layers and its downsampler; each up block has one layer more, its upsampler
    inside the last one, after the attention if the block has one."""
    per = config["layers_per_block"]
    blocks: Blocks = {
        "conv_in.": ("input_blocks.0.0.", {}),
        "time_embedding.linear_1.": ("time_embed.0.", {}),
        "time_embedding.linear_2.": ("time_embed.2.", {}),
        "mid_block.resnets.0.": ("middle_block.0.", UNET_RESNET),
        "mid_block.attentions.0.": ("middle_block.1.", {}),
        "mid_block.resnets.1.": ("middle_block.2.", UNET_RESNET),
        "conv_norm_out.": ("out.0.", {}),
        "conv_out.": ("out.2.", {}),
    }
    for block, kind in enumerate(config["up_block_types"]):  # as many as down blocks
        for layer in range(per):
            down = 1 + block * (per + 1) + layer
            blocks[f"down_blocks.{block}.resnets.{layer}."] = (f"input_blocks.{down}.0.",
                                                               UNET_RESNET)
            blocks[f"down_blocks.{block}.attentions.{layer}."] = (f"input_blocks.{down}.1.", {})
        blocks[f"down_blocks.{block}.downsamplers.0.conv."] = (
            f"input_blocks.{(block + 1) * (per + 1)}.0.op.", {})
        for layer in range(per + 1):
            up = block * (per + 1) + layer
            blocks[f"up_blocks.{block}.resnets.{layer}."] = (f"output_blocks.{up}.0.",
                                                             UNET_RESNET)
            blocks[f"up_blocks.{block}.attentions.{layer}."] = (f"output_blocks.{up}.1.", {})
        upsampler = 2 if kind.startswith("CrossAttn") else 1
        blocks[f"up_blocks.{block}.upsamplers.0."] = (
            f"output_blocks.{block * (per + 1) + per}.{upsampler}.", {})
    return blocks


def vae_blocks(config: dict) -> Blocks:
    """AutoencoderKL blocks: LDM counts the decoder's up blocks from the bottom, diffusers from
    the top; layers keep their numbers."""
    count = len(config["block_out_channels"])
    blocks: Blocks = {"encoder.conv_norm_out.": ("encoder.norm_out.", {}),
                      "decoder.conv_norm_out.": ("decoder.norm_out.", {})}
    for part in ("encoder", "decoder"):
        blocks[f"{part}.mid_block.resnets.0."] = (f"{part}.mid.block_1.", VAE_RESNET)
        blocks[f"{part}.mid_block.resnets.1."] = (f"{part}.mid.block_2.", VAE_RESNET)
        blocks[f"{part}.mid_block.attentions.0."] = (f"{part}.mid.attn_1.", VAE_ATTENTION)
    for block in range(count):
        blocks[f"encoder.down_blocks.{block}.resnets."] = (f"encoder.down.{block}.block.",
                                                           VAE_RESNET)
        blocks[f"encoder.down_blocks.{block}.downsamplers.0."] = (
            f"encoder.down.{block}.downsample.", {})
        level = count - 1 - block
        blocks[f"decoder.up_blocks.{block}.resnets."] = (f"decoder.up.{level}.block.",
                                                         VAE_RESNET)
        blocks[f"decoder.up_blocks.{block}.upsamplers.0."] = (f"decoder.up.{level}.upsample.",
                                                              {})
    return blocks


def renamed(key: str, blocks: Blocks) -> str:
    """`key` in LDM names; a key in no block (conv_in, quant_conv, …) keeps its name."""
    for prefix, (ldm_prefix, layers) in blocks.items():
        if key.startswith(prefix):
            rest = "." + key.removeprefix(prefix)
            for diffusers, ldm in layers.items():
                rest = rest.replace(f".{diffusers}.", f".{ldm}.")
            return ldm_prefix + rest[1:]
    return key


def component(folder: Path, weights: str) -> tuple[dict[str, torch.Tensor], dict]:
    return load_file(folder / weights), json.loads((folder / "config.json").read_text())


def write_original_checkpoint(folder: Path, out: Path) -> Path:
    """The StableDiffusionPipeline in `folder` as one original-layout safetensors file."""
    unet, unet_config = component(folder / "unet", "diffusion_pytorch_model.safetensors")
    vae, vae_config = component(folder / "vae", "diffusion_pytorch_model.safetensors")
    text, _ = component(folder / "text_encoder", "model.safetensors")
    checkpoint = {"model.diffusion_model." + renamed(key, unet_blocks(unet_config)): value
                  for key, value in unet.items()}
    for key, value in vae.items():
        if ".mid_block.attentions." in key and value.ndim == 2:  # LDM's are 1x1 convolutions
            value = value[:, :, None, None]
        checkpoint["first_stage_model." + renamed(key, vae_blocks(vae_config))] = value
    for key, value in text.items():  # transformers 5 saves CLIPTextModel without `text_model.`
        inner = key if key.startswith("text_model.") else "text_model." + key
        checkpoint["cond_stage_model.transformer." + inner] = value
    save_file({key: value.contiguous() for key, value in checkpoint.items()}, out)
    return out
