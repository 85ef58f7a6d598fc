"""What the engines say, acted on: results and failures stored, then delivered; progress passed
on; and when an engine dies, a new one started and each job it held given one more try."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from bot.learning import Learning
from bot.service.admission import Admission, Progress
from bot.service.delivery import Delivery
from bot.service.models import ModelBoard
from bot.store import NewImage, Store
from engine import protocol
from engine.client import EngineExited, EngineHandle
from engine.pool import EnginePool
from engine.transport.streams import MAX_DELIVERIES

if TYPE_CHECKING:
    from engine.transport.redis import TakenBack

log = logging.getLogger(__name__)

GAVE_UP = ("The image engine stopped twice while making this image, so I gave up on it. "
           "Please try again, perhaps with fewer steps or a smaller size.")
WORKERS_GAVE_UP = ("This image stopped {n} image workers while they made it, so I gave up on "
                   "it. Please try again, perhaps with fewer steps or a smaller size.")
_STOPPED = object()  # put after the engines' exits when the bot stops: the pump's last event
NO_ENGINE = "The image engine stopped and could not be restarted. Please tell the bot's admins."


class Dispatch:
    def __init__(self, store: Store, engines: EnginePool, admission: Admission,
                 delivery: Delivery, learning: Learning, models: ModelBoard) -> None:
        self.models = models
        self.store = store
        self.engines = engines
        self.admission = admission
        self.delivery = delivery
        self.learning = learning
        # Jobs that were in an engine when it died once already; a second death fails them.
        self.retried: set[int] = set()
        # Remote workers that stopped while running each job; MAX_DELIVERIES fail it.
        self.deaths: dict[int, int] = {}
        self.stopping = False  # an engine's exit from then on is expected, not a crash
        self._pump: asyncio.Task | None = None

    def start(self) -> None:
        self._pump = asyncio.create_task(self._pump_events(), name="engine-events")
        self.engines.on_join = self._joined
        if self.engines.joiner is not None:
            self.engines.joiner.on_taken_back = self.taken_back
        # Workers found while the engines started (the bot read the store after that) joined
        # with no one to tell: fed now, or they would wait for jobs forever.
        for handle in self.engines.handles:
            if not handle.restartable:
                self._joined(handle)

    async def stop(self) -> None:
        self.stopping = True
        await self.engines.stop()  # each engine's exit is among the events once this returns
        await self.engines.events.put(_STOPPED)
        if self._pump:
            await self._pump

    async def _pump_events(self) -> None:
        while True:
            event = await self.engines.events.get()
            if event is _STOPPED:
                return
            try:
                if isinstance(event, EngineExited):
                    if self.stopping:
                        continue  # expected; what it held is taken up at the next start
                    if not event.engine.restartable:
                        await self._worker_left(event.engine)
                        continue
                    if not await self._engine_died(event):
                        return
                    continue
                await self._on_event(event)
                self.engines.settle(event)
            except Exception:
                log.exception("could not handle engine event %r", event)

    async def _on_event(self, event: protocol.FromEngine) -> None:
        match event:
            case protocol.Started():
                await self.store.mark_started(event.job_id, event.width, event.height,
                                              event.params)
            case protocol.Progress():
                self.admission.progress[event.job_id] = Progress(event.step, event.total)
                job = self.admission.active.get(event.job_id)
                if job:
                    self.delivery.progress(job, event.step, event.total)
            case protocol.Result():
                images = [NewImage(i.blob, i.seed, i.width, i.height, i.flagged)
                          for i in event.images]
                saved = await self.store.save_result(event.job_id, images, event.engine_seconds,
                                                     event.version, event.worker)
                if saved is None:
                    log.info("job %d was answered twice; the second answer is dropped",
                             event.job_id)
                    return
                await self.finished(event.job_id)
            case protocol.Failed():
                if event.job_id in self.admission.active:
                    await self.fail(event.job_id, event.error,
                                    cancelled=event.kind == "cancelled")
            case protocol.ModelLoaded():
                await self.models.loaded(event)
            case _:
                await self.learning.on_event(event)

    async def finished(self, job_id: int) -> None:
        await self.admission.forget(job_id)
        self.retried.discard(job_id)
        self.deaths.pop(job_id, None)
        job = await self.store.get_job(job_id)
        if job is not None:
            self.delivery.outcome(job)

    async def fail(self, job_id: int, error: str, *, cancelled: bool = False) -> None:
        await self.store.mark_failed(job_id, error, cancelled=cancelled)
        await self.finished(job_id)

    def _joined(self, handle: EngineHandle) -> None:
        """A remote worker came online: the active versions first, then jobs."""
        self.delivery.spawn(self._start_feeding(handle))

    async def _start_feeding(self, handle: EngineHandle) -> None:
        restoring = await self.learning.send_restore(handle)
        handle.feed_from(self.admission.queue)
        await self.learning.await_restore(restoring)

    async def _worker_left(self, handle: EngineHandle) -> None:
        """A remote worker is gone. What it held comes back through taken_back once its
        leases lapse (or at once, if it said goodbye)."""
        trained = self.engines.is_trainer(handle)
        self.engines.leave(handle)
        await self.learning.engine_died(handle.name, trained=trained)

    async def taken_back(self, taken: TakenBack) -> None:
        """Jobs taken back from a remote worker: queued again at the front, in their order; a
        job that has now stopped MAX_DELIVERIES workers fails instead."""
        for job_id in reversed(taken.jobs):
            if job_id not in self.admission.active:
                continue  # finished meanwhile, or cancelled
            if taken.died:
                self.deaths[job_id] = self.deaths.get(job_id, 0) + 1
                if self.deaths[job_id] >= MAX_DELIVERIES:
                    await self.fail(job_id, WORKERS_GAVE_UP.format(n=self.deaths.pop(job_id)))
                    continue
            await self.store.mark_requeued(job_id)
            await self.admission.put_back(await self.store.get_job(job_id))

    async def _engine_died(self, event: EngineExited) -> bool:
        """Start a new engine and give each job it held one more try. False if no engine
        could be started: then every waiting job fails with a clear message."""
        log.error("the engine died (exit code %s) holding jobs %s; restarting it",
                  event.returncode, list(event.in_flight))
        for job_id in reversed(event.in_flight):  # put back at the front, in their order
            if job_id in self.retried:
                await self.fail(job_id, GAVE_UP)
                continue
            self.retried.add(job_id)
            await self.store.mark_requeued(job_id)
            await self.admission.put_back(await self.store.get_job(job_id))
        await self.learning.engine_died()
        self.models.forget_device()
        try:
            await self.engines.restart(event.engine)
        except Exception:
            log.exception("could not restart the engine")
            for job_id in list(self.admission.active):
                self.admission.withdraw(job_id)
                await self.fail(job_id, NO_ENGINE)
            return False
        # The version first, then the jobs: the engine applies what it is sent in order, so
        # no requeued job runs on the base model while a trained version is active.
        restoring = await self.learning.send_restore(event.engine)
        self.engines.feed_from(self.admission.queue, event.engine)
        self.delivery.spawn(self.learning.await_restore(restoring))  # answered via the pump
        return True
