"""How many images the engine generates in one batch.

`engine.max_batch: auto` (the default) sizes batches to the device. On a CUDA GPU that is the
most images at the model's native size that fit in the memory left once the model is loaded,
measured at start by generating one image, then two, for one step each and reading the
allocator's peak. On the CPU memory is rarely what limits a batch and the gain stops after a
few images, so it is `CPU_BATCH`. A number is a cap; on a GPU it is lowered, with a warning,
when that many images would not fit.

Every image the bot makes is about the native area (engine.pipelines.fit_size), so one
measurement serves every aspect ratio.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

import torch

from engine.pipelines import Pipelines

log = logging.getLogger(__name__)

CPU_BATCH = 4
# Past this the GPU is busy enough that images per second barely grow, while every user in a
# batch waits for the whole batch.
AUTO_CAP = 16
# Kept free: allocator fragmentation, a /retrain's LoRA training, other processes.
HEADROOM_SHARE = 0.10
GIB = 1024**3


@dataclass(frozen=True)
class MemoryUse:
    """Device memory a batch needs on top of the loaded model, in bytes."""

    first_image: int
    per_image: int  # each image after the first


class Meter(Protocol):
    """The device's memory, as the probe reads it (CudaMeter; tests give their own)."""

    def allocated(self) -> int: ...

    def reset_peak(self) -> None: ...

    def peak(self) -> int: ...

    def release_cache(self) -> None: ...

    def free_and_total(self) -> tuple[int, int]: ...


class CudaMeter:
    def __init__(self, device: torch.device) -> None:
        self.device = device

    def allocated(self) -> int:
        return torch.cuda.memory_allocated(self.device)

    def reset_peak(self) -> None:
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)

    def peak(self) -> int:
        torch.cuda.synchronize(self.device)
        return torch.cuda.max_memory_allocated(self.device)

    def release_cache(self) -> None:
        torch.cuda.empty_cache()

    def free_and_total(self) -> tuple[int, int]:
        return torch.cuda.mem_get_info(self.device)


def fitting_batch(free: int, total: int, use: MemoryUse, cap: int) -> int:
    """The most images, up to `cap`, whose batch fits in `free` bytes less the headroom; at
    least 1 (an image that does not fit at all fails with a message when it is tried)."""
    budget = free - HEADROOM_SHARE * total - use.first_image
    if budget < 0:
        return 1
    if use.per_image <= 0:
        return cap
    return max(1, min(cap, 1 + int(budget // use.per_image)))


def measure(pipelines: Pipelines, meter: Meter) -> MemoryUse:
    """Peak memory of a one-step text-to-image batch of one and of two images at the native
    size, with the model's default guidance (classifier-free guidance doubles the UNet's
    batch), above what the loaded model already holds."""
    size = pipelines.settings.native_size
    peaks = []
    for images in (1, 2):
        meter.release_cache()
        loaded = meter.allocated()
        meter.reset_peak()
        pipelines.text_to_image(["a probe"] * images, 1, size, size)
        peaks.append(meter.peak() - loaded)
    meter.release_cache()
    return MemoryUse(first_image=peaks[0], per_image=peaks[1] - peaks[0])


def choose(pipelines: Pipelines, setting: int, meter: Meter | None = None) -> int:
    """The engine's batch size for `engine.max_batch`: 0 (written `auto` in the config) or a
    cap."""
    if pipelines.device.type != "cuda" and meter is None:
        return setting or CPU_BATCH
    meter = meter or CudaMeter(pipelines.device)
    try:
        use = measure(pipelines, meter)
    except torch.OutOfMemoryError:
        meter.release_cache()
        log.warning("two images at the native size do not fit in the device's free memory; "
                    "batches of 1")
        return 1
    free, total = meter.free_and_total()
    cap = setting or AUTO_CAP
    size = pipelines.settings.native_size
    fits = fitting_batch(free, total, use, cap)
    log.info("batch memory at %dx%d: %.2f GiB for one image, %.2f GiB for each more; "
             "%.1f of %.1f GiB free: batches of up to %d", size, size, use.first_image / GIB,
             use.per_image / GIB, free / GIB, total / GIB, fits)
    if setting and fits < setting:
        log.warning("engine.max_batch is %d, but only %d images at %dx%d fit in the device's "
                    "free memory; using %d", setting, fits, size, size, fits)
    return fits
