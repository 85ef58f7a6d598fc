"""An engine as a child process on this machine: `python -m engine`, protocol messages as JSON
lines on its standard input and output (engine/__main__.py)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from engine import protocol

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineOptions:
    checkpoint: str  # the default model: its name in `models`, or with none, its source
    device: str
    dtype: str
    max_batch: int  # 0: sized to the device by the engine (engine/batch_size.py)
    blobs: Path  # the blob store's folder, shared with the bot on this machine
    compile: bool = False
    models: tuple[protocol.ModelSpec, ...] = ()  # the default first
    memory: float = 0  # GB of device memory for models; 0: what is free, less headroom
    upscaler: str = ""  # engine.upscaler; "": upscales are a hires fix

    def arguments(self) -> list[str]:
        models = (["--models", json.dumps([dataclasses.asdict(m) for m in self.models])]
                  if self.models else ["--model", self.checkpoint])
        return [*models, "--device", self.device, "--dtype", self.dtype,
                "--max-batch", str(self.max_batch), "--blobs", str(self.blobs),
                "--memory", str(self.memory), *(["--compile"] if self.compile else []),
                *(["--upscaler", self.upscaler] if self.upscaler else [])]


class SubprocessTransport:
    def __init__(self, options: EngineOptions) -> None:
        self.options = options
        self.process: asyncio.subprocess.Process | None = None

    @property
    def description(self) -> str:
        pid = self.process.pid if self.process else "not started"
        return f"{self.options.checkpoint} (engine process {pid})"

    async def open(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "engine", *self.options.arguments(),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            env=os.environ.copy(), limit=1 << 20,
        )

    async def send(self, message: protocol.ToEngine) -> None:
        if self.process is None or self.process.stdin.is_closing():
            raise ConnectionError("the engine is not running")
        self.process.stdin.write(protocol.encode(message))
        await self.process.stdin.drain()

    async def receive(self) -> protocol.FromEngine | None:
        """A line that is not a message (a library printing to the wrong stream, say) is logged
        and skipped: ending the read there would leave the bot deaf to an engine that goes on
        working."""
        while line := await self.process.stdout.readline():
            try:
                return protocol.decode(line)
            except (ValueError, KeyError, TypeError) as error:
                log.error("the engine sent a line that is not a message (%s): %.200r",
                          error, line)
        await self.process.wait()
        return None

    async def close(self, timeout: float) -> int | None:
        process = self.process
        if process is None:
            return None
        if process.returncode is None:
            with contextlib.suppress(ConnectionError):
                await self.send(protocol.Shutdown())
                process.stdin.close()
            try:
                await asyncio.wait_for(process.wait(), timeout)
            except TimeoutError:
                log.warning("engine did not stop in %.0f s; killing it", timeout)
                return await self.kill()
        return process.returncode

    async def kill(self) -> int | None:
        if self.process is None:
            return None
        if self.process.returncode is None:
            self.process.kill()
        return await self.process.wait()
