"""A job's generation parameters: one frozen record that the command parser makes, the store
keeps (as JSON), the protocol carries and the engine plans from.

None means "not given". `resolve()` fills what was not given from layers of defaults, first
given first: the user's own option wins over a chat's default, which wins over the model's.
`complete()` then adds the built-in fallbacks, so an engine never sees a gap.

Standard library only: the bot process loads it and must never import torch.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Literal

JobKind = Literal["txt2img", "img2img", "inpaint"]
KINDS: tuple[JobKind, ...] = ("txt2img", "img2img", "inpaint")

# Denoising strength when none is given: a variation keeps the picture's layout; inpainting
# repaints the masked part from scratch.
DEFAULT_STRENGTH: dict[str, float | None] = {"txt2img": None, "img2img": 0.6, "inpaint": 1.0}


@dataclass(frozen=True)
class Params:
    kind: JobKind = "txt2img"
    prompt: str | None = None
    negative: str | None = None  # --no
    seed: int | None = None
    steps: int | None = None
    cfg: float | None = None  # --cfg, the guidance scale
    aspect: tuple[int, int] | None = None  # --ar, in lowest terms
    n: int | None = None  # pictures to make
    strength: float | None = None  # how far /vary and /inpaint move from the picture
    checkpoint: str | None = None  # --model: which loaded weights draw it
    image: str | None = None  # blob key of the picture to vary or repaint
    mask: str | None = None  # blob key of the inpainting mask (white = repaint)
    # --lora NAME[:WEIGHT]: (name, weight, blob key of its file); the key is the bot's to fill
    loras: tuple[tuple[str, float, str], ...] | None = None
    # A picture the model's safety checker flags: "refuse" (the default) or "spoiler" (kept,
    # sent hidden): the chat's policy, set by the bot.
    safety: str | None = None
    scale: int | None = None  # an upscale: the output is this many times the picture's size
    style: str | None = None  # --style: a template from the config ("none": no style)
    words: str | None = None  # the user's own words, where a style made `prompt` of them

    def resolve(self, *defaults: Params) -> Params:
        """These parameters with each one not given taken from the first layer that gives it.
        A layer's kind is never taken: defaults say how, not what."""
        values = {}
        for name in _FILLABLE:
            value = getattr(self, name)
            for layer in defaults:
                if value is not None:
                    break
                value = getattr(layer, name)
            values[name] = value
        return dataclasses.replace(self, **values)

    def complete(self) -> Params:
        """Every parameter a pipeline call needs that is still not given, at its fallback
        (steps and cfg have none here: they are the model's, see `resolve`)."""
        return self.resolve(Params(prompt="", negative="", aspect=(1, 1), n=1,
                                   strength=DEFAULT_STRENGTH[self.kind]))

    def given(self) -> dict[str, Any]:
        """The parameters that are set, as plain JSON values."""
        return {name: _plain(value) for name, value in dataclasses.asdict(self).items()
                if value is not None}

    def to_json(self) -> str:
        return json.dumps(self.given(), ensure_ascii=False, sort_keys=True)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Params:
        """Parameters from `given()`'s form. Unknown names are dropped, so a store written by a
        newer version (or a worker running one) still reads."""
        known = {name: value for name, value in values.items() if name in _NAMES}
        if known.get("aspect") is not None:
            known["aspect"] = tuple(known["aspect"])
        if known.get("loras") is not None:
            known["loras"] = tuple((str(n), float(w), str(k)) for n, w, k in known["loras"])
        if known.get("kind", "txt2img") not in KINDS:
            raise ValueError(f"unknown job kind {known['kind']!r}")
        return cls(**known)

    @classmethod
    def from_json(cls, text: str) -> Params:
        return cls.from_dict(json.loads(text))


_NAMES = frozenset(field.name for field in dataclasses.fields(Params))
_FILLABLE = tuple(sorted(_NAMES - {"kind"}))


def _plain(value: Any) -> Any:
    return [_plain(item) for item in value] if isinstance(value, tuple) else value
