"""The engine's named models: loaded on demand, kept on the device while they fit in its
memory budget, and moved out least recently used first to make room.

On a GPU a model moved out waits in CPU RAM, so bringing it back is a copy, not a load; on the
CPU there is nowhere else to keep it, so it is dropped and its memory given back. A model is
never moved out in the middle of a batch or of training: the worker asks for models only
between them, and names the ones it must keep (`pinned`).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import gc
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable

import torch

from engine import protocol
from engine.params import Params
from engine.pipelines import Pipelines, load

log = logging.getLogger(__name__)

# What the models may not take of the free memory (auto budget): generation's activations
# and the allocator's slack need the rest.
HEADROOM = 0.25


GB = 1e9


class UnknownModel(ValueError):
    pass


class ModelTooBig(ValueError):
    """The message says what to change in engine.models."""


def footprint(pipes: Pipelines) -> int:
    """Bytes of weights and buffers across the model's components (shared ones once)."""
    seen: set[int] = set()
    total = 0
    for component in pipes.text2img.components.values():
        if not isinstance(component, torch.nn.Module):
            continue
        for tensor in (*component.parameters(), *component.buffers()):
            if id(tensor) not in seen:
                seen.add(id(tensor))
                total += tensor.numel() * tensor.element_size()
    return total


def free_memory(device: torch.device) -> int:
    """Bytes free on the device now (on the CPU: RAM the system says is available)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def give_back_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        return
    with contextlib.suppress(OSError):  # glibc keeps freed memory unless told to hand it back
        ctypes.CDLL("libc.so.6").malloc_trim(0)


Loader = Callable[[protocol.ModelSpec], Pipelines]


def load_spec(spec: protocol.ModelSpec, device: str, compile_models: bool) -> Pipelines:
    pipes = load(spec.source, device, spec.dtype, compile_models, quantize=spec.quantize,
                 offload=spec.offload, config=spec.config)
    pipes.checkpoint = spec.name
    pipes.configured = Params(steps=spec.steps, cfg=spec.cfg)
    if spec.size is not None:
        multiple = pipes.settings.size_multiple
        if spec.size % multiple:
            raise ValueError(f"engine.models.{spec.name}.defaults.size: {spec.size} is not a "
                             f"multiple of {multiple}, which this model's images must be "
                             f"(try {max(multiple, round(spec.size / multiple) * multiple)})")
        pipes.settings = dataclasses.replace(pipes.settings, native_size=spec.size)
    return pipes


class Models:
    def __init__(self, specs: list[protocol.ModelSpec], loader: Loader,
                 budget: int = 0, send: Callable[[protocol.FromEngine], None] | None = None,
                 ) -> None:
        """`budget`: bytes of device memory for models; 0: set from the first load (what was
        free then, less HEADROOM)."""
        self.specs = {spec.name: spec for spec in specs}
        self.default = specs[0].name
        self.loader = loader
        self.budget = budget
        self.send = send or (lambda message: None)
        self.on_device: OrderedDict[str, Pipelines] = OrderedDict()  # least recent first
        self.parked: dict[str, Pipelines] = {}  # in CPU RAM (GPU only)
        self.sizes: dict[str, int] = {}
        self.loads: list[protocol.ModelLoaded] = []

    @classmethod
    def single(cls, pipes: Pipelines) -> Models:
        """One model, already loaded (tests, benchmarks, the engine without its process)."""
        models = cls([protocol.ModelSpec(pipes.checkpoint, pipes.checkpoint)],
                     lambda spec: pipes)
        models.on_device[pipes.checkpoint] = pipes
        models.sizes[pipes.checkpoint] = footprint(pipes)
        return models

    def name_of(self, asked: str | None) -> str:
        name = asked or self.default
        if name not in self.specs:
            raise UnknownModel(f"There is no model {name!r} here; the models are "
                               + ", ".join(self.specs) + ".")
        return name

    def loaded(self, name: str) -> bool:
        return name in self.on_device

    def peek(self, name: str) -> Pipelines | None:
        """The model if it is on the device, without touching the LRU order."""
        return self.on_device.get(name)

    def get(self, name: str, pinned: frozenset[str] = frozenset()) -> Pipelines:
        """The model on the device, moving others out (never a pinned one) to make room."""
        name = self.name_of(name)
        if name in self.on_device:
            self.on_device.move_to_end(name)
            return self.on_device[name]
        began = time.perf_counter()
        came_from = "cpu" if name in self.parked else "disk"
        evicted = self._make_room(self.sizes.get(name, 0), pinned | {name})
        if came_from == "cpu":
            pipes = self.parked.pop(name)
            pipes.text2img.to(pipes.device)
        else:
            pipes = self.loader(self.specs[name])
        self.on_device[name] = pipes
        self.sizes[name] = footprint(pipes)
        if self.budget and self.sizes[name] > self.budget:
            self._move_out(name)
            raise ModelTooBig(
                f"The model {name} takes {self.sizes[name] / GB:.1f} GB, more than "
                f"engine.memory ({self.budget / GB:.1f} GB) allows. Quantize it (quantize: 4bit "
                "or int8-weights), offload it (offload: model), use a smaller dtype, or "
                "raise engine.memory.")
        if not self.budget:
            self.budget = int((self.sizes[name] + free_memory(pipes.device)) * (1 - HEADROOM))
        evicted += self._make_room(0, pinned | {name})  # a first load's size was a guess
        record = protocol.ModelLoaded(
            name, came_from, round(time.perf_counter() - began, 3), self.device_bytes,
            pipes.settings.native_size, pipes.family.label, tuple(evicted))
        self.loads.append(record)
        log.info("model %s on the device from %s in %.1f s (%s); models there now take "
                 "%.0f MB of %.0f MB", name, came_from, record.seconds,
                 f"moved out: {', '.join(evicted)}" if evicted else "nothing moved out",
                 record.device_bytes / 1e6, self.budget / 1e6)
        self.send(record)
        return pipes

    @property
    def device_bytes(self) -> int:
        return sum(self.sizes[name] for name in self.on_device)

    def _make_room(self, needed: int, pinned: frozenset[str]) -> list[str]:
        evicted = []
        for name in list(self.on_device):
            if not self.budget or self.device_bytes + needed <= self.budget:
                break
            if name not in pinned:
                self._move_out(name)
                evicted.append(name)
        return evicted

    def _move_out(self, name: str) -> None:
        pipes = self.on_device.pop(name)
        device = pipes.device
        if device.type == "cuda" and pipes.offload == "none":
            pipes.text2img.to("cpu")
            self.parked[name] = pipes
        del pipes  # on the CPU, the last reference: the weights go with it
        give_back_memory(device)
