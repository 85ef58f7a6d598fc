"""Every engine the bot feeds, behind one face: the service asks the pool, never an engine.

A cancel goes to the engine that holds the job, a version switch to every engine, a training
run to one. The bot's own engine process is a handle the pool starts; workers on other
machines (engine/transport/redis.py) join and leave as handles while the bot runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

from engine import protocol
from engine.client import EngineHandle, Event, JobSource


class Joiner(Protocol):
    """Where remote engines come from (engine/transport/redis.py RedisHub)."""

    held: dict[int, str]  # job id -> the worker that holds it or has answered it, at start

    async def start(self, pool: EnginePool) -> None: ...

    async def stop(self) -> None: ...

    def settle(self, event: Event) -> None: ...

    def workers_text(self) -> str: ...


class EnginePool:
    def __init__(self, handles: list[EngineHandle], joiner: Joiner | None = None) -> None:
        self.handles = handles
        self.joiner = joiner
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        for handle in handles:
            handle.events = self.events
        self._trainer: EngineHandle | None = None
        # Called with each engine that joins, after its Ready (the service restores versions
        # and starts feeding it).
        self.on_join: Callable[[EngineHandle], object] | None = None

    @property
    def ready(self) -> protocol.Ready | None:
        """What the first engine that has started said about itself."""
        return next((handle.ready for handle in self.handles if handle.ready), None)

    @property
    def in_flight(self) -> list[int]:
        """The jobs the engines hold, each engine's in the order it will serve them."""
        return [job_id for handle in self.handles for job_id in handle.in_flight]

    @property
    def online(self) -> int:
        return sum(1 for handle in self.handles if handle.ready)

    async def start(self) -> None:
        for handle in self.handles:
            await handle.start()
        if self.joiner is not None:
            await self.joiner.start(self)

    def join(self, handle: EngineHandle) -> None:
        """A started engine joins (a remote worker came online)."""
        handle.events = self.events
        self.handles.append(handle)
        if self.on_join is not None:
            self.on_join(handle)

    def leave(self, handle: EngineHandle) -> None:
        handle.stop_feeding()
        if handle in self.handles:
            self.handles.remove(handle)
        if self._trainer is handle:
            self._trainer = None

    def holder(self, job_id: int) -> EngineHandle | None:
        return next((handle for handle in self.handles if job_id in handle.in_flight), None)

    def settle(self, event: Event) -> None:
        """The bot has acted on this event (stored what it said): its transport may forget it."""
        if self.joiner is not None:
            self.joiner.settle(event)

    def feed_from(self, source: JobSource, handle: EngineHandle | None = None) -> None:
        """Each engine the bot started (or just `handle`, restarted or new) takes jobs from
        `source` as it has room. A remote worker is fed once it joins and has its versions
        (on_join)."""
        for each in [handle] if handle else self.handles:
            if handle is not None or each.restartable:
                each.feed_from(source)

    async def restart(self, handle: EngineHandle) -> protocol.Ready:
        return await handle.restart()

    async def cancel(self, job_id: int) -> None:
        for handle in self.handles:
            if job_id in handle.in_flight:
                await handle.send(protocol.Cancel(job_id))

    async def use_version(self, switch: protocol.UseVersion,
                          handle: EngineHandle | None = None,
                          trainer_has_it: bool = False) -> list[str]:
        """Every engine (or just `handle`, new; or all but the one that trained it, which
        uses it already) generates with this version from now on; the names of the engines
        it was sent to, each of which answers it."""
        sent = []
        for each in [handle] if handle else list(self.handles):
            if trainer_has_it and each is self._trainer:
                continue
            try:
                await each.send(switch)
            except ConnectionError:
                continue  # gone: a new engine gets the active versions when it starts
            sent.append(each.name)
        return sent

    async def train(self, request: protocol.Train) -> None:
        """To one engine: the one with the fewest jobs, preferring one with the model."""
        if not self.handles:
            raise ConnectionError("no engine is online")
        self._trainer = min(self.handles, key=lambda handle: (
            request.checkpoint not in handle.models, len(handle.in_flight)))
        await self._trainer.send(request)

    def is_trainer(self, handle: EngineHandle) -> bool:
        return self._trainer is handle

    async def cancel_train(self, request: protocol.CancelTrain) -> None:
        if self._trainer is not None:
            await self._trainer.send(request)

    async def stop(self) -> None:
        if self.joiner is not None:
            await self.joiner.stop()
        for handle in list(self.handles):
            await handle.stop()
