"""`random:<family>`: the real architectures with random weights. `random:sd15` is loaded through
the engine's ordinary path (text-to-image, image-to-image and inpainting sharing weights); every
family's is the published size."""

from __future__ import annotations

import pytest
import torch
from accelerate import init_empty_weights

from engine.families import build_random, family_of
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


# Denoiser parameters of each published architecture (SD 3.5 Medium's MMDiT-X; FLUX.1-dev
# with its guidance embedding, schnell without), counted on empty weights: no memory needed.
PUBLISHED_DENOISERS = {"random:sd15": 859.5, "random:sd2": 865.9, "random:sdxl": 2567.5,
                       "random:sd3": 2243.2, "random:flux": 11901.4,
                       "random:flux-schnell": 11891.2}


@pytest.mark.parametrize("spec", PUBLISHED_DENOISERS)
def test_every_full_random_model_has_the_published_size(spec):
    with init_empty_weights():
        pipe = build_random(spec)
    family = family_of(pipe)
    assert family.name == spec.removeprefix("random:").removesuffix("-schnell")
    count = sum(p.numel() for p in family.denoiser.parameters())
    assert round(count / 1e6, 1) == PUBLISHED_DENOISERS[spec]


def test_a_random_model_can_be_quantized_and_is_the_same_model_in_int8():
    """Quantized while it loads (diffusers' way), so a GPU can measure random:flux in 8-bit
    and 4-bit: here torchao's int8 weights, which run on the CPU."""
    plain = build_random("random:flux-tiny")
    pipes = load("random:flux-tiny", "cpu", quantize="int8-weights")
    quantized = dict(pipes.text2img.transformer.named_modules())
    linears = {name: module for name, module in plain.transformer.named_modules()
               if isinstance(module, torch.nn.Linear)}
    assert linears
    for name, module in linears.items():
        weight = quantized[name].weight
        assert type(weight).__name__ == "Int8Tensor", name
        scale = module.weight.abs().amax()
        assert (weight.dequantize() - module.weight).abs().amax() <= scale / 100, name
    assert torch.equal(pipes.text2img.vae.decoder.conv_in.weight, plain.vae.decoder.conv_in.weight)
    width, height = fit_size((1, 1), pipes.settings)
    image = pipes.text2img("a red circle", num_inference_steps=1, width=width, height=height,
                           generator=torch.Generator("cpu").manual_seed(0)).images[0]
    assert image.size == (width, height)
