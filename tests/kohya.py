"""A LoRA in diffusers' layout rewritten the way kohya's sd-scripts (and A1111) save them, the
layout most LoRAs shared on model sites have: `lora_unet_<module path with underscores>`,
`lora_down`/`lora_up`, and each module's alpha (here its rank, so the scale stays 1)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def write_kohya_lora(diffusers_file: Path, out: Path) -> Path:
    converted: dict[str, torch.Tensor] = {}
    for key, value in load_file(diffusers_file).items():
        module, _, part = key.removeprefix("unet.").rpartition(".lora_")
        name = "lora_unet_" + module.replace(".", "_")
        down = part.startswith("A")
        converted[f"{name}.lora_{'down' if down else 'up'}.weight"] = value
        if down:
            converted[f"{name}.alpha"] = torch.tensor(float(value.shape[0]))
    save_file(converted, out)
    return out
