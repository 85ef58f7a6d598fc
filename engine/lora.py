"""Model versions as LoRAs on the denoiser, the UNet or the transformer (peft, through
diffusers' own adapter support), text encoders and VAE frozen.

A version is one LoRA trained on top of its parent's chain; using a version stacks its whole
chain on the base model. Training runs in slices, so the engine can generate between them:
the training adapter lives in the same denoiser, and each generation batch activates only the
active version's chain. What to encode, how to noise and what to predict is the model
family's (engine/families/); the loop here is the same for all.

The adapter's weights are kept in float32 whatever the model's dtype, as diffusers' training
scripts do: updates to float16 weights underflow. On a GPU the frozen model runs under
autocast, and a float16 model's loss is scaled (GradScaler) so its gradients do not underflow.
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from diffusers.loaders.lora_base import LORA_ADAPTER_METADATA_KEY
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from PIL import Image
from safetensors.torch import load_file, save_file

from engine import protocol
from engine.blobs import LocalBlobs
from engine.families import NotTrainable
from engine.families.base import Conditioning
from engine.pipelines import Pipelines

log = logging.getLogger(__name__)

BATCH_SIZE = 8
LORA_FILE = "pytorch_lora_weights.safetensors"  # what save_lora_adapter writes


class Adapters:
    """Which LoRAs are loaded into the denoiser, and which chain generation uses."""

    def __init__(self, denoiser: torch.nn.Module, blobs: LocalBlobs,
                 pipeline: type | None = None) -> None:
        self.denoiser = denoiser
        self.blobs = blobs
        self.pipeline = pipeline  # its class reads LoRA files of other tools' layouts
        self.loaded: set[str] = set()
        self.active: tuple[str, ...] = ()
        self.version = "base"

    def load(self, chain: tuple[protocol.Adapter, ...]) -> None:
        for adapter in chain:
            if adapter.version not in self.loaded:
                path = self.blobs.path(adapter.blob)
                self.denoiser.load_lora_adapter(str(path.parent), weight_name=path.name,
                                                adapter_name=adapter.version, prefix=None,
                                                use_safetensors=True)
                self.loaded.add(adapter.version)

    def use(self, version: str, chain: tuple[protocol.Adapter, ...]) -> None:
        """Make `version` (its chain of LoRAs) the one generation uses."""
        self.load(chain)
        self.active = tuple(adapter.version for adapter in chain)
        self.version = version

    def activate(self, names: tuple[str, ...]) -> None:
        """Switch the denoiser to exactly these LoRAs (none: the plain base model)."""
        if not self.loaded:
            return
        if names:
            self.denoiser.enable_adapters()
            self.denoiser.set_adapters(list(names))
        else:
            self.denoiser.disable_adapters()

    def for_generation(self) -> None:
        self.activate(self.active)

    @contextlib.contextmanager
    def with_loras(self, loras: tuple[tuple[str, float, str], ...] | None) -> Iterator[None]:
        """For one batch: the active version's chain plus the job's own LoRAs by name (--lora),
        each at its weight; the chain alone again afterwards."""
        if not loras:
            yield
            return
        names = [self._load_named(name, key) for name, _, key in loras]
        self.denoiser.enable_adapters()
        self.denoiser.set_adapters([*self.active, *names],
                                   [1.0] * len(self.active) + [w for _, w, _ in loras])
        try:
            yield
        finally:
            self.for_generation()

    # Called while a batch generates: the weights must not be inference tensors, which a
    # later /retrain's new adapter could not switch training on for.
    @torch.inference_mode(False)
    def _load_named(self, name: str, key: str) -> str:
        adapter = f"lora-{key.split('.')[0][:16]}"
        if adapter in self.loaded:
            return adapter
        state, alphas = self._read(self.blobs.path(key))
        # diffusers' own files name the denoiser's part (a DreamBooth file has text_encoder.*
        # too, which is not applied: the text encoders take no LoRA here); a version
        # /retrain made names nothing.
        prefix = next((part for part in ("unet", "transformer")
                       if any(key.startswith(f"{part}.") for key in state)), None)
        try:
            self.denoiser.load_lora_adapter(state, network_alphas=alphas, adapter_name=adapter,
                                            prefix=prefix)
        except Exception as error:
            with contextlib.suppress(Exception):
                self.denoiser.delete_adapters(adapter)
            raise ValueError(f"The LoRA {name} does not fit this model (it was made for "
                             f"another model family or size): {error}") from None
        self.loaded.add(adapter)
        return adapter

    def _read(self, path: Path) -> tuple[dict[str, torch.Tensor], dict | None]:
        """The file's weights in diffusers' layout, with their alphas where the file has them:
        files from kohya's scripts and A1111 (`lora_unet_…`, `lora_down`/`lora_up`) are
        converted by the model's pipeline class, as its own load_lora_weights does."""
        reader = getattr(self.pipeline, "lora_state_dict", None)
        if reader is None:
            return load_file(path), None
        # SDXL files in kohya's older layout name the UNet's blocks as the original code did.
        extra = ({"unet_config": self.denoiser.config}
                 if isinstance(self.denoiser, UNet2DConditionModel) else {})
        try:
            read = reader(str(path.parent), weight_name=path.name, **extra)
        except Exception as error:
            raise ValueError(f"{path.name} is not a LoRA file diffusers can read: {error}") \
                from None
        return read if isinstance(read, tuple) else (read, None)

    def drop(self, version: str) -> None:
        """Forget a LoRA that was loaded (a half-trained one)."""
        self.loaded.discard(version)
        self.denoiser.delete_adapters(version)


