"""The requests a command becomes: platform-neutral, validated, frozen.

The generation commands carry one `Params` record (engine/params.py), where None means "not
given", so that a chat's and a model's defaults can be filled in later by `Params.resolve`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from engine.params import Params


@dataclass(frozen=True)
class Imagine:
    params: Params  # kind "txt2img"; the prompt is always set


@dataclass(frozen=True)
class Vary:
    image_id: int | None = None  # None: the platform should supply an attached image
    params: Params = Params(kind="img2img")  # no prompt: the source image's prompt


@dataclass(frozen=True)
class Inpaint:
    params: Params  # kind "inpaint"; the prompt is always set


# The Vary (Subtle) and Vary (Strong) buttons, as Midjourney has them (plain /vary: 0.6).
VARY_STRENGTHS = {"subtle": 0.35, "strong": 0.75}


def varied(image_id: int, how: str | None = None) -> Vary:
    """What a Vary button asks for: `how` is "subtle", "strong" or None (the default)."""
    return Vary(image_id, Params(kind="img2img", strength=VARY_STRENGTHS.get(how or "")))


@dataclass(frozen=True)
class Upscale:
    image_id: int | None = None  # None: the platform should say which (a reply, a button)
    scale: int = 2


@dataclass(frozen=True)
class Rate:
    image_id: int
    score: int


@dataclass(frozen=True)
class Cancel:
    job_id: int | None = None  # None: the user's most recent waiting or running job


@dataclass(frozen=True)
class ShowQueue:
    pass


@dataclass(frozen=True)
class History:
    pass


@dataclass(frozen=True)
class Help:
    pass


@dataclass(frozen=True)
class Web:
    pass


@dataclass(frozen=True)
class Delete:
    image_id: int | None = None  # None: the platform should say which (a reply)


@dataclass(frozen=True)
class Training:
    """/optout (allowed False) and /optin: may /retrain use one's pictures and ratings?"""

    allowed: bool


@dataclass(frozen=True)
class ForgetMe:
    confirm: bool = False  # False: say what it does and ask to confirm


@dataclass(frozen=True)
class ShowLoras:
    pass


@dataclass(frozen=True)
class ShowStyles:
    pass


@dataclass(frozen=True)
class ChatSettings:
    """/settings: show this chat's defaults, change some, or reset them all."""

    action: Literal["show", "reset"] = "show"
    checkpoint: str | None = None
    steps: int | None = None
    aspect: tuple[int, int] | None = None
    style: str | None = None  # "none" removes the chat's style
    safety: str | None = None  # "refuse" or "spoiler"

    @property
    def changes(self) -> dict[str, object]:
        return {name: value for name, value in (
            ("checkpoint", self.checkpoint), ("steps", self.steps), ("aspect", self.aspect),
            ("style", self.style), ("safety", self.safety)) if value is not None}


@dataclass(frozen=True)
class Retrain:
    action: Literal["start", "status", "cancel"] = "start"
    steps: int | None = None
    min_score: float | None = None
    rank: int | None = None
    checkpoint: str | None = None  # which model (None: the default one)


@dataclass(frozen=True)
class ModelCmd:
    action: Literal["list", "use"] = "list"
    version: str | None = None
    checkpoint: str | None = None  # which model (None: the default one)


@dataclass(frozen=True)
class ShowModels:
    pass


Request = (Imagine | Vary | Inpaint | Rate | Cancel | ShowQueue | History | Help | Retrain
           | ModelCmd | ShowModels | Web | ShowStyles | ChatSettings | Upscale | Delete
           | Training | ForgetMe | ShowLoras)


def imagine(**given: object) -> Imagine:
    return Imagine(Params(kind="txt2img", **given))  # type: ignore[arg-type]


def inpaint(**given: object) -> Inpaint:
    return Inpaint(Params(kind="inpaint", **given))  # type: ignore[arg-type]


def forget_me(action: str = "") -> ForgetMe:
    return ForgetMe(confirm=action == "confirm")


def upscale(image_id: int | None = None, scale: str = "2") -> Upscale:
    return Upscale(image_id, int(scale))


def vary(image_id: int | None = None, **given: object) -> Vary:
    return Vary(image_id, Params(kind="img2img", **given))  # type: ignore[arg-type]
