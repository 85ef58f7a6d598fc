"""One engine as the bot sees it: its Ready, its credit (how many jobs it may hold at once) and
the jobs it holds, over a transport (engine/transport/). Imports only the standard library and
engine.protocol, so the bot process never loads torch."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from engine import protocol
from engine.transport import Transport
from engine.transport.subprocess import EngineOptions, SubprocessTransport

__all__ = ["EngineError", "EngineExited", "EngineHandle", "EngineOptions", "JobSource",
           "SubprocessTransport"]

log = logging.getLogger(__name__)

# While loading, the engine says so every LOADING_HEARTBEAT seconds (engine/__main__.py), so
# a long first download goes on; an engine silent for this long is stuck and is stopped.
START_SILENCE = 300.0
STOP_TIMEOUT = 30.0


class EngineError(RuntimeError):
    """The engine could not start, or died."""


@dataclass(frozen=True)
class EngineExited:
    """Not a protocol message: the handle's own word that its engine has gone."""

    returncode: int | None
    in_flight: tuple[int, ...]
    engine: Any = field(default=None, compare=False, repr=False)  # the EngineHandle


Event = protocol.FromEngine | EngineExited


class JobSource(Protocol):
    """What a handle takes jobs from (bot/queue.py)."""

    async def get(self, prefers: Callable[[protocol.Job], bool] | None = None
                  ) -> protocol.Job: ...

    async def put_back(self, job: protocol.Job) -> None: ...


class EngineHandle:
    """One engine. `in_flight` lists the jobs it holds in the order it will serve them (as
    sent, unless it said otherwise: protocol.Order); what it says goes to
    `events`, which several handles may share."""

    def __init__(self, transport: Transport, events: asyncio.Queue[Event] | None = None) -> None:
        self.transport = transport
        self.events: asyncio.Queue[Event] = events if events is not None else asyncio.Queue()
        self.ready: protocol.Ready | None = None
        self.in_flight: dict[int, protocol.Job] = {}
        self.models: set[str] = set()  # the models it has in device memory, as it said
        self._reader: asyncio.Task | None = None
        self._feeder: asyncio.Task | None = None
        self._room = asyncio.Condition()  # in_flight shrank

    @property
    def name(self) -> str:
        return self.transport.description

    @property
    def restartable(self) -> bool:
        """Whether the bot starts this engine (and so starts it again when it dies)."""
        return getattr(self.transport, "restartable", True)

    @property
    def credit(self) -> int:
        """How many more jobs it may hold: one batch's worth, enough to fill a batch, few
        enough that the fair queue, not the engine's arrival order, decides who goes next."""
        return max(1, self.ready.max_batch) if self.ready else 0

    async def start(self) -> protocol.Ready:
        await self.transport.open()
        first = await self._until_loaded()
        if not isinstance(first, protocol.Ready):
            await self.transport.kill()
            reason = first.error if isinstance(first, protocol.Fatal) else "it exited"
            raise EngineError(f"The engine did not start: {reason}")
        self.ready = first
        self._reader = asyncio.create_task(self._read_loop(), name="engine-reader")
        log.info("engine ready: %s (%s) on %s, %s", first.checkpoint, first.version,
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
                message = await asyncio.wait_for(self.transport.receive(), START_SILENCE)
            except TimeoutError:
                await self.transport.kill()
                raise EngineError(
                    f"The engine said nothing for {START_SILENCE:.0f} s while loading "
                    f"{self.transport.description}, so it was stopped. Its log (standard "
                    "error) says where it was.") from None
            if not isinstance(message, protocol.Loading):
                return message
            if time.monotonic() - told >= 60:
                told = time.monotonic()
                log.info("%s is still loading (%.0f s so far; a first download of a large "
                         "model takes a while)", self.transport.description, told - began)

    def feed_from(self, source: JobSource) -> None:
        """Move jobs from the queue to the engine whenever it has room for more (once: a
        second call while it is fed does nothing)."""
        if self._feeder is None:
            self._feeder = asyncio.create_task(self._feed(source), name="engine-feeder")

    async def _feed(self, source: JobSource) -> None:
        while True:
            async with self._room:
                await self._room.wait_for(lambda: len(self.in_flight) < self.credit)
            job = await source.get(self.prefers)
            try:
                await self.submit(job)
            except ConnectionError:  # the engine died under us: the job never reached it
                self.in_flight.pop(job.job_id, None)
                await source.put_back(job)
                return

    def stop_feeding(self) -> None:
        if self._feeder:
            self._feeder.cancel()
            self._feeder = None

    async def restart(self) -> protocol.Ready:
        """Start a new engine after the last one died. The jobs it held are forgotten here;
        the caller decides which to queue again."""
        self.stop_feeding()
        self.in_flight.clear()
        return await self.start()

    def prefers(self, job: protocol.Job) -> bool:
        """A job for a model this engine has in memory (None: the default model)."""
        model = job.params.checkpoint or (self.ready.checkpoint if self.ready else None)
        return model in self.models

    def adopt(self, jobs: list[protocol.Job]) -> None:
        """Jobs it held before the bot started (a remote worker's): they count as held."""
        for job in jobs:
            self.in_flight[job.job_id] = job

    async def forget(self, job_id: int) -> None:
        """The job is no longer its to finish (taken back from a worker that stopped)."""
        if self.in_flight.pop(job_id, None) is not None:
            async with self._room:
                self._room.notify_all()

    async def submit(self, job: protocol.Job) -> None:
        self.in_flight[job.job_id] = job
        await self.send(job)

    async def send(self, message: protocol.ToEngine) -> None:
        await self.transport.send(message)

    async def stop(self) -> None:
        """Ask the engine to stop after its current step, and wait for it."""
        self.stop_feeding()
        await self.transport.close(STOP_TIMEOUT)
        if self._reader:
            await self._reader

    def _reorder(self, job_ids: tuple[int, ...]) -> None:
        """The engine's order first; jobs it has not seen yet (in transit) after, as sent."""
        named = [job_id for job_id in job_ids if job_id in self.in_flight]
        seen = set(named)
        rest = [job_id for job_id in self.in_flight if job_id not in seen]
        self.in_flight = {job_id: self.in_flight[job_id] for job_id in [*named, *rest]}

    async def _read_loop(self) -> None:
        while (message := await self.transport.receive()) is not None:
            if isinstance(message, protocol.Order):
                self._reorder(message.job_ids)
                continue
            if isinstance(message, protocol.ModelLoaded):
                self.models = (self.models | {message.name}) - set(message.evicted)
            if isinstance(message, protocol.VersionActive):
                message = dataclasses.replace(message, engine=self.name)
            if isinstance(message, protocol.Result | protocol.Failed):
                await self.forget(message.job_id)
            await self.events.put(message)
        returncode = await self.transport.kill()  # gone already: this reads its exit code
        lost = tuple(self.in_flight)
        if not self.restartable:
            log.info("%s is gone, holding jobs %s", self.transport.description, list(lost))
        elif returncode != 0 or lost:
            log.error("%s exited with code %s holding jobs %s", self.transport.description,
                      returncode, list(lost))
        await self.events.put(EngineExited(returncode, lost, self))
