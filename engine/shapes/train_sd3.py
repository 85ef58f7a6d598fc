"""Train `bundled:shapes-sd3` from scratch on pictures it draws, and write its folder.

Run with `python -m engine.shapes.train_sd3 [--seed N] [--out DIR]` (about an hour on one CPU
thread). The same stages and data as `engine.shapes.train`: the VAE on crops of drawn
pictures, then the text encoders and the MMDiT transformer together on encoded latents, with
rectified-flow matching as diffusers' SD 3 training script does it (noisy = (1 − σ)·x + σ·ε,
the model predicts ε − x), but with σ drawn uniformly: SD 3's logit-normal density left the
high-noise steps, where a picture's layout is decided, undertrained at this size.
"""

from __future__ import annotations

import argparse
import copy
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline
from diffusers.training_utils import compute_density_for_timestep_sampling
from tqdm import tqdm

from engine.shapes import SD3_MODEL_DIR, build_sd3
from engine.shapes import train as sd_train


@dataclass(frozen=True)
class Budget(sd_train.Budget):
    unet_steps: int = 4000  # transformer steps; the name is the shared Budget's
    unet_batch: int = 48
    lr: float = 6e-4
    warmup: int = 200
    ema_decay: float = 0.998
    # How σ is drawn: "logit_normal" (SD 3's script) favours middle noise levels; "none"
    # (uniform) trains the high-noise steps, where a picture's layout is decided, as much.
    density: str = "none"


def encode_text(pipe: StableDiffusion3Pipeline, captions: list[str]
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt states and pooled projections, exactly as the pipeline makes them."""
    embeds, _, pooled, _ = pipe.encode_prompt(
        captions, None, None, device=torch.device("cpu"), do_classifier_free_guidance=False,
        **build_sd3.CALL_OPTIONS)
    return embeds, pooled


def flow_matching_loss(pipe: StableDiffusion3Pipeline, scheduler: FlowMatchEulerDiscreteScheduler,
                       clean: torch.Tensor, captions: list[str],
                       density: str = "none") -> torch.Tensor:
    noise = torch.randn(clean.shape)
    u = compute_density_for_timestep_sampling(density, len(captions), logit_mean=0.0,
                                              logit_std=1.0)
    indices = (u * scheduler.config.num_train_timesteps).long()
    timesteps = scheduler.timesteps[indices]
    sigmas = scheduler.sigmas[indices].view(-1, 1, 1, 1)
    noisy = (1 - sigmas) * clean + sigmas * noise
    embeds, pooled = encode_text(pipe, captions)
    predicted = pipe.transformer(hidden_states=noisy, timestep=timesteps,
                                 encoder_hidden_states=embeds, pooled_projections=pooled).sample
    return (predicted - (noise - clean)).pow(2).mean()


def write_snapshot(pipe: StableDiffusion3Pipeline, trained: dict[str, torch.nn.Module],
                   folder: Path) -> None:
    build_sd3.write_folder(StableDiffusion3Pipeline(**{**pipe.components, **trained}), folder)


def train_denoiser(pipe: StableDiffusion3Pipeline, latents, budget: Budget,
                   rng: np.random.Generator, snapshots: Path | None = None) -> None:
    """Text encoders and transformer together; leaves their EMA weights in `pipe`."""
    vae = pipe.vae.config
    means, stds, scenes = latents
    # SD 3's latents are shifted, then scaled: (z − shift) · scale.
    latents = (means - vae.shift_factor, stds, scenes)
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)
    models = {name: getattr(pipe, name)
              for name in ("transformer", "text_encoder", "text_encoder_2")}
    params = [p for model in models.values() for p in model.parameters()]
    optimizer = torch.optim.AdamW(params, lr=budget.lr, weight_decay=0.01)
    averages = {name: copy.deepcopy(model) for name, model in models.items()}
    for model in models.values():
        model.train()
    indices = sd_train.batches(len(scenes), budget.unet_batch, rng)
    bar = tqdm(range(budget.unet_steps), desc="MMDiT", unit="step")
    running = 0.0
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = budget.lr * sd_train.cosine_lr(step, budget.unet_steps, budget.warmup)
        clean, captions = sd_train.training_batch(latents, next(indices), vae.scaling_factor,
                                                  budget, rng)
        loss = flow_matching_loss(pipe, scheduler, clean, captions, budget.density)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        for name, model in models.items():
            sd_train.ema_update(averages[name], model, budget.ema_decay)
        running = 0.98 * running + 0.02 * loss.item() if step else loss.item()
        if step % 20 == 0:
            bar.set_postfix(loss=f"{running:.4f}")
        if snapshots and (step + 1) % 1000 == 0:
            write_snapshot(pipe, averages, snapshots / f"step{step + 1}")
    for name, model in models.items():
        model.load_state_dict(averages[name].state_dict())
        model.eval()


@torch.no_grad()
def latent_statistics(pipe: StableDiffusion3Pipeline, rng: np.random.Generator,
                      count: int = 512) -> tuple[float, float]:
    images, _ = sd_train.pictures(rng, count)
    sample = pipe.vae.encode(images).latent_dist.sample()
    return sample.mean().item(), sample.std().item()


def train(seed: int = 0, budget: Budget | None = None, snapshots: Path | None = None,
          resume: Path | None = None) -> StableDiffusion3Pipeline:
    """Train from scratch, or with `resume`, go on training the text encoders and transformer
    of a model this script wrote (its VAE kept as it is)."""
    budget = budget or Budget()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    if resume is None:
        pipe = build_sd3.build_pipeline()
        sd_train.train_vae(pipe.vae, budget, rng)
        mean, std = latent_statistics(pipe, rng)
        pipe.vae.register_to_config(shift_factor=round(mean, 5),
                                    scaling_factor=round(1 / std, 5))
    else:
        pipe = StableDiffusion3Pipeline.from_pretrained(resume, text_encoder_3=None,
                                                        tokenizer_3=None)
    latents = sd_train.encode_pictures(pipe.vae, budget, rng)
    train_denoiser(pipe, latents, budget, rng, snapshots)
    for tokenizer in (pipe.tokenizer, pipe.tokenizer_2):  # see engine.shapes.train.train
        tokenizer.backend_tokenizer.no_padding()
        tokenizer.backend_tokenizer.no_truncation()
    return pipe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=SD3_MODEL_DIR)
    parser.add_argument("--steps", type=int, default=Budget.unet_steps)
    parser.add_argument("--vae-steps", type=int, default=Budget.vae_steps)
    parser.add_argument("--snapshots", type=Path, help="also write the model here as it trains")
    parser.add_argument("--density", default=Budget.density, choices=["logit_normal", "none"],
                        help="how the noise level of each training example is drawn")
    parser.add_argument("--lr", type=float, default=Budget.lr)
    parser.add_argument("--resume", type=Path,
                        help="go on training a model folder this script wrote")
    args = parser.parse_args()
    torch.set_num_threads(1)  # deterministic, and fast on a shared 2-core machine
    torch.use_deterministic_algorithms(True)
    started = time.monotonic()
    budget = Budget(unet_steps=args.steps, vae_steps=args.vae_steps, density=args.density,
                    lr=args.lr)
    pipe = train(args.seed, budget, args.snapshots, args.resume)
    build_sd3.write_folder(pipe, args.out)
    print(f"wrote {args.out} in {(time.monotonic() - started) / 60:.1f} min")


if __name__ == "__main__":
    main()

