"""Messages between the bot process and the engine process.

Every message is a small frozen record of ids, numbers, strings and file paths, sent as one line
of JSON. Never platform objects, never images: the engine writes PNGs and returns their paths.
This module imports only the standard library, because the bot process loads it and must never
import torch.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Literal

JobKind = Literal["txt2img", "img2img", "inpaint"]


# ---- bot -> engine ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Job:
    """One generation job. Unset sizes, steps and guidance take the model's defaults."""

    job_id: int
    kind: JobKind
    prompt: str
    seed: int
    negative_prompt: str = ""
    n: int = 1
    steps: int | None = None
    guidance: float | None = None
    aspect: tuple[int, int] = (1, 1)
    strength: float | None = None
    init_image: str | None = None
    mask_image: str | None = None
    model: str | None = None


@dataclass(frozen=True)
class Cancel:
    job_id: int


@dataclass(frozen=True)
class Shutdown:
    pass


@dataclass(frozen=True)
class Adapter:
    """One trained LoRA: a model version's own weights, saved in `path`."""

    version: str
    path: str


@dataclass(frozen=True)
class UseVersion:
    """Generate from now on with these LoRAs stacked on the base model (none: the base)."""

    version: str
    chain: tuple[Adapter, ...] = ()


@dataclass(frozen=True)
class TrainExample:
    image: str
    prompt: str
    weight: float


@dataclass(frozen=True)
class Train:
    """Fine-tune a new LoRA, `version`, on top of the `parents` chain, in slices between
    generation batches, and save it under `out_dir`."""

    run_id: int
    version: str
    parents: tuple[Adapter, ...]
    examples: tuple[TrainExample, ...]
    steps: int
    rank: int
    out_dir: str
    learning_rate: float = 1e-3
    seed: int = 0


@dataclass(frozen=True)
class CancelTrain:
    run_id: int


# ---- engine -> bot ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Loading:
    """Still loading the model (a first download can take long), sent every few seconds."""

    seconds: float


@dataclass(frozen=True)
class Ready:
    model: str
    model_version: str
    device: str
    dtype: str
    min_output_size: int = 0  # chats show this model's images enlarged to at least this
    max_batch: int = 1  # most images the engine generates at once
    family: str = ""  # the model family, as people call it ("Stable Diffusion XL")
    option_notes: tuple[str, ...] = ()  # how this family takes --cfg and --no, where it differs


@dataclass(frozen=True)
class Started:
    """The job's batch began; the resolved parameters are what it will really use."""

    job_id: int
    width: int
    height: int
    steps: int
    guidance: float
    batch_size: int


@dataclass(frozen=True)
class Progress:
    job_id: int
    step: int
    total: int


@dataclass(frozen=True)
class ImageFile:
    path: str
    seed: int
    width: int
    height: int


@dataclass(frozen=True)
class Result:
    job_id: int
    images: tuple[ImageFile, ...]
    engine_seconds: float
    model_version: str


@dataclass(frozen=True)
class Fatal:
    """The engine cannot go on (for example the model would not load) and is exiting."""

    error: str


FailureKind = Literal["bad_request", "failed", "cancelled"]


@dataclass(frozen=True)
class Failed:
    """A job that produced nothing. `bad_request`: the user can fix it; `failed`: the engine
    could not run it; `cancelled`: stopped on request."""

    job_id: int
    error: str
    kind: FailureKind = "failed"


@dataclass(frozen=True)
class VersionActive:
    version: str


@dataclass(frozen=True)
class TrainProgress:
    run_id: int
    step: int
    total: int
    loss: float
    seconds: float


@dataclass(frozen=True)
class TrainDone:
    """Training finished; the new version is saved and already active."""

    run_id: int
    version: str
    path: str
    final_loss: float
    seconds: float


@dataclass(frozen=True)
class TrainFailed:
    run_id: int
    error: str
    cancelled: bool = False


ToEngine = Job | Cancel | Shutdown | UseVersion | Train | CancelTrain
FromEngine = (Loading | Ready | Started | Progress | Result | Failed | Fatal | VersionActive
              | TrainProgress | TrainDone | TrainFailed)

_TYPES: dict[str, type] = {
    cls.__name__: cls
    for cls in (Job, Cancel, Shutdown, UseVersion, Train, CancelTrain, Loading, Ready, Started,
                Progress, Result, Failed, Fatal, VersionActive, TrainProgress, TrainDone,
                TrainFailed)
}
# Fields that hold records or tuples: JSON brings them back as dicts and lists.
_NESTED: dict[tuple[type, str], type | None] = {
    (Job, "aspect"): None,
    (Ready, "option_notes"): None,
    (Result, "images"): ImageFile,
    (UseVersion, "chain"): Adapter,
    (Train, "parents"): Adapter,
    (Train, "examples"): TrainExample,
}


def encode(message: ToEngine | FromEngine) -> bytes:
    """One message as one line of JSON, newline included."""
    body = dataclasses.asdict(message)
    body["type"] = type(message).__name__
    return (json.dumps(body, ensure_ascii=False) + "\n").encode()


def decode(line: bytes | str) -> ToEngine | FromEngine:
    body = json.loads(line)
    cls = _TYPES[body.pop("type")]
    for (owner, name), item in _NESTED.items():
        if owner is cls:
            body[name] = tuple(item(**value) if item else value for value in body[name])
    return cls(**body)
