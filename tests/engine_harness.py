"""An engine in the test's own process, fed from a list: for tests of the engine loop
(tests/test_engine.py) and of what it runs (tests/test_upscale.py)."""

from __future__ import annotations

import queue
from pathlib import Path

import numpy as np
from PIL import Image

from engine import protocol
from engine.blobs import LocalBlobs
from engine.params import Params
from engine.worker import Engine


class Harness:
    """An Engine fed from a list, recording what it sends; `on_send` may react mid-run. Its
    pictures, in and out, live in a blob store in `folder`."""

    def __init__(self, pipelines, folder: Path, max_batch: int, upscaler: str = "") -> None:
        self.sent: list[protocol.FromEngine] = []
        self.inbox: queue.Queue = queue.Queue()
        self.on_send = lambda message: None
        self.blobs = LocalBlobs(folder)
        self.engine = Engine(pipelines, self.blobs, max_batch, self._send, self.inbox, upscaler)

    def _send(self, message: protocol.FromEngine) -> None:
        self.sent.append(message)
        self.on_send(message)

    def run(self, *jobs: protocol.Job) -> dict[int, protocol.Result]:
        self.engine.run_all(list(jobs))
        return {m.job_id: m for m in self.sent if isinstance(m, protocol.Result)}

    def of_type(self, kind: type) -> list:
        return [m for m in self.sent if isinstance(m, kind)]

    def open(self, image: protocol.ImageBlob) -> Image.Image:
        return Image.open(self.blobs.path(image.blob))

    def pixels(self, image: protocol.ImageBlob) -> np.ndarray:
        return np.asarray(self.open(image).convert("RGB")).astype(int)


def job(job_id: int, kind: str, prompt: str, **given) -> protocol.Job:
    return protocol.Job(job_id, Params(kind=kind, prompt=prompt, **given))
