"""The bot's side of the process boundary: starts the engine process, feeds it jobs from the
queue, and turns what it says into events. Imports only the standard library and
engine.protocol, so the bot process never loads torch."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from engine import protocol

log = logging.getLogger(__name__)

# While loading, the engine says so every LOADING_HEARTBEAT seconds (engine/__main__.py), so
# a long first download goes on; an engine silent for this long is stuck and is stopped.
START_SILENCE = 300.0
STOP_TIMEOUT = 30.0


class EngineError(RuntimeError):
    """The engine could not start, or died."""


@dataclass(frozen=True)
class EngineExited:
    """Not a protocol message: the client's own word that the engine process has gone."""

    returncode: int | None
    in_flight: tuple[int, ...]


Event = protocol.FromEngine | EngineExited


class JobSource(Protocol):
    """What the client takes jobs from (bot/queue.py)."""

    async def get(self) -> protocol.Job: ...

    async def put_back(self, job: protocol.Job) -> None: ...


@dataclass(frozen=True)
class EngineOptions:
    model: str
    device: str
    dtype: str
    max_batch: int  # 0: sized to the device by the engine (engine/batch_size.py)
    images: Path
    compile: bool = False


class EngineClient:
    """One engine process. `in_flight` lists, oldest first, the jobs it holds."""

    def __init__(self, options: EngineOptions) -> None:
        self.options = options
        self.ready: protocol.Ready | None = None
        self.in_flight: dict[int, protocol.Job] = {}
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self._process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task | None = None
        self._feeder: asyncio.Task | None = None
        self._credit = asyncio.Semaphore(0)  # set from the engine's Ready

    async def start(self) -> protocol.Ready:
        opts = self.options
        self._process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "engine", "--model", opts.model, "--device", opts.device,
            "--dtype", opts.dtype, "--max-batch", str(opts.max_batch), "--images", str(opts.images),
            *(["--compile"] if opts.compile else []),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            env=os.environ.copy(), limit=1 << 20,
        )
        first = await self._until_loaded()
        if not isinstance(first, protocol.Ready):
            await self._process.wait()
            reason = first.error if isinstance(first, protocol.Fatal) else "it exited"
            raise EngineError(f"The engine did not start: {reason}")
        self.ready = first
        # The engine holds one batch's worth: enough to fill a batch, few enough that the fair
        # queue, not the engine's arrival order, decides who goes next.
        self._credit = asyncio.Semaphore(max(1, first.max_batch))
        self._reader = asyncio.create_task(self._read_loop(), name="engine-reader")
        log.info("engine ready: %s (%s) on %s, %s", first.model, first.model_version,
                 first.device, first.dtype)
        return first

    async def _until_loaded(self) -> protocol.FromEngine | None:
        """The engine's first message after loading. It says it is still loading every
        LOADING_HEARTBEAT seconds, so a first download may take as long as it takes; an engine
        silent for START_SILENCE seconds is stopped and reported."""
        began = time.monotonic()
        told = began
        while True:
            try:
                message = await asyncio.wait_for(self._read_one(), START_SILENCE)
            except TimeoutError:
                self._process.kill()
                await self._process.wait()
                raise EngineError(
                    f"The engine said nothing for {START_SILENCE:.0f} s while loading "
                    f"{self.options.model}, so it was stopped. Its log (standard error) says "
                    "where it was.") from None
            if not isinstance(message, protocol.Loading):
                return message
            if time.monotonic() - told >= 60:
                told = time.monotonic()
                log.info("the engine is still loading %s (%.0f s so far; a first download "
                         "of a large model takes a while)", self.options.model, told - began)

    def feed_from(self, source: JobSource) -> None:
        """Move jobs from the queue to the engine whenever it has room for more."""
        self._feeder = asyncio.create_task(self._feed(source), name="engine-feeder")

    async def _feed(self, source: JobSource) -> None:
        while True:
            await self._credit.acquire()
            job = await source.get()
            try:
                await self.submit(job)
            except ConnectionError:  # the engine died under us: the job never reached it
                self.in_flight.pop(job.job_id, None)
                await source.put_back(job)
                return

    async def restart(self) -> protocol.Ready:
        """Start a new engine process after the last one died. The jobs it held are forgotten
        here; the caller decides which to queue again."""
        if self._feeder:
            self._feeder.cancel()
        self.in_flight.clear()
        return await self.start()

    async def submit(self, job: protocol.Job) -> None:
        self.in_flight[job.job_id] = job
        await self._send(job)

    async def control(self, message: protocol.UseVersion | protocol.Train
                      | protocol.CancelTrain) -> None:
        """Versions and training: the engine applies these between batches."""
        await self._send(message)

    async def cancel(self, job_id: int) -> None:
        if job_id in self.in_flight:
            await self._send(protocol.Cancel(job_id))

    async def stop(self) -> None:
        """Ask the engine to stop after its current step, and wait for it."""
        if self._feeder:
            self._feeder.cancel()
        process = self._process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ConnectionError):
            await self._send(protocol.Shutdown())
            process.stdin.close()
        try:
            await asyncio.wait_for(process.wait(), STOP_TIMEOUT)
        except TimeoutError:
            log.warning("engine did not stop in %.0f s; killing it", STOP_TIMEOUT)
            process.kill()
            await process.wait()
        if self._reader:
            await self._reader

    async def _send(self, message: protocol.ToEngine) -> None:
        if self._process is None or self._process.stdin.is_closing():
            raise ConnectionError("the engine is not running")
        self._process.stdin.write(protocol.encode(message))
        await self._process.stdin.drain()

    async def _read_loop(self) -> None:
        async for message in self._messages():
            finished = isinstance(message, protocol.Result | protocol.Failed)
            if finished and self.in_flight.pop(message.job_id, None) is not None:
                self._credit.release()
            await self.events.put(message)
        returncode = await self._process.wait()
        lost = tuple(self.in_flight)
        if returncode != 0 or lost:
            log.error("engine exited with code %s holding jobs %s", returncode, list(lost))
        await self.events.put(EngineExited(returncode, lost))

    async def _read_one(self) -> protocol.FromEngine | None:
        """The engine's next message; None when it has closed its output. A line that is not
        a message (a library printing to the wrong stream, say) is logged and skipped: ending
        the read there would leave the bot deaf to an engine that goes on working."""
        while line := await self._process.stdout.readline():
            try:
                return protocol.decode(line)
            except (ValueError, KeyError, TypeError) as error:
                log.error("the engine sent a line that is not a message (%s): %.200r",
                          error, line)
        return None

    async def _messages(self) -> AsyncIterator[protocol.FromEngine]:
        while (message := await self._read_one()) is not None:
            yield message
