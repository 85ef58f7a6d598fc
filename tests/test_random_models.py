"""`random:sd15`: the real Stable Diffusion 1.5 architecture with random weights, loaded through
the engine's ordinary path (text-to-image, image-to-image and inpainting sharing weights)."""

from __future__ import annotations

import pytest
import torch

from engine.pipelines import fit_size, load


@pytest.mark.slow
def test_random_sd15_is_the_real_architecture_on_the_ordinary_path():
    pipes = load("random:sd15", "cpu")
    count = sum(p.numel() for p in pipes.text2img.unet.parameters())
    assert round(count / 1e6, 1) == 859.5  # SD 1.5's published UNet size
    assert pipes.img2img.unet is pipes.text2img.unet is pipes.inpaint.unet
    assert pipes.settings.native_size == 512
    assert fit_size((1, 1), pipes.settings) == (512, 512)
    image = pipes.text2img("a red circle", num_inference_steps=1, width=64, height=64,
                           generator=torch.Generator("cpu").manual_seed(0)).images[0]
    assert image.size == (64, 64)
