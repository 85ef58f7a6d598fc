"""The job queue between the service and the engine client.

Everything else sees only this small interface, so moving to a shared queue (Redis Streams,
one engine worker per GPU) changes this file alone.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict

from engine.protocol import Job


class JobQueue:
    """First come, first served. One task drains it (the engine client's feeder); the service
    puts jobs in and may take a waiting one out again (/cancel)."""

    def __init__(self) -> None:
        self._jobs: OrderedDict[int, Job] = OrderedDict()
        self._changed = asyncio.Condition()

    async def put(self, job: Job) -> None:
        async with self._changed:
            self._jobs[job.job_id] = job
            self._changed.notify()

    async def get(self) -> Job:
        async with self._changed:
            await self._changed.wait_for(lambda: bool(self._jobs))
            _, job = self._jobs.popitem(last=False)
            return job

    async def put_back(self, job: Job) -> None:
        """Return a job to the front: it was taken, but never reached an engine."""
        async with self._changed:
            self._jobs[job.job_id] = job
            self._jobs.move_to_end(job.job_id, last=False)
            self._changed.notify()

    def remove(self, job_id: int) -> bool:
        """Take a waiting job out; False if it is not waiting here (sent on, or unknown)."""
        return self._jobs.pop(job_id, None) is not None

    def waiting(self) -> list[int]:
        """Ids of the waiting jobs, next first."""
        return list(self._jobs)

    def __len__(self) -> int:
        return len(self._jobs)
