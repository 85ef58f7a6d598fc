"""Train the bundled shapes model from scratch on pictures it draws, and write its folder.

Run with `python -m engine.shapes.train [--seed N] [--out DIR]` (about 35 minutes on one CPU
thread). Stages: the VAE on 32-pixel crops of freshly drawn pictures; then 16384 new pictures
are drawn and encoded once, and the text encoder and UNet learn together on their latents, each
step with new captions that name some or all of what is drawn. Single-threaded and seeded, so a
given seed gives the same weights on a given machine.
"""

from __future__ import annotations

import argparse
import copy
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline
from tqdm import tqdm

from engine.shapes import MODEL_DIR, build, draw


@dataclass(frozen=True)
class Budget:
    vae_steps: int = 1200
    vae_batch: int = 32
    vae_crop: int = 32  # the VAE is convolutional: it learns on crops, 4x cheaper than 64x64
    latent_pictures: int = 16384
    unet_steps: int = 3000
    unet_batch: int = 64
    lr: float = 1e-3
    warmup: int = 100
    caption_dropout: float = 0.1
    ema_decay: float = 0.995
    snr_gamma: float = 5.0


def pictures(rng: np.random.Generator, count: int) -> tuple[torch.Tensor, list[draw.Scene]]:
    """`count` random scenes and their pictures as a float tensor in [-1, 1], NCHW."""
    scenes = [draw.random_scene(rng) for _ in range(count)]
    pixels = np.stack([np.asarray(draw.draw(scene)) for scene in scenes])
    return to_tensor(pixels), scenes


