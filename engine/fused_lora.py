"""Model versions on a compiled denoiser: the active chain merged into the base weights.

torch.compile specialises on the modules it traced. peft adds a layer around every targeted
Linear when a LoRA is loaded, and switching adapters changes what those layers do, so with
peft a version switch makes the next batch compile again (minutes on a GPU). Here generation
never runs through peft: using a version writes base + Σ scale·B·A into the targeted weights
in place, so a switch changes numbers, not modules. The base weights are kept on the CPU to
switch back exactly.

Training still adds its peft adapter to the eager module for the run (the compiled graph is
traced again once while it trains); when the run ends the adapter is unloaded, which puts the
original layers back, and the new version is merged like any other.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import safe_open

from engine import protocol
from engine.blobs import LocalBlobs
from engine.lora import Adapters


def lora_deltas(file: Path) -> dict[str, torch.Tensor]:
    """Each targeted module's weight change, scale·B·A, from a saved LoRA (float32, CPU)."""
    with safe_open(str(file), "pt") as weights:
        config = json.loads((weights.metadata() or {}).get("lora_adapter_metadata", "{}"))
        scale = config.get("lora_alpha", 1) / config.get("r", 1)
        keys = set(weights.keys())
        deltas = {}
        for key in keys:
            if key.endswith(".lora_A.weight"):
                module = key.removesuffix(".lora_A.weight")
                down = weights.get_tensor(key).float()
                up = weights.get_tensor(f"{module}.lora_B.weight").float()
                deltas[module] = scale * (up @ down)
    return deltas


class FusedAdapters(Adapters):
    """Adapters for a compiled denoiser: the chain generation uses is merged in place.
    `loaded` holds only a peft adapter being trained."""

    @contextlib.contextmanager
    def with_loras(self, loras: tuple[tuple[str, float, str], ...] | None) -> Iterator[None]:
        if loras:  # one job's LoRAs would make the compiled graph trace again, every time
            raise ValueError("LoRAs by name (--lora) need engine.compile: false on this bot.")
        yield

    def __init__(self, denoiser: torch.nn.Module, blobs: LocalBlobs,
                 pipeline: type | None = None) -> None:
        super().__init__(denoiser, blobs, pipeline)
        self.files: dict[str, Path] = {}
        self.originals: dict[str, torch.Tensor] = {}
        self.merged: tuple[str, ...] = ()

    def load(self, chain: tuple[protocol.Adapter, ...]) -> None:
        for adapter in chain:
            if adapter.version in self.loaded:  # trained in this run: from now on, merged
                self.drop(adapter.version)
            self.files[adapter.version] = self.blobs.path(adapter.blob)

    def activate(self, names: tuple[str, ...]) -> None:
        training = [name for name in names if name in self.loaded]
        self._merge(tuple(name for name in names if name not in self.loaded))
        if training:
            self.denoiser.enable_adapters()
            self.denoiser.set_adapters(training)
        elif self.loaded:
            self.denoiser.disable_adapters()

    def drop(self, version: str) -> None:
        """Take the trained adapter's peft layers out: the original modules come back."""
        self.loaded.discard(version)
        self.denoiser.unload_lora()

    def _merge(self, chain: tuple[str, ...]) -> None:
        if chain == self.merged:
            return
        deltas: dict[str, torch.Tensor] = {}
        for version in chain:
            for module, delta in lora_deltas(self.files[version]).items():
                deltas[module] = deltas[module] + delta if module in deltas else delta
        with torch.no_grad():
            for module in set(self.originals) | set(deltas):
                layer = self.denoiser.get_submodule(module)
                weight = getattr(layer, "base_layer", layer).weight
                if module not in self.originals:
                    self.originals[module] = weight.detach().to("cpu", copy=True)
                merged = self.originals[module].float()
                if module in deltas:
                    merged = merged + deltas[module]
                weight.copy_(merged.to(weight.device))
        self.merged = chain
