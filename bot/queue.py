"""The job queue between the service and the engine client.

Everything else sees only this small interface, so moving to a shared queue (Redis Streams,
one engine worker per GPU) changes this file alone.

Fair order: jobs are served round robin over chats, and within a chat round robin over the
users who have jobs waiting there; a user's own jobs in a chat go in the order they were asked.
Chats (and users within a chat) take turns in the order they first got in line; one that runs
dry leaves the rotation and joins at the end when it comes back. Chats come first so that a
busy group, however many people flood it, cannot starve a quiet private chat (that chat's job
is at most one turn away), and users within a chat so that one heavy user cannot starve the
others in the same group. A private chat holds one user, so between private chats this is
plain round robin over users. (A user asking in several chats gets a turn in each; the
per-user limit on waiting jobs bounds that.)

Priority jobs (admins', when `limits.admin_priority` is on) are served before all others, in
the same fair order among themselves. A job put back (taken but never sent to an engine) goes
before everything.

Several engines may wait for work at once. The next job in fair order goes to a waiting
engine that prefers it (one that has the job's model in memory), else to the one that has
waited longest: the order stays fair, and a model is loaded only where none has it.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator

from engine.protocol import Job

_FRONT = ("", "", "")  # where put-back jobs live in the index


class _Tier:
    """One level of service: chat -> user -> jobs, each OrderedDict in its turn order."""

    def __init__(self) -> None:
        self.chats: OrderedDict[str, OrderedDict[str, deque[Job]]] = OrderedDict()

    def put(self, job: Job, user: str, chat: str) -> None:
        users = self.chats.setdefault(chat, OrderedDict())  # a new chat joins at the end
        users.setdefault(user, deque()).append(job)  # a new user at the end of the chat's

    def peek(self) -> Job:
        users = next(iter(self.chats.values()))
        return next(iter(users.values()))[0]

    def pop(self) -> Job:
        """The next job in turn; its user and chat move to the end of their rotations."""
        chat, users = next(iter(self.chats.items()))
        user, jobs = next(iter(users.items()))
        job = jobs.popleft()
        if jobs:
            users.move_to_end(user)
        else:
            del users[user]
        if users:
            self.chats.move_to_end(chat)
        else:
            del self.chats[chat]
        return job

    def remove(self, job_id: int, user: str, chat: str) -> None:
        users = self.chats[chat]
        jobs = users[user]
        for index, job in enumerate(jobs):
            if job.job_id == job_id:
                del jobs[index]
                break
        if not jobs:
            del users[user]
            if not users:
                del self.chats[chat]

    def order(self) -> Iterator[Job]:
        """The jobs in the order pop() would give them, if nothing else arrived: turn by
        turn, each chat (each user within it) gives its next job until it runs dry."""
        return _rounds(_rounds(users.values()) for users in self.chats.values())

    def __bool__(self) -> bool:
        return bool(self.chats)


def _rounds(sequences: Iterable[Iterable[Job]]) -> Iterator[Job]:
    """Round robin: the first of each sequence in order, then the second of each, ..."""
    iterators = deque(iter(sequence) for sequence in sequences)
    while iterators:
        iterator = iterators.popleft()
        for job in iterator:
            yield job
            iterators.append(iterator)
            break


class JobQueue:
    """Fair order (see above). One task drains it (the engine client's feeder); the service
    puts jobs in and may take a waiting one out again (/cancel). Each operation costs at most
    the length of one user's waiting jobs; waiting() costs the length of the queue."""

    def __init__(self) -> None:
        self._priority = _Tier()
        self._normal = _Tier()
        self._front: deque[Job] = deque()
        # job id -> (tier, user, chat); _FRONT for put-back jobs
        self._index: dict[int, tuple[str, str, str]] = {}
        # Engines waiting for a job, longest first: what each is to get, and what it prefers.
        self._takers: list[tuple[asyncio.Future[Job], Callable[[Job], bool] | None]] = []
        self._in_transit: dict[int, Job] = {}  # handed to a taker that has not run yet

    async def put(self, job: Job, *, user: str, chat: str, priority: bool = False) -> None:
        """Queue a job for `user` (a platform-qualified user key, e.g. "telegram:123") asking
        in `chat` (a platform-qualified chat key; the user key where there is no chat)."""
        self.remove(job.job_id)  # the same job twice: the later one counts
        tier = "priority" if priority else "normal"
        self._tier(tier).put(job, user, chat)
        self._index[job.job_id] = (tier, user, chat)
        self._hand_out()

    async def get(self, prefers: Callable[[Job], bool] | None = None) -> Job:
        """The next job in fair order, once there is one. `prefers`: the jobs this taker
        would rather have than another waiting taker (see above)."""
        taken: asyncio.Future[Job] = asyncio.get_running_loop().create_future()
        self._takers.append((taken, prefers))
        self._hand_out()
        try:
            job = await taken
        except asyncio.CancelledError:
            self._takers = [taker for taker in self._takers if taker[0] is not taken]
            if taken.done() and not taken.cancelled():  # handed a job as it was cancelled
                self._in_transit.pop(taken.result().job_id, None)
                self._to_front(taken.result())
            raise
        self._in_transit.pop(job.job_id, None)
        return job

    async def put_back(self, job: Job) -> None:
        """Return a job to the very front: it was taken, but never reached an engine."""
        self._to_front(job)

    def _to_front(self, job: Job) -> None:
        self.remove(job.job_id)
        self._front.appendleft(job)
        self._index[job.job_id] = _FRONT
        self._hand_out()

    def _hand_out(self) -> None:
        while self._index and self._takers:
            job = self._next()
            chosen = next((taker for taker in self._takers if taker[1] and taker[1](job)),
                          self._takers[0])
            self._takers.remove(chosen)
            self._pop()
            self._in_transit[job.job_id] = job
            chosen[0].set_result(job)

    def _next(self) -> Job:
        if self._front:
            return self._front[0]
        return (self._priority if self._priority else self._normal).peek()

    def _pop(self) -> Job:
        """Take the next job out: its user and chat move to the end of their rotations."""
        if self._front:
            job = self._front.popleft()
        else:
            job = (self._priority if self._priority else self._normal).pop()
        del self._index[job.job_id]
        return job

    def remove(self, job_id: int) -> bool:
        """Take a waiting job out; False if it is not waiting here (sent on, or unknown)."""
        where = self._index.pop(job_id, None)
        if where is None:
            return False
        if where == _FRONT:
            self._front.remove(next(job for job in self._front if job.job_id == job_id))
            return True
        tier, user, chat = where
        self._tier(tier).remove(job_id, user, chat)
        return True

    def waiting(self) -> list[int]:
        """Ids of the waiting jobs, in the order get() will serve them (if no more arrive)."""
        jobs = [*self._in_transit.values(), *self._front, *self._priority.order(),
                *self._normal.order()]
        return [job.job_id for job in jobs]

    def __len__(self) -> int:
        return len(self._index)

    def _tier(self, name: str) -> _Tier:
        return self._priority if name == "priority" else self._normal
