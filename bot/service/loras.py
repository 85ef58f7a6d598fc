"""LoRAs by name: the .safetensors files in `engine.loras`, added to a job with --lora.

The bot reads only each file's header (JSON: tensor names and shapes), never its weights, to
tell which kind of model it is for; a job names its LoRAs by blob key, so the file's bytes
travel to whichever engine runs it, as pictures do.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path

from bot.errors import UserError
from engine.blobs import LocalBlobs

# What a model family's denoiser looks like in a LoRA's tensor names, and the families each
# kind fits (by the names the engine reports).
KINDS = {
    "unet": ("Stable Diffusion 1.x", "Stable Diffusion 2.x"),
    "unet-xl": ("Stable Diffusion XL",),
    "mmdit": ("Stable Diffusion 3.x",),
    "flux": ("FLUX.1",),
}
KIND_LABELS = {"unet": "Stable Diffusion 1.x/2.x", "unet-xl": "Stable Diffusion XL",
               "mmdit": "Stable Diffusion 3.x", "flux": "FLUX.1"}
MAX_HEADER = 100_000_000


@dataclass(frozen=True)
class Lora:
    name: str
    path: Path
    kind: str  # a key of KINDS, or "" when the file does not say

    @property
    def family(self) -> str:
        return KIND_LABELS.get(self.kind, "unknown family")

    def fits(self, family: str) -> bool:
        return not self.kind or family in KINDS[self.kind]


def kind_of(path: Path) -> str:
    """Which kind of denoiser a LoRA file's tensor names are for ("" if none is clear)."""
    with path.open("rb") as file:
        (length,) = struct.unpack("<Q", file.read(8))
        if length > MAX_HEADER:
            raise ValueError("not a safetensors file")
        names = list(json.loads(file.read(length)))
    if any("single_transformer_blocks" in name for name in names):
        return "flux"
    if any("down_blocks" in name or "lora_unet" in name for name in names):
        # SDXL's UNet stacks 2 to 10 transformer blocks in an attention; SD 1.x and 2.x one.
        xl = any(re.search(r"transformer_blocks[._][1-9]", name) for name in names)
        return "unet-xl" if xl else "unet"
    if any("transformer_blocks" in name for name in names):
        return "mmdit"
    return ""


class LoraShelf:
    def __init__(self, folder: Path | None, blobs: LocalBlobs) -> None:
        self.folder = folder
        self.blobs = blobs
        self._keys: dict[tuple[Path, float], str] = {}  # a file, by its mtime: its blob key
        self._kinds: dict[tuple[Path, float], str] = {}  # the same: what its header says

    def all(self) -> list[Lora]:
        if self.folder is None or not self.folder.is_dir():
            return []
        found = []
        for path in sorted(self.folder.glob("*.safetensors")):
            try:
                stamp = (path, path.stat().st_mtime)
                if stamp not in self._kinds:
                    self._kinds[stamp] = kind_of(path)
                found.append(Lora(path.stem, path, self._kinds[stamp]))
            except (OSError, ValueError, struct.error):
                continue  # not a LoRA file: not offered
        return found

    def named(self, name: str) -> Lora:
        loras = {lora.name.lower(): lora for lora in self.all()}
        found = loras.get(name.lower())
        if found is None:
            if not loras:
                raise UserError("This bot has no LoRAs: its admins can put .safetensors files "
                                "in the folder engine.loras names.")
            raise UserError(f"There is no LoRA {name!r}. /loras lists them: "
                            f"{', '.join(lora.name for lora in loras.values())}.")
        return found

    def key_of(self, lora: Lora) -> str:
        """The file in the blob store (once per version of the file): its key."""
        stamp = (lora.path, lora.path.stat().st_mtime)
        if stamp not in self._keys:
            self._keys[stamp] = self.blobs.put(lora.path.read_bytes(), ".safetensors")
        return self._keys[stamp]

    def text(self) -> str:
        loras = self.all()
        if not loras:
            return ("This bot has no LoRAs yet: its admins can put .safetensors files in the "
                    "folder engine.loras names.")
        lines = ["LoRAs (add one with /imagine ... --lora <name>[:weight]):"]
        lines += [f"{lora.name} · for {lora.family}" for lora in loras]
        return "\n".join(lines)