def to_tensor(pixels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1


def cosine_lr(step: int, total: int, warmup: int) -> float:
    """The learning-rate multiplier: linear warm-up, then cosine decay to zero."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def random_crops(images: torch.Tensor, crop: int, rng: np.random.Generator) -> torch.Tensor:
    size = images.shape[-1]
    out = []
    for image in images:
        y, x = rng.integers(0, size - crop + 1, size=2)
        out.append(image[:, y : y + crop, x : x + crop])
    return torch.stack(out)


def train_vae(vae: AutoencoderKL, budget: Budget, rng: np.random.Generator) -> None:
    optimizer = torch.optim.AdamW(vae.parameters(), lr=budget.lr, weight_decay=0.0)
    vae.train()
    bar = tqdm(range(budget.vae_steps), desc="VAE", unit="step")
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = budget.lr * cosine_lr(step, budget.vae_steps, budget.warmup)
        images, _ = pictures(rng, budget.vae_batch)
        images = random_crops(images, budget.vae_crop, rng)
        posterior = vae.encode(images).latent_dist
        decoded = vae.decode(posterior.sample()).sample
        recon = F.l1_loss(decoded, images) + F.mse_loss(decoded, images)
        loss = recon + 1e-6 * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 20 == 0:
            bar.set_postfix(recon=f"{recon.item():.4f}")
    vae.eval()


@torch.no_grad()
def encode_pictures(
    vae: AutoencoderKL, budget: Budget, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor, list[draw.Scene]]:
    """Posterior means and stds of `latent_pictures` drawn pictures, with their scenes."""
    means, stds, scenes = [], [], []
    chunk = 256
    for _ in tqdm(range(budget.latent_pictures // chunk), desc="encode", unit="chunk"):
        images, chunk_scenes = pictures(rng, chunk)
        posterior = vae.encode(images).latent_dist
        means.append(posterior.mean)
        stds.append(posterior.std)
        scenes += chunk_scenes
    return torch.cat(means), torch.cat(stds), scenes


def noise_scheduler(pipe: StableDiffusionPipeline) -> DDPMScheduler:
    """A training scheduler with the exact noise schedule of the pipeline's sampler."""
    return DDPMScheduler.from_config(pipe.scheduler.config)


def encode_text(pipe: StableDiffusionPipeline, captions: list[str]) -> torch.Tensor:
    # Tokenized as StableDiffusionPipeline does: padded to the full length, no attention mask.
    ids = pipe.tokenizer(
        captions,
        padding="max_length",
        max_length=pipe.tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids
    return pipe.text_encoder(ids)[0]


def snr_weights(scheduler: DDPMScheduler, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR loss weights for epsilon prediction (Hang et al. 2023): faster convergence."""
    alphas = scheduler.alphas_cumprod[timesteps]
    snr = alphas / (1 - alphas)
    return torch.clamp(snr, max=gamma) / snr


def ema_update(average: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    with torch.no_grad():
        for mean, param in zip(average.parameters(), model.parameters(), strict=True):
            mean.lerp_(param, 1 - decay)


def batches(count: int, batch: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Shuffled epochs of indices, forever."""
    while True:
        order = rng.permutation(count)
        for start in range(0, count - batch + 1, batch):
            yield order[start : start + batch]


def training_batch(
    latents: tuple[torch.Tensor, torch.Tensor, list[draw.Scene]],
    index: np.ndarray,
    scale: float,
    budget: Budget,
    rng: np.random.Generator,
) -> tuple[torch.Tensor, list[str]]:
    """Scaled latents drawn from the posteriors of pictures `index`, and a caption for each
    (empty for a share of them, which teaches the unconditional model that guidance needs)."""
    means, stds, scenes = latents
    idx = torch.from_numpy(index)
    clean = (means[idx] + stds[idx] * torch.randn(means[idx].shape)) * scale
    captions = [
        "" if rng.random() < budget.caption_dropout else draw.caption(scenes[i], rng) for i in index
    ]
    return clean, captions


def denoising_loss(
    pipe: StableDiffusionPipeline,
    scheduler: DDPMScheduler,
    clean: torch.Tensor,
    captions: list[str],
    snr_gamma: float,
) -> torch.Tensor:
    """Min-SNR weighted epsilon-prediction loss at random timesteps."""
    noise = torch.randn(clean.shape)
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (len(captions),))
    noisy = scheduler.add_noise(clean, noise, timesteps)
    predicted = pipe.unet(noisy, timesteps, encoder_hidden_states=encode_text(pipe, captions))
    per_sample = (predicted.sample - noise).pow(2).mean(dim=(1, 2, 3))
    return (per_sample * snr_weights(scheduler, timesteps, snr_gamma)).mean()


def write_snapshot(
    pipe: StableDiffusionPipeline,
    unet: torch.nn.Module,
    text_encoder: torch.nn.Module,
    folder: Path,
) -> None:
    parts = {**pipe.components, "unet": unet, "text_encoder": text_encoder}
    build.write_folder(StableDiffusionPipeline(**parts, requires_safety_checker=False), folder)


def train_denoiser(
    pipe: StableDiffusionPipeline,
    latents: tuple[torch.Tensor, torch.Tensor, list[draw.Scene]],
    budget: Budget,
    rng: np.random.Generator,
    snapshots: Path | None = None,
) -> None:
    """Text encoder and UNet together; leaves their EMA weights in `pipe`.

    With `snapshots`, the EMA model is also written there every 500 steps, to watch progress.
    """
    scale = pipe.vae.config.scaling_factor
    scheduler = noise_scheduler(pipe)
    unet, text_encoder = pipe.unet, pipe.text_encoder
    params = [*unet.parameters(), *text_encoder.parameters()]
    optimizer = torch.optim.AdamW(params, lr=budget.lr, weight_decay=0.01)
    ema_unet, ema_text = copy.deepcopy(unet), copy.deepcopy(text_encoder)
    unet.train()
    text_encoder.train()
    indices = batches(len(latents[2]), budget.unet_batch, rng)
    bar = tqdm(range(budget.unet_steps), desc="UNet", unit="step")
    running = 0.0
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = budget.lr * cosine_lr(step, budget.unet_steps, budget.warmup)
        clean, captions = training_batch(latents, next(indices), scale, budget, rng)
        loss = denoising_loss(pipe, scheduler, clean, captions, budget.snr_gamma)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        ema_update(ema_unet, unet, budget.ema_decay)
        ema_update(ema_text, text_encoder, budget.ema_decay)
        running = 0.98 * running + 0.02 * loss.item() if step else loss.item()
        if step % 20 == 0:
            bar.set_postfix(loss=f"{running:.4f}")
        if snapshots and (step + 1) % 500 == 0:
            write_snapshot(pipe, ema_unet, ema_text, snapshots / f"step{step + 1}")
    unet.load_state_dict(ema_unet.state_dict())
    text_encoder.load_state_dict(ema_text.state_dict())
    unet.eval()
    text_encoder.eval()


@torch.no_grad()
def latent_std(vae: AutoencoderKL, rng: np.random.Generator, count: int = 512) -> float:
    images, _ = pictures(rng, count)
    return vae.encode(images).latent_dist.sample().std().item()


def train(
    seed: int = 0, budget: Budget | None = None, snapshots: Path | None = None
) -> StableDiffusionPipeline:
    budget = budget or Budget()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    pipe = build.build_pipeline()
    train_vae(pipe.vae, budget, rng)
    pipe.vae.register_to_config(scaling_factor=round(1 / latent_std(pipe.vae, rng), 5))
    latents = encode_pictures(pipe.vae, budget, rng)
    train_denoiser(pipe, latents, budget, rng, snapshots)
    # Tokenizing for training switched on padding in the fast tokenizer; don't save that.
    pipe.tokenizer.backend_tokenizer.no_padding()
    pipe.tokenizer.backend_tokenizer.no_truncation()
    return pipe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=MODEL_DIR)
    parser.add_argument("--unet-steps", type=int, default=Budget.unet_steps)
    parser.add_argument("--vae-steps", type=int, default=Budget.vae_steps)
    parser.add_argument("--snapshots", type=Path, help="also write the model here as it trains")
    args = parser.parse_args()
    # One thread: deterministic, and far faster than two threads on a shared 2-core machine.
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    started = time.monotonic()
    budget = Budget(unet_steps=args.unet_steps, vae_steps=args.vae_steps)
    pipe = train(args.seed, budget, args.snapshots)
    build.write_folder(pipe, args.out)
    print(f"wrote {args.out} in {(time.monotonic() - started) / 60:.1f} min")


if __name__ == "__main__":
    main()
