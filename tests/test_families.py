"""Model families: each tiny family is recognised and generates through the engine, the
defaults are each family's, and the trainer's targets are pinned against the formulas of
diffusers' training scripts, computed here from the schedules themselves."""

from __future__ import annotations

import queue
from pathlib import Path

import pytest
import torch
from diffusers import (
    AutoencoderKL,
    DPMSolverMultistepScheduler,
    FluxPipeline,
    PixArtAlphaPipeline,
    PixArtTransformer2DModel,
)
from PIL import Image
from transformers import T5EncoderModel

from engine import protocol
from engine.blobs import LocalBlobs
from engine.families import RANDOM_MODELS, OtherFamily, build_random, family_of
from engine.families.parts import clip_tokenizer, tiny_t5, vae
from engine.lora import Adapters, LoraTrainer
from engine.params import Params
from engine.pipelines import absent_components, fit_size, load
from engine.worker import Engine

TINY = {  # spec: (family, denoiser class)
    "random:sd15-tiny": ("sd15", "UNet2DConditionModel"),
    "random:sd2-tiny": ("sd2", "UNet2DConditionModel"),
    "random:sdxl-tiny": ("sdxl", "UNet2DConditionModel"),
    "random:sd3-tiny": ("sd3", "SD3Transformer2DModel"),
    "random:flux-tiny": ("flux", "FluxTransformer2DModel"),
    "random:flux-schnell-tiny": ("flux", "FluxTransformer2DModel"),
}


def job(job_id: int, kind: str, prompt: str, **given) -> protocol.Job:
    return protocol.Job(job_id, Params(kind=kind, prompt=prompt, **given))


def picture(blobs: LocalBlobs, path: Path) -> str:
    """A picture saved at `path`, put in the blob store: its key."""
    return blobs.put(path.read_bytes(), ".png")


def run(pipes, blobs: LocalBlobs, *jobs: protocol.Job) -> list:
    sent: list = []
    Engine(pipes, blobs, 4, sent.append, queue.Queue()).run_all(list(jobs))
    outcomes = [m for m in sent if isinstance(m, protocol.Result | protocol.Failed)]
    return sorted(outcomes, key=lambda m: m.job_id)


@pytest.mark.parametrize("spec", TINY)
def test_each_tiny_family_is_recognised_and_makes_every_kind_of_image(spec, tmp_path):
    pipes = load(spec, "cpu")
    family, denoiser = TINY[spec]
    assert pipes.family.name == family
    assert type(pipes.family.denoiser).__name__ == denoiser
    assert spec in RANDOM_MODELS and spec.removesuffix("-tiny") in RANDOM_MODELS
    Image.new("RGB", (40, 40), "red").save(tmp_path / "in.png")
    mask = Image.new("L", (40, 40), 0)
    mask.paste(255, (10, 10, 30, 30))
    mask.save(tmp_path / "mask.png")
    blobs = LocalBlobs(tmp_path / "blobs")
    source, hole = picture(blobs, tmp_path / "in.png"), picture(blobs, tmp_path / "mask.png")
    common = dict(prompt="a red circle", seed=3, steps=2)
    outcomes = run(pipes, blobs,
                   job(1, "txt2img", aspect=(2, 1), **common),
                   job(2, "img2img", image=source, **common),
                   job(3, "inpaint", image=source, mask=hole, **common),
                   job(4, "txt2img", negative="blue", cfg=3.0, **common))
    assert [type(m).__name__ for m in outcomes] == ["Result"] * 4, outcomes
    wide = Image.open(blobs.path(outcomes[0].images[0].blob))
    assert wide.size == fit_size((2, 1), pipes.settings) and wide.width > wide.height


def test_defaults_are_each_familys():
    settings = {spec: load(spec, "cpu").settings for spec in TINY}
    schnell, dev = settings["random:flux-schnell-tiny"], settings["random:flux-tiny"]
    assert (schnell.default_steps, schnell.default_guidance) == (4, 0.0)
    assert (dev.default_steps, dev.default_guidance) == (28, 3.5)
    sd3 = settings["random:sd3-tiny"]
    assert (sd3.default_steps, sd3.default_guidance) == (28, 4.5)
    assert all(s.native_size == 32 for s in settings.values())


def test_flux_sizes_are_multiples_of_16_pixels_with_its_real_vae():
    """FLUX packs 2×2 latents of an 8× VAE, so its grid is 16 pixels; its native size 1024."""
    tiny = build_random("random:flux-schnell-tiny")
    real_vae = vae(tiny=False, sample_size=1024, latent_channels=16)
    pipe = FluxPipeline(**{**tiny.components, "vae": real_vae})
    settings = family_of(pipe).settings()
    assert (settings.native_size, settings.size_multiple) == (1024, 16)
    assert fit_size((16, 9), settings) == (1360, 768)


def test_an_sd2_768_v_model_is_sd2_and_predicts_v():
    pipes = load("random:sd2-tiny", "cpu")
    assert pipes.family.label == "Stable Diffusion 2.x"
    assert pipes.family.prediction_type == "v_prediction"
    assert load("random:sd15-tiny", "cpu").family.prediction_type == "epsilon"


# ---- the training targets ---------------------------------------------------------------------

