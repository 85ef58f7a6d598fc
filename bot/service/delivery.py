"""Outcomes and news to the chats they belong to, through the adapter of each platform.

A job's outcome is stored before it comes here, and marked delivered only once its chat has
it, so an outcome that could not be sent (the adapter is down, the chat's API failed) goes out
when the bot next starts.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

from bot.service.types import Deliverer
from bot.store import ImageRow, JobRow, Store

log = logging.getLogger(__name__)


class Delivery:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.deliverers: dict[str, Deliverer] = {}
        self._tasks: set[asyncio.Task] = set()
        self._delivering: set[int] = set()  # job ids whose outcome is on its way

    def register(self, platform: str, deliverer: Deliverer) -> None:
        self.deliverers[platform] = deliverer

    def serves(self, platform: str) -> bool:
        return platform in self.deliverers

    def progress(self, job: JobRow, step: int, total: int) -> None:
        deliverer = self.deliverers.get(job.platform)
        if deliverer:
            self.spawn(deliverer.progress(job, step, total))

    def outcome(self, job: JobRow) -> None:
        """Send a finished job's outcome to its chat, in the background, once: at start the
        same job can be both among the undelivered and answered again by a worker."""
        if job.id in self._delivering:
            return
        self._delivering.add(job.id)
        self.spawn(self._deliver_outcome(job))

    async def _deliver_outcome(self, job: JobRow) -> None:
        try:
            await self._send_outcome(job)
        finally:
            self._delivering.discard(job.id)

    async def _send_outcome(self, job: JobRow) -> None:
        deliverer = self.deliverers.get(job.platform)
        if deliverer is None:
            return  # that adapter is not running now; delivered when it next starts
        try:
            if job.status == "done":
                await deliverer.deliver_images(job, await self.store.images_for_job(job.id))
            elif job.status == "cancelled":
                await deliverer.deliver_failure(job, f"Job #{job.id} was cancelled.")
            else:
                await deliverer.deliver_failure(job, f"Sorry, job #{job.id} failed: {job.error}")
        except Exception:
            log.exception("could not deliver job %d; will retry at next start", job.id)
            return
        await self.store.mark_delivered(job.id)

    def retract(self, job: JobRow, image: ImageRow) -> None:
        """A deleted picture: its message in the chat says so, where the adapter can."""
        deliverer = self.deliverers.get(job.platform)
        retract = getattr(deliverer, "retract", None)
        if retract is not None:
            self.spawn(self._retract(retract, job, image))

    async def _retract(self, retract: Any, job: JobRow, image: ImageRow) -> None:
        try:
            await retract(job, image)
        except Exception:
            log.exception("could not mark image %d deleted in its chat", image.id)

    async def announce(self, platform: str, origin: dict[str, Any], text: str) -> None:
        """A message that belongs to no job (retraining news) to where a command came from.
        Sent in the background: the engine's events must not wait on a chat's API."""
        self.spawn(self._announce(platform, origin, text))

    async def _announce(self, platform: str, origin: dict[str, Any], text: str) -> None:
        deliverer = self.deliverers.get(platform)
        try:
            if deliverer is not None:
                await deliverer.announce(origin, text)
        except Exception:
            log.exception("could not announce on %s: %s", platform, text)

    def spawn(self, coroutine: Coroutine) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def finish(self) -> None:
        """Wait for what is being sent."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
