"""An ESRGAN-family upscaling model file for tests of `engine.upscaler`'s spandrel path: a
Real-ESRGAN RRDBNet (BasicSR's key layout, as RealESRGAN_x4plus.pth has it) at a toy width,
whose weights enlarge by nearest neighbour. The trunk's residual blocks are random, but the
convolution after them is zero, so the trunk passes its input on; every other convolution
copies its channels. A test can then tell the upscaler's work from a hires fix exactly: each
pixel of the source becomes a scale × scale block."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from safetensors.torch import save_file

FILTERS = 8  # num_feat; Real-ESRGAN's is 64
GROWTH = 32  # num_grow_ch, the one spandrel's RRDBNet builds


def write_nearest_esrgan(path: Path, scale: int = 4) -> Path:
    generator = torch.Generator().manual_seed(0)
    weights: dict[str, torch.Tensor] = {}

    def conv(name: str, out: int, into: int, copy: bool = True) -> None:
        if copy:
            weight = torch.zeros(out, into, 3, 3)
            for channel in range(min(out, into)):
                weight[channel, channel, 1, 1] = 1.0
        else:
            weight = torch.zeros(out, into, 3, 3) if name == "conv_body" else (
                torch.randn(out, into, 3, 3, generator=generator) * 0.05)
        weights[f"{name}.weight"], weights[f"{name}.bias"] = weight, torch.zeros(out)

    conv("conv_first", FILTERS, 3)
    for dense in (1, 2, 3):
        for layer in range(1, 6):
            into = FILTERS + (layer - 1) * GROWTH
            conv(f"body.0.rdb{dense}.conv{layer}", FILTERS if layer == 5 else GROWTH, into,
                 copy=False)
    conv("conv_body", FILTERS, FILTERS, copy=False)
    for up in range(1, int(math.log2(scale)) + 1):
        conv(f"conv_up{up}", FILTERS, FILTERS)
    conv("conv_hr", FILTERS, FILTERS)
    conv("conv_last", 3, FILTERS)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(path))
    return path
