"""Model families: which one a loaded pipeline belongs to, and the random-weight builders.

`random:<family>` is the full published architecture with random weights (GPU timing);
`random:<family>-tiny` the same classes at a tiny size for the CPU test suite. Nothing is
downloaded for either.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from diffusers import DiffusionPipeline

from engine.families import flux, sd, sd3, sdxl
from engine.families.base import Family, ModelSettings, NotTrainable

FAMILIES: tuple[type[Family], ...] = (sd.SD15, sd.SD2, sdxl.SDXL, sd3.SD3, flux.Flux)


class OtherFamily(Family):
    """A pipeline AutoPipeline loads but no family here knows: it generates with the
    pipeline's own defaults where it can, and /retrain says it is not supported."""

    def __init__(self, pipe: DiffusionPipeline) -> None:
        super().__init__(pipe)
        self.denoiser_name = "unet" if getattr(pipe, "unet", None) is not None else "transformer"
        self.channels_last = self.denoiser_name == "unet"


def family_of(pipe: DiffusionPipeline) -> Family:
    for family in FAMILIES:
        if family.recognises(pipe):
            return family(pipe)
    return OtherFamily(pipe)


_BUILDERS: dict[str, Callable[[bool], DiffusionPipeline]] = {
    "sd15": sd.build_random,
    "sd2": lambda tiny: sd.build_random(tiny, two=True),
    "sdxl": sdxl.build_random,
    "sd3": sd3.build_random,
    "flux": flux.build_random,
    "flux-schnell": lambda tiny: flux.build_random(tiny, dev=False),
}
RANDOM_MODELS: tuple[str, ...] = tuple(
    f"random:{name}{suffix}" for name in _BUILDERS for suffix in ("", "-tiny"))


def build_random(spec: str, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32) -> DiffusionPipeline:
    """The pipeline `random:<family>[-tiny]` names, weights drawn from a fixed seed."""
    name = spec.removeprefix("random:")
    tiny = name.endswith("-tiny")
    builder = _BUILDERS.get(name.removesuffix("-tiny"))
    if builder is None:
        raise ValueError(f"unknown random model {spec!r}; random models: "
                         f"{', '.join(RANDOM_MODELS)}")
    torch.manual_seed(0)
    with building_on(torch.device(device), dtype):
        return builder(tiny)


@contextlib.contextmanager
def building_on(device: torch.device, dtype: torch.dtype) -> Iterator[None]:
    """New modules' weights made directly on `device` in `dtype`: a full-size random model
    (FLUX.1 is 12 B parameters) would not fit in RAM as float32."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


__all__ = ["FAMILIES", "RANDOM_MODELS", "Family", "ModelSettings", "NotTrainable",
           "build_random", "family_of"]
