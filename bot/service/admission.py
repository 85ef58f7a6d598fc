"""Which jobs get in, and where they stand: the limits, the fair queue and the jobs that are
waiting or running. A job is stored before it is queued."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from bot.config import Settings
from bot.errors import UserError
from bot.queue import JobQueue
from bot.service.types import OPERATOR_PLATFORM, Reply, User
from bot.store import JobRow, NewJob, Store
from engine import protocol
from engine.blobs import LocalBlobs, suffix_of
from engine.pool import EnginePool


@dataclass
class Progress:
    step: int = 0
    total: int = 0


def engine_job(job: JobRow) -> protocol.Job:
    return protocol.Job(job.id, job.params)


class Admission:
    def __init__(self, settings: Settings, store: Store, blobs: LocalBlobs, queue: JobQueue,
                 engines: EnginePool, is_admin: Callable[[User], bool]) -> None:
        self.settings = settings
        self.store = store
        self.blobs = blobs
        self.queue = queue
        self.engines = engines
        self.is_admin = is_admin
        self.active: dict[int, JobRow] = {}  # every queued or running job, as stored
        self.progress: dict[int, Progress] = {}
        # Checking the limits and queuing must be one step, or two commands could both pass.
        self._lock = asyncio.Lock()
        self._job_left = asyncio.Condition()
        self.operators: set[int] = set()  # store ids of the console's users

    def seen(self, user: User, user_id: int) -> None:
        if user.platform == OPERATOR_PLATFORM:
            self.operators.add(user_id)

    async def submit(self, new: NewJob) -> Reply:
        operator = new.user_id in self.operators
        while True:
            if operator:
                await self._room_in_queue()
            async with self._lock:
                if operator and len(self.active) >= self.settings.limits.max_queue:
                    continue  # another command took the room first: wait again
                return await self._admit(new, operator=operator)

    async def _room_in_queue(self) -> None:
        """Wait until the queue has room: the operator's piped commands wait for it (so the
        console stops reading) where a chat user's would be refused."""
        async with self._job_left:
            await self._job_left.wait_for(
                lambda: len(self.active) < self.settings.limits.max_queue)

    async def _admit(self, new: NewJob, operator: bool = False) -> Reply:
        key = new.origin.get("request_key")
        if key and (earlier := await self.store.job_for_request(key)) is not None:
            # The platform sent the same request again (Telegram re-sends updates a bot that
            # died had not confirmed): answer with the job it already made, make no other.
            position = self.position(earlier.id)
            state = f"position {position}" if position else earlier.status
            return Reply(f"Already on it: that is job #{earlier.id} ({state}).",
                         job_id=earlier.id, position=position)
        limits = self.settings.limits
        waiting_for_user = sum(1 for job in self.active.values() if job.user_id == new.user_id)
        if waiting_for_user >= limits.max_waiting_per_user and not operator:
            raise UserError(f"You already have {waiting_for_user} job(s) waiting; the limit is "
                            f"{limits.max_waiting_per_user}. Please wait for one to finish.")
        if len(self.active) >= limits.max_queue:
            raise UserError("The bot is busy right now (the queue is full). Please try again "
                            "in a minute.")
        for key, data in new.uploads:
            await asyncio.to_thread(self.blobs.put, data, suffix_of(key))
        job_id = await self.store.add_job(new)
        await self.enqueue(await self.store.get_job(job_id))
        position = self.position(job_id)
        waits = "" if self.engines.online else (
            " No image worker is online right now: your job waits, and runs as soon as one "
            "comes.")
        return Reply(f"Queued job #{job_id}, position {position}.{waits}", job_id=job_id,
                     position=position)

    async def enqueue(self, job: JobRow) -> None:
        self.active[job.id] = job
        user = f"{job.platform}:{job.platform_user_id}"
        chat_id = job.origin.get("chat_id") or job.origin.get("channel_id")  # Telegram, Discord
        priority = self.settings.limits.admin_priority and self.is_admin(
            User(job.platform, job.platform_user_id))
        await self.queue.put(engine_job(job), user=user,
                             chat=f"{job.platform}:{chat_id}" if chat_id else user,
                             priority=priority)

    async def put_back(self, job: JobRow) -> None:
        """At the front: an engine died holding it."""
        await self.queue.put_back(engine_job(job))

    def withdraw(self, job_id: int) -> bool:
        """Take a job that is still waiting out of the queue; False if it is not waiting."""
        return self.queue.remove(job_id)

    async def forget(self, job_id: int) -> None:
        """The job left the queue and the engine: it no longer counts against any limit."""
        self.active.pop(job_id, None)
        self.progress.pop(job_id, None)
        async with self._job_left:
            self._job_left.notify_all()

    async def drained(self, platform: str) -> None:
        """Wait until no job from `platform` is queued or running."""
        async with self._job_left:
            await self._job_left.wait_for(lambda: not self.active_jobs_on(platform))

    # ---- where jobs stand ----------------------------------------------------------------

    def order(self) -> list[int]:
        """Active job ids in the order the engines will finish them: theirs first."""
        return self.engines.in_flight + self.queue.waiting()

    def active_jobs_on(self, platform: str) -> list[int]:
        """Queued and running jobs that came from `platform` (new or taken up at start)."""
        return [job.id for job in self.active.values() if job.platform == platform]

    def latest_of(self, user_id: int) -> int | None:
        mine = [job.id for job in self.active.values() if job.user_id == user_id]
        return mine[-1] if mine else None

    def position(self, job_id: int) -> int | None:
        order = self.order()
        return order.index(job_id) + 1 if job_id in order else None

    def queue_text(self, user_id: int) -> str:
        order = self.order()
        workers = self.engines.joiner.workers_text() if self.engines.joiner else ""
        mine = [job_id for job_id in order
                if job_id in self.active and self.active[job_id].user_id == user_id]
        if not mine:
            return " ".join(filter(None, [
                f"You have no jobs waiting. {len(order)} job(s) in the queue in all.", workers]))
        lines = []
        for job_id in mine:
            progress = self.progress.get(job_id)
            if progress and progress.total:
                lines.append(f"job #{job_id}: generating, {100 * progress.step // progress.total}%")
            else:
                lines.append(f"job #{job_id}: waiting, position {order.index(job_id) + 1}")
        return "\n".join([*lines, f"{len(order)} job(s) in the queue in all.",
                          *filter(None, [workers])])
