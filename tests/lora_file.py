"""A LoRA file for the bundled model, written without training: random low-rank updates of
the UNet's attention projections, in diffusers' layout (`unet.<module>.lora_A/lora_B.weight`,
what /retrain saves). For tests that need a LoRA by name that visibly changes the picture but
not the time /retrain takes; tests/test_loras.py makes one with /retrain."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import save_file

from engine.shapes import MODEL_DIR

PROJECTIONS = ("to_q", "to_k", "to_v", "to_out.0")


def write_random_lora(out: Path, rank: int = 4, strength: float = 1.0, seed: int = 0) -> Path:
    unet = UNet2DConditionModel.from_pretrained(MODEL_DIR / "unet")
    generator = torch.Generator().manual_seed(seed)
    weights: dict[str, torch.Tensor] = {}
    for name, module in unet.named_modules():
        if not isinstance(module, torch.nn.Linear) or not name.endswith(PROJECTIONS):
            continue
        down = torch.randn(rank, module.in_features, generator=generator)
        up = torch.randn(module.out_features, rank, generator=generator)
        weights[f"unet.{name}.lora_A.weight"] = down / math.sqrt(module.in_features)
        weights[f"unet.{name}.lora_B.weight"] = up * strength / math.sqrt(rank)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(out))
    return out