class LoraTrainer:
    """Fine-tunes one new LoRA a slice of steps at a time."""

    def __init__(self, pipes: Pipelines, adapters: Adapters, request: protocol.Train) -> None:
        self.blobs = adapters.blobs
        self.family = pipes.family
        if not self.family.trainable:
            raise NotTrainable(self.family.not_trainable())
        self.request = request
        self.pipes = pipes
        self.adapters = adapters
        self.denoiser = self.family.module  # eager, even where generation is compiled
        self.step = 0
        self.loss = float("nan")
        self.losses: list[float] = []  # each step's, since they were last taken
        self.began = time.perf_counter()
        self.chain = tuple(adapter.version for adapter in request.parents) + (request.version,)
        self.generator = torch.Generator("cpu").manual_seed(request.seed)
        self.latents, self.conditioning, self.weights = self._encode_examples()

        adapters.load(request.parents)
        self.denoiser.add_adapter(LoraConfig(r=request.rank, lora_alpha=request.rank,
                                             init_lora_weights="gaussian",
                                             target_modules=list(self.family.lora_targets)),
                                  adapter_name=request.version)
        adapters.loaded.add(request.version)
        self.parameters = [p for name, p in self.denoiser.named_parameters()
                           if f".{request.version}." in name]
        for parameter in self.parameters:
            parameter.data = parameter.data.float()
        self.optimizer = torch.optim.AdamW(self.parameters, lr=request.learning_rate)
        device = pipes.device.type
        self.autocast = torch.autocast(device, dtype=pipes.dtype,
                                       enabled=device == "cuda" and pipes.dtype != torch.float32)
        self.scaler = torch.amp.GradScaler(device, enabled=pipes.dtype == torch.float16)

    @torch.no_grad()
    def _encode_examples(self) -> tuple[torch.Tensor, Conditioning, torch.Tensor]:
        """Latents and text conditioning of every example, once: VAE and text encoders are
        frozen."""
        pipe = self.pipes.text2img
        size = self.pipes.settings.native_size
        images = []
        for example in self.request.examples:
            with Image.open(self.blobs.path(example.image)) as image:
                image = image.convert("RGB").resize((size, size), Image.Resampling.LANCZOS)
            images.append(pipe.image_processor.preprocess(image))
        latents = self.family.encode_images(torch.cat(images))
        conditioning = self.family.encode_prompts([example.prompt
                                                   for example in self.request.examples])
        weights = torch.tensor([example.weight for example in self.request.examples])
        return latents, conditioning, weights

    @property
    def done(self) -> bool:
        return self.step >= self.request.steps

    def run_slice(self, seconds: float) -> None:
        """Train for about `seconds`, at least one step, then hand the denoiser back."""
        self.adapters.activate(self.chain)
        for name, parameter in self.denoiser.named_parameters():
            parameter.requires_grad_(f".{self.request.version}." in name)
        deadline = time.perf_counter() + seconds
        try:
            while not self.done:
                self.loss = self._train_step()
                self.losses.append(self.loss)
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
        step = self.family.noised(latents, noise, self.generator)
        with torch.enable_grad():
            with self.autocast:
                prediction = self.family.predict(step.noisy.to(self.pipes.dtype),
                                                 step.timesteps, self.conditioning[picks])
            loss = F.mse_loss(prediction.float(), step.target.float())
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        return loss.item()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.began

    def save(self) -> str:
        """Put the new LoRA's weights in the blob store; its key."""
        with tempfile.TemporaryDirectory(prefix="canvas-lora-") as folder:
            path = Path(folder) / LORA_FILE
            if getattr(self.denoiser, "hf_quantizer", None) is None:
                self.denoiser.save_lora_adapter(folder, adapter_name=self.request.version,
                                                weight_name=LORA_FILE)
            else:  # save_lora_adapter calls .to(dtype=None), which a quantized model refuses
                _save_lora(self.denoiser, self.request.version, path)
            key = self.blobs.put(path.read_bytes(), ".safetensors")
        for parameter in self.parameters:
            parameter.requires_grad_(False)
        return key

    def discard(self) -> None:
        """Forget the half-trained LoRA; generation goes on with the active version."""
        self.adapters.drop(self.request.version)
        self.adapters.for_generation()


def _save_lora(denoiser: torch.nn.Module, adapter: str, path: Path) -> None:
    """The adapter's weights and its LoRA config, as save_lora_adapter writes them (the config
    in the metadata, so loading it back needs no guess at its rank)."""
    config = {key: sorted(value) if isinstance(value, set) else value
              for key, value in denoiser.peft_config[adapter].to_dict().items()}
    save_file(get_peft_model_state_dict(denoiser, adapter_name=adapter), str(path),
              metadata={"format": "pt",
                        LORA_ADAPTER_METADATA_KEY: json.dumps(config, indent=2, sort_keys=True)})