def alphas_cumprod_sd() -> torch.Tensor:
    """ᾱ of Stable Diffusion's scaled-linear schedule, from its definition."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, dim=0)


def noised(spec: str):
    family = load(spec, "cpu").family
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(6, 4 if family.name != "sd3" else 16, 8, 8, generator=generator)
    noise = torch.randn(latents.shape, generator=generator)
    return latents, noise, family.noised(latents, noise, generator)


def test_epsilon_models_learn_the_noise():
    latents, noise, step = noised("random:sd15-tiny")
    alpha = alphas_cumprod_sd()[step.timesteps].float().view(-1, 1, 1, 1)
    expected = alpha.sqrt() * latents + (1 - alpha).sqrt() * noise
    torch.testing.assert_close(step.noisy, expected, rtol=1e-4, atol=1e-5)
    assert torch.equal(step.target, noise)


def test_v_prediction_models_learn_the_velocity():
    latents, noise, step = noised("random:sd2-tiny")
    alpha = alphas_cumprod_sd()[step.timesteps].float().view(-1, 1, 1, 1)
    torch.testing.assert_close(step.target, alpha.sqrt() * noise - (1 - alpha).sqrt() * latents,
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("spec, timestep_scale", [("random:sd3-tiny", 1000),
                                                  ("random:flux-tiny", 1)])
def test_flow_matching_models_learn_noise_minus_data(spec, timestep_scale):
    latents, noise, step = noised(spec)
    # σ is the timestep over 1000 (SD 3's transformer takes σ·1000, FLUX's σ itself)
    sigma = (step.timesteps * 1000 / timestep_scale / 1000).view(-1, 1, 1, 1)
    assert ((sigma > 0) & (sigma <= 1)).all() and len(set(sigma.flatten().tolist())) > 1
    torch.testing.assert_close(step.noisy, (1 - sigma) * latents + sigma * noise,
                               rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(step.target, noise - latents)


# ---- the trainer on every family, and in float16 ----------------------------------------------

def train(pipes, folder: Path, steps: int = 3) -> LoraTrainer:
    Image.new("RGB", (32, 32), "purple").save(folder / "example.png")
    blobs = LocalBlobs(folder / "blobs")
    example = picture(blobs, folder / "example.png")
    examples = tuple(protocol.TrainExample(example, "a purple circle", 5.0) for _ in range(2))
    adapters = Adapters(pipes.family.denoiser, blobs)
    trainer = LoraTrainer(pipes, adapters, protocol.Train(
        1, "v1", (), examples, steps=steps, rank=4))
    while not trainer.done:
        trainer.run_slice(5)
    return trainer


@pytest.mark.parametrize("spec", [*TINY, "bundled:shapes", "bundled:shapes-sd3"])
def test_a_lora_trains_on_every_family_and_changes_its_images(spec, tmp_path):
    pipes = load(spec, "cpu")
    blobs = LocalBlobs(tmp_path / "blobs")
    purple = job(1, "txt2img", "a purple circle", seed=5, steps=2)
    before = Image.open(blobs.path(run(pipes, blobs, purple)[0].images[0].blob)).tobytes()
    trainer = train(pipes, tmp_path, steps=4)
    trainer.adapters.use("v1", (protocol.Adapter("v1", trainer.save()),))
    trainer.adapters.for_generation()
    after = Image.open(blobs.path(run(pipes, blobs, purple)[0].images[0].blob)).tobytes()
    assert torch.isfinite(torch.tensor(trainer.loss))
    assert before != after


def test_the_adapter_trains_in_float32_on_a_float16_model(tmp_path):
    pipes = load("random:sd15-tiny", "cpu", "float16")
    trainer = train(pipes, tmp_path)
    lora = {name: p for name, p in trainer.denoiser.named_parameters() if ".v1." in name}
    assert lora and all(p.dtype == torch.float32 for p in lora.values())
    frozen = [p for name, p in trainer.denoiser.named_parameters() if ".v1." not in name]
    assert all(p.dtype == torch.float16 for p in frozen)
    assert torch.isfinite(torch.tensor(trainer.loss))
    assert any(p.abs().sum() > 0 for name, p in lora.items() if "lora_B" in name)


# ---- a pipeline no family knows ---------------------------------------------------------------

def tiny_pixart() -> PixArtAlphaPipeline:
    torch.manual_seed(0)
    return PixArtAlphaPipeline(
        tokenizer=clip_tokenizer(16), text_encoder=T5EncoderModel(tiny_t5(32)),
        vae=AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
                          block_out_channels=(16, 32), norm_num_groups=8,
                          down_block_types=("DownEncoderBlock2D",) * 2,
                          up_block_types=("UpDecoderBlock2D",) * 2),
        transformer=PixArtTransformer2DModel(
            num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
            num_layers=1, cross_attention_dim=16, sample_size=32, patch_size=2,
            caption_channels=32, use_additional_conditions=False, norm_num_groups=8),
        scheduler=DPMSolverMultistepScheduler())


def test_a_pipeline_no_family_knows_still_generates_and_says_what_it_cannot_do(tmp_path):
    folder = tmp_path / "pixart"
    tiny_pixart().save_pretrained(folder)
    assert absent_components(folder) == {}
    pipes = load(str(folder), "cpu")
    assert isinstance(pipes.family, OtherFamily)
    assert pipes.img2img is None and pipes.inpaint is None
    Image.new("RGB", (32, 32), "red").save(tmp_path / "in.png")
    blobs = LocalBlobs(tmp_path / "blobs")
    made, vary = run(pipes, blobs,
                     job(1, "txt2img", "a red circle", seed=1, steps=2),
                     job(2, "img2img", "a red circle", seed=1, steps=2,
                         image=picture(blobs, tmp_path / "in.png")))
    assert isinstance(made, protocol.Result)
    assert vary.kind == "bad_request" and "cannot do /vary" in vary.error
    sent: list = []
    engine = Engine(pipes, blobs, 4, sent.append, queue.Queue())
    engine.start_training(protocol.Train(1, "v1", (), (), 3, 4))
    [refused] = sent
    assert isinstance(refused, protocol.TrainFailed)
    assert "/retrain is not supported for PixArtAlphaPipeline" in refused.error
