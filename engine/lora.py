"""Model versions as LoRAs on the UNet (peft, through diffusers' own adapter support).

A version is one LoRA trained on top of its parent's chain; using a version stacks its whole
chain on the base model. Training runs in slices, so the engine can generate between them:
the training adapter lives in the same UNet, and each generation batch activates only the
active version's chain.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DConditionModel
from peft import LoraConfig
from PIL import Image

from engine import protocol
from engine.pipelines import Pipelines

log = logging.getLogger(__name__)

LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
BATCH_SIZE = 8


class Adapters:
    """Which LoRAs are loaded into the UNet, and which chain generation uses."""

    def __init__(self, unet: UNet2DConditionModel) -> None:
        self.unet = unet
        self.loaded: set[str] = set()
        self.active: tuple[str, ...] = ()
        self.version = "base"

    def load(self, chain: tuple[protocol.Adapter, ...]) -> None:
        for adapter in chain:
            if adapter.version not in self.loaded:
                self.unet.load_lora_adapter(adapter.path, adapter_name=adapter.version,
                                            prefix=None, use_safetensors=True)
                self.loaded.add(adapter.version)

    def use(self, version: str, chain: tuple[protocol.Adapter, ...]) -> None:
        """Make `version` (its chain of LoRAs) the one generation uses."""
        self.load(chain)
        self.active = tuple(adapter.version for adapter in chain)
        self.version = version

    def activate(self, names: tuple[str, ...]) -> None:
        """Switch the UNet to exactly these LoRAs (none: the plain base model)."""
        if not self.loaded:
            return
        if names:
            self.unet.enable_adapters()
            self.unet.set_adapters(list(names))
        else:
            self.unet.disable_adapters()

    def for_generation(self) -> None:
        self.activate(self.active)


class LoraTrainer:
    """Fine-tunes one new LoRA a slice of steps at a time."""

    def __init__(self, pipes: Pipelines, adapters: Adapters, request: protocol.Train) -> None:
        self.request = request
        self.pipes = pipes
        self.adapters = adapters
        self.unet = pipes.text2img.unet
        self.step = 0
        self.loss = float("nan")
        self.began = time.perf_counter()
        self.chain = tuple(adapter.version for adapter in request.parents) + (request.version,)
        self.generator = torch.Generator("cpu").manual_seed(request.seed)
        self.noise_schedule = DDPMScheduler.from_config(pipes.text2img.scheduler.config)
        self.latents, self.embeddings, self.weights = self._encode_examples()

        adapters.load(request.parents)
        self.unet.add_adapter(LoraConfig(r=request.rank, lora_alpha=request.rank,
                                         init_lora_weights="gaussian",
                                         target_modules=LORA_TARGETS),
                              adapter_name=request.version)
        adapters.loaded.add(request.version)
        self.parameters = [p for name, p in self.unet.named_parameters()
                           if f".{request.version}." in name]
        self.optimizer = torch.optim.AdamW(self.parameters, lr=request.learning_rate)

    @torch.no_grad()
    def _encode_examples(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """VAE latents and text embeddings of every example, once: both models are frozen."""
        pipe = self.pipes.text2img
        size = self.pipes.settings.native_size
        images = []
        for example in self.request.examples:
            with Image.open(example.image) as image:
                image = image.convert("RGB").resize((size, size), Image.Resampling.LANCZOS)
            images.append(pipe.image_processor.preprocess(image))
        pixels = torch.cat(images).to(self.pipes.device, self.pipes.dtype)
        latents = pipe.vae.encode(pixels).latent_dist.mean * pipe.vae.config.scaling_factor
        prompts = [example.prompt for example in self.request.examples]
        embeddings, _ = pipe.encode_prompt(prompts, self.pipes.device, 1, False)
        weights = torch.tensor([example.weight for example in self.request.examples])
        return latents, embeddings, weights

    @property
    def done(self) -> bool:
        return self.step >= self.request.steps

    def run_slice(self, seconds: float) -> None:
        """Train for about `seconds`, at least one step, then hand the UNet back."""
        self.adapters.activate(self.chain)
        for name, parameter in self.unet.named_parameters():
            parameter.requires_grad_(f".{self.request.version}." in name)
        deadline = time.perf_counter() + seconds
        try:
            while not self.done:
                self.loss = self._train_step()
                self.step += 1
                if time.perf_counter() > deadline:
                    break
        finally:
            self.adapters.for_generation()

    def _train_step(self) -> float:
        # Examples are drawn in proportion to their scores: a 5 counts more than a 4.
        picks = torch.multinomial(self.weights, BATCH_SIZE, replacement=True,
                                  generator=self.generator)
        latents = self.latents[picks]
        noise = torch.randn(latents.shape, generator=self.generator).to(latents)
        timesteps = torch.randint(0, self.noise_schedule.config.num_train_timesteps,
                                  (BATCH_SIZE,), generator=self.generator).to(latents.device)
        noisy = self.noise_schedule.add_noise(latents, noise, timesteps)
        with torch.enable_grad():
            prediction = self.unet(noisy, timesteps, self.embeddings[picks]).sample
            loss = F.mse_loss(prediction.float(), noise.float())
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        return loss.item()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.began

    def save(self) -> Path:
        folder = Path(self.request.out_dir)
        folder.mkdir(parents=True, exist_ok=True)
        self.unet.save_lora_adapter(str(folder), adapter_name=self.request.version)
        for parameter in self.parameters:
            parameter.requires_grad_(False)
        return folder

    def discard(self) -> None:
        """Forget the half-trained LoRA; generation goes on with the active version."""
        self.unet.delete_adapters(self.request.version)
        self.adapters.loaded.discard(self.request.version)
        self.adapters.for_generation()
