"""Messages between the bot process and the engine process.

Every message is a small frozen record of ids, numbers, strings and blob keys, sent as one line
of JSON. Never platform objects, never images, never paths: pictures and LoRA weights travel as
keys of the blob store (engine/blobs.py), which a transport carries to an engine that lacks them.
This module imports only the standard library, because the bot process loads it and must never
import torch.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Literal

from engine.params import Params

# ---- bot -> engine ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Job:
    """One generation job. What `params` does not give, the engine takes from the model."""

    job_id: int
    params: Params


@dataclass(frozen=True)
class ModelSpec:
    """One named model the engine may load: where from, and how to fit it in memory."""

    name: str
    source: str  # bundled:NAME, random:FAMILY, a folder, a hub id, a single .safetensors file
    dtype: str = "auto"
    quantize: str = "none"  # none, 8bit, 4bit (bitsandbytes, CUDA), int8-weights (torchao)
    offload: str = "none"  # none, model, sequential, group (CUDA)
    config: str = ""  # a single file's diffusers config folder (offline machines)
    steps: int | None = None  # this model's defaults, over its family's
    cfg: float | None = None
    description: str = ""
    size: int | None = None  # the side of a square image, over the family's native size


@dataclass(frozen=True)
class Cancel:
    job_id: int


@dataclass(frozen=True)
class Shutdown:
    pass


@dataclass(frozen=True)
class Adapter:
    """One trained LoRA: a version's own weights, a safetensors file in the blob store."""

    version: str
    blob: str


@dataclass(frozen=True)
class UseVersion:
    """Generate from now on with these LoRAs stacked on the model (none: the base)."""

    version: str
    chain: tuple[Adapter, ...] = ()
    checkpoint: str = ""  # which model ("": the default one)


@dataclass(frozen=True)
class TrainExample:
    image: str  # blob key of the picture
    prompt: str
    weight: float


@dataclass(frozen=True)
class Train:
    """Fine-tune a new LoRA, `version`, on top of the `parents` chain, in slices between
    generation batches, and put its weights in the blob store."""

    run_id: int
    version: str
    parents: tuple[Adapter, ...]
    examples: tuple[TrainExample, ...]
    steps: int
    rank: int
    learning_rate: float = 1e-3
    seed: int = 0
    checkpoint: str = ""  # which model ("": the default one)


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
    checkpoint: str
    version: str
    device: str
    dtype: str
    min_output_size: int = 0  # chats show this model's images enlarged to at least this
    max_batch: int = 1  # most images the engine generates at once
    family: str = ""  # the model family, as people call it ("Stable Diffusion XL")
    option_notes: tuple[str, ...] = ()  # how this family takes --cfg and --no, where it differs
    models: tuple[str, ...] = ()  # every model this engine may load, the default first


@dataclass(frozen=True)
class ModelLoaded:
    """A model was put on the device: from disk or from CPU RAM, and what that moved out."""

    name: str
    came_from: str  # "disk" or "cpu"
    seconds: float
    device_bytes: int  # the models on the device take this much now
    native_size: int
    family: str
    evicted: tuple[str, ...] = ()  # moved to CPU RAM (or, on the CPU, dropped) to make room


@dataclass(frozen=True)
class Started:
    """The job's batch began, with these parameters (every default filled in) at this size."""

    job_id: int
    params: Params
    width: int
    height: int
    batch_size: int


@dataclass(frozen=True)
class Order:
    """The jobs the engine holds, in the order it will serve them (it may serve the model in
    memory first for a while: engine/worker.py). Sent when that order changes."""

    job_ids: tuple[int, ...]


@dataclass(frozen=True)
class Progress:
    job_id: int
    step: int
    total: int


@dataclass(frozen=True)
class ImageBlob:
    blob: str  # the PNG's key
    seed: int
    width: int
    height: int
    flagged: bool = False  # the model's safety checker flagged it; kept to be sent hidden


@dataclass(frozen=True)
class Result:
    job_id: int
    images: tuple[ImageBlob, ...]
    engine_seconds: float
    version: str
    worker: str = ""  # the remote worker's name: set by the bot's end of Redis


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
    checkpoint: str = ""
    engine: str = ""  # which engine answered: set by the bot's handle, not by the engine


@dataclass(frozen=True)
class TrainProgress:
    run_id: int
    step: int
    total: int
    loss: float
    seconds: float
    losses: tuple[float, ...] = ()  # each step's loss since the last report, ending at `step`


@dataclass(frozen=True)
class TrainDone:
    """Training finished; the new version is saved and already active."""

    run_id: int
    version: str
    adapter: str  # blob key of the new LoRA's weights
    final_loss: float
    seconds: float


@dataclass(frozen=True)
class TrainFailed:
    run_id: int
    error: str
    cancelled: bool = False


ToEngine = Job | Cancel | Shutdown | UseVersion | Train | CancelTrain
FromEngine = (Loading | Ready | ModelLoaded | Order | Started | Progress | Result | Failed
              | Fatal | VersionActive | TrainProgress | TrainDone | TrainFailed)

_TYPES: dict[str, type] = {
    cls.__name__: cls
    for cls in (Job, Cancel, Shutdown, UseVersion, Train, CancelTrain, Loading, Ready,
                ModelLoaded, Order, Started, Progress, Result, Failed, Fatal, VersionActive,
                TrainProgress, TrainDone, TrainFailed)
}
# Fields that hold records or tuples: JSON brings them back as dicts and lists.
_PARAMS = {(Job, "params"), (Started, "params")}
_NESTED: dict[tuple[type, str], type | None] = {
    (Ready, "option_notes"): None,
    (Ready, "models"): None,
    (ModelLoaded, "evicted"): None,
    (Order, "job_ids"): None,
    (TrainProgress, "losses"): None,
    (Result, "images"): ImageBlob,
    (UseVersion, "chain"): Adapter,
    (Train, "parents"): Adapter,
    (Train, "examples"): TrainExample,
}


def encode(message: ToEngine | FromEngine) -> bytes:
    """One message as one line of JSON, newline included."""
    body = dataclasses.asdict(message)
    for owner, name in _PARAMS:
        if owner is type(message):
            body[name] = getattr(message, name).given()
    body["type"] = type(message).__name__
    return (json.dumps(body, ensure_ascii=False) + "\n").encode()


def decode(line: bytes | str) -> ToEngine | FromEngine:
    body = json.loads(line)
    cls = _TYPES[body.pop("type")]
    for (owner, name), item in _NESTED.items():
        if owner is cls:
            body[name] = tuple(item(**value) if item else value for value in body[name])
    for owner, name in _PARAMS:
        if owner is cls:
            body[name] = Params.from_dict(body[name])
    return cls(**body)
