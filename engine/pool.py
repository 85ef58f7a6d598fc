"""Every engine the bot feeds, behind one face: the service asks the pool, never an engine.

A cancel goes to the engine that holds the job, a version switch to every engine, a training
run to one. Today the pool holds one engine process; workers on other machines join it as
handles over another transport.
"""

from __future__ import annotations

import asyncio

from engine import protocol
from engine.client import EngineHandle, Event, JobSource


class EnginePool:
    def __init__(self, handles: list[EngineHandle]) -> None:
        self.handles = handles
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        for handle in handles:
            handle.events = self.events
        self._trainer: EngineHandle | None = None

    @property
    def ready(self) -> protocol.Ready | None:
        """What the first engine that has started said about itself."""
        return next((handle.ready for handle in self.handles if handle.ready), None)

    @property
    def in_flight(self) -> list[int]:
        """The jobs the engines hold, each engine's oldest first."""
        return [job_id for handle in self.handles for job_id in handle.in_flight]

    async def start(self) -> None:
        for handle in self.handles:
            await handle.start()

    def feed_from(self, source: JobSource, handle: EngineHandle | None = None) -> None:
        """Each engine (or just `handle`, restarted) takes jobs from `source` as it has room."""
        for each in [handle] if handle else self.handles:
            each.feed_from(source)

    async def restart(self, handle: EngineHandle) -> protocol.Ready:
        return await handle.restart()

    async def cancel(self, job_id: int) -> None:
        for handle in self.handles:
            if job_id in handle.in_flight:
                await handle.send(protocol.Cancel(job_id))

    async def use_version(self, switch: protocol.UseVersion,
                          handle: EngineHandle | None = None) -> None:
        """Every engine (or just `handle`, new) generates with this version from now on."""
        for each in [handle] if handle else self.handles:
            await each.send(switch)

    async def train(self, request: protocol.Train) -> None:
        self._trainer = self.handles[0]
        await self._trainer.send(request)

    async def cancel_train(self, request: protocol.CancelTrain) -> None:
        if self._trainer is not None:
            await self._trainer.send(request)

    async def stop(self) -> None:
        for handle in self.handles:
            await handle.stop()
