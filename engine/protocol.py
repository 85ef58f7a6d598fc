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


# ---- engine -> bot ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Ready:
    model: str
    model_version: str
    device: str
    dtype: str
    min_output_size: int = 0  # chats show this model's images enlarged to at least this


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


ToEngine = Job | Cancel | Shutdown
FromEngine = Ready | Started | Progress | Result | Failed | Fatal

_TYPES: dict[str, type] = {
    cls.__name__: cls
    for cls in (Job, Cancel, Shutdown, Ready, Started, Progress, ImageFile, Result, Failed,
                Fatal)
}


def encode(message: ToEngine | FromEngine) -> bytes:
    """One message as one line of JSON, newline included."""
    body = dataclasses.asdict(message)
    body["type"] = type(message).__name__
    return (json.dumps(body, ensure_ascii=False) + "\n").encode()


def decode(line: bytes | str) -> ToEngine | FromEngine:
    body = json.loads(line)
    cls = _TYPES[body.pop("type")]
    if cls is Job:
        body["aspect"] = tuple(body["aspect"])
    if cls is Result:
        body["images"] = tuple(ImageFile(**image) for image in body["images"])
    return cls(**body)
