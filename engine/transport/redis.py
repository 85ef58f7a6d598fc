"""The bot's end of Redis: remote workers found by their heartbeats and joined to the pool as
engine handles, what they say read from one events stream, and what dead workers held taken
back (engine/transport/streams.py has the keys and the lease scripts).

The bot stays the one authority: it keeps the fair order and hands a worker a job only when the
worker has room (the handle's credit), so Redis holds a few jobs per worker. A worker whose
leases lapse (it died, or lost Redis for longer than a lease) has its jobs taken back with
XAUTOCLAIM and queued again at the front; one that has stopped MAX_DELIVERIES workers fails.
Redis going away is waited out; when it comes back, what it lost is sent again.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import redis.asyncio as aioredis
from redis import exceptions as redis_errors

from engine import protocol
from engine.blobs import LocalBlobs
from engine.client import EngineHandle, Event
from engine.transport import streams

if TYPE_CHECKING:
    from engine.pool import EnginePool

log = logging.getLogger(__name__)

OUTAGE = (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError)
RETRY = 0.5
STOP_WAIT = 5.0  # seconds the bot's stop waits for its Redis tasks
# Blobs up to this size are hashed and written on the event loop (well under a millisecond):
# a trip to a thread and back costs more than that on a busy machine.
INLINE_BLOBS = 256 * 1024
# Passing events (Started, Progress) are acknowledged and deleted together, this long after
# the first of them: not one Redis call each while the worker draws beside the bot.
PASSING_SETTLE_DELAY = 0.5


@dataclass(frozen=True)
class TakenBack:
    """Not a protocol message: jobs taken back from a worker, for the bot to queue again.
    `died`: the worker stopped while running them (each counts towards MAX_DELIVERIES)."""

    jobs: tuple[int, ...]
    died: bool
    worker: str


class WorkerTransport:
    """One remote worker, as the handle sees a transport."""

    restartable = False  # the bot does not start remote workers; they come and go

    def __init__(self, hub: RedisHub, worker: str, record: dict) -> None:
        self.hub = hub
        self.worker = worker
        self.record = record
        self.said: asyncio.Queue[protocol.FromEngine | None] = asyncio.Queue()
        self.closed = False
        self.sent: set[str] = set()  # blobs it keeps (streams.kept_blobs) and was sent

    @property
    def description(self) -> str:
        return f"worker {self.record['name']} ({self.worker}) on {self.record['device']}"

    @property
    def name(self) -> str:
        return self.record["name"]

    async def open(self) -> None:
        await self.said.put(protocol.decode(self.record["ready"]))

    async def send(self, message: protocol.ToEngine) -> None:
        kept = set(streams.kept_blobs(message))
        leave_out = frozenset(self.sent & kept)
        needed = set(streams.blob_keys(message)) - leave_out
        fields = (await asyncio.to_thread(streams.entry, message, self.hub.blobs,
                                          leave_out=leave_out)
                  if needed else streams.entry(message, self.hub.blobs, leave_out=leave_out))
        while not self.closed:
            try:
                await self.hub.redis.xadd(streams.inbox(self.worker), fields)
                self.sent |= kept
                return
            except OUTAGE:
                await asyncio.sleep(RETRY)  # Redis is back soon, or the worker is gone
        raise ConnectionError(f"{self.description} is gone")

    async def receive(self) -> protocol.FromEngine | None:
        return await self.said.get()

    async def close(self, timeout: float) -> int | None:
        """The bot stops: the worker goes on (it serves the next bot)."""
        await self.gone()
        return None

    async def kill(self) -> int | None:
        return None

    async def gone(self) -> None:
        if not self.closed:
            self.closed = True
            await self.said.put(None)


class RedisHub:
    def __init__(self, url: str, blobs: LocalBlobs, lease: float = 10.0) -> None:
        self.redis = aioredis.Redis.from_url(url, socket_timeout=max(5.0, 2 * lease),
                                             health_check_interval=10)
        self.blobs = blobs
        self.lease = lease
        self.transports: dict[str, WorkerTransport] = {}
        self.handles: dict[str, EngineHandle] = {}
        # At start: job id -> the worker holding it (or that answered it); the service adopts
        # these instead of queuing them again.
        self.held: dict[int, str] = {}
        self._unsettled: dict[int, bytes] = {}  # id(event) -> its entry in EVENTS
        self._passed: list[bytes] = []  # passing events' entries, to be dropped together
        # Jobs a worker that left still held, until each is taken back (its entry may be gone
        # with Redis' data, so its stream alone cannot say).
        self._orphans: dict[str, set[int]] = {}
        self._tasks: list[asyncio.Task] = []
        self._pool: EnginePool | None = None
        self._lost_redis = False
        self._redis_back = -float("inf")  # when Redis last came back after an outage
        self._stopping = False
        self.on_taken_back: Callable[[TakenBack], Awaitable[None]] | None = None

    # ---- start and stop ------------------------------------------------------------------

    async def start(self, pool: EnginePool) -> None:
        self._pool = pool
        await self._patiently(self._make_group)
        await self._patiently(self._find_held)
        self._tasks = [asyncio.create_task(self._read_events(), name="redis-events"),
                       asyncio.create_task(self._watch(), name="redis-workers")]

    async def stop(self) -> None:
        if self._passed:  # else the next bot reads them again (and passes them by)
            entries, self._passed = self._passed, []
            with contextlib.suppress(asyncio.TimeoutError, redis_errors.RedisError):
                await asyncio.wait_for(self._drop_event(*entries), RETRY)
        self._stopping = True  # no more tries: a cancel taken for an outage ends here too
        tasks = list(self._tasks)  # each removes itself from the list when done
        for task in tasks:
            task.cancel()
        if tasks:
            _, stuck = await asyncio.wait(tasks, timeout=STOP_WAIT)
            for task in stuck:
                log.warning("Redis task %s did not stop in %.0f s; leaving it", task.get_name(),
                            STOP_WAIT)
        for transport in list(self.transports.values()):
            await transport.gone()
        await self.redis.aclose()

    async def _patiently(self, call: Callable[[], Awaitable]):
        told = False
        while True:
            try:
                return await call()
            except OUTAGE as error:
                if self._stopping:
                    raise asyncio.CancelledError from error
                if not told:
                    log.warning("Redis is unreachable (%s); jobs wait until it is back", error)
                    told = True
                self._lost_redis = True
                await asyncio.sleep(RETRY)
            except redis_errors.ResponseError as error:
                if "NOGROUP" not in str(error):
                    raise
                await self._make_group()  # Redis came back without its data
                await asyncio.sleep(RETRY)

    async def _make_group(self) -> None:
        try:
            await self.redis.xgroup_create(streams.EVENTS, streams.BOT_GROUP, id="0",
                                           mkstream=True)
        except redis_errors.ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise

    async def _find_held(self) -> None:
        """What the workers hold and what they said while the bot was away."""
        for worker in await self._workers():
            for job in await self._jobs_in(worker):
                self.held[job.job_id] = worker
        for _, fields in await self.redis.xrange(streams.EVENTS):
            message = _message(fields)
            if isinstance(message, protocol.Result | protocol.Failed):
                self.held[message.job_id] = fields.get(b"w", b"").decode()

    async def _workers(self) -> list[str]:
        return sorted(member.decode() for member in await self.redis.smembers(streams.WORKERS))

    # ---- workers come and go -------------------------------------------------------------

    async def _watch(self) -> None:
        while not self._stopping:
            try:
                await self._patiently(self._look)
            except Exception:
                log.exception("could not check the workers")
            await asyncio.sleep(self.lease / 4)

    async def _look(self) -> None:
        if self._lost_redis:
            self._lost_redis = False
            self._redis_back = time.monotonic()
            await self._resend_lost()
        for worker in dict.fromkeys([*await self._workers(), *self.transports]):
            raw = await self.redis.get(streams.heartbeat(worker))
            record = json.loads(raw) if raw else None
            if record and worker not in self.transports:
                await self._joined(worker, record)
            elif record is None and worker in self.transports:
                if time.monotonic() - self._redis_back < self.lease:
                    # Redis may have come back without the heartbeat of a worker that lives
                    # and beats again soon: taken for gone, its jobs (sent again just now)
                    # would be taken back a second time and run twice.
                    continue
                await self._left(worker, "its heartbeat stopped")
            if worker in self.transports:
                self.transports[worker].record = record
            await self._take_back(worker, alive=record is not None)

    async def _joined(self, worker: str, record: dict) -> None:
        transport = WorkerTransport(self, worker, record)
        handle = EngineHandle(transport)
        handle.models = set(record.get("models", ()))
        self.transports[worker] = transport
        self.handles[worker] = handle
        await handle.start()
        handle.adopt([job for job in await self._jobs_in(worker)])
        log.info("%s joined: %s free slot(s), models in memory: %s", transport.description,
                 record.get("free"), ", ".join(record.get("models", ())) or "none")
        self._pool.join(handle)

    async def _left(self, worker: str, why: str) -> None:
        transport = self.transports.pop(worker)
        handle = self.handles.pop(worker, None)
        if handle is not None and handle.in_flight:
            self._orphans[worker] = set(handle.in_flight)
        log.warning("%s left (%s)", transport.description, why)
        await transport.gone()

    async def _jobs_in(self, worker: str) -> list[protocol.Job]:
        jobs = []
        for _, fields in await self.redis.xrange(streams.inbox(worker)):
            message = _message(fields)
            if isinstance(message, protocol.Job):
                jobs.append(message)
        return jobs

    async def _take_back(self, worker: str, alive: bool) -> None:
        """Jobs whose lease lapsed (the worker stopped renewing it: it died) go back to the
        bot; and once a worker is gone, the jobs it never read, and then its stream."""
        key = streams.inbox(worker)
        died: list[int] = []
        start = "0-0"
        try:
            while True:
                start, claimed, _ = await self.redis.xautoclaim(
                    key, streams.WORKER_GROUP, streams.BOT_CONSUMER,
                    min_idle_time=int(self.lease * 1000), start_id=start, count=100)
                for entry_id, fields in claimed:
                    message = _message(fields)
                    if isinstance(message, protocol.Job):
                        died.append(message.job_id)
                    await self._drop(key, entry_id)
                if start in (b"0-0", "0-0"):
                    break
            pending = (await self.redis.xpending(key, streams.WORKER_GROUP))["pending"]
        except redis_errors.ResponseError as error:
            if "NOGROUP" not in str(error):
                raise
            pending = 0  # no stream (Redis lost it, or the worker never read): nothing leased
        if died:
            await self._hand_back(TakenBack(tuple(died), True, worker))
        if alive or pending:
            return  # what a dead worker had read is taken back once its lease lapses
        await self._empty_out(worker)

    async def _empty_out(self, worker: str) -> None:
        """A worker gone for good: every job it still held (never begun) back to the bot, and
        its stream deleted."""
        key = streams.inbox(worker)
        jobs = []
        for entry_id, fields in await self.redis.xrange(key):
            message = _message(fields)
            if isinstance(message, protocol.Job):
                jobs.append(message.job_id)
            await self._drop(key, entry_id)
        await self.redis.delete(key)
        await self.redis.srem(streams.WORKERS, worker)
        jobs += sorted(self._orphans.pop(worker, set()) - set(jobs))
        if jobs:
            await self._hand_back(TakenBack(tuple(jobs), False, worker))

    async def _hand_back(self, taken: TakenBack) -> None:
        handle = self.handles.get(taken.worker)
        for job_id in taken.jobs:
            if handle is not None:
                await handle.forget(job_id)
            for orphans in self._orphans.values():
                orphans.discard(job_id)
        log.warning("took back job(s) %s from worker %s (%s)", list(taken.jobs), taken.worker,
                    "it stopped while running them" if taken.died else "it left")
        if self.on_taken_back is not None:
            await self.on_taken_back(taken)

    async def _drop(self, key: str, entry_id: bytes) -> None:
        pipe = self.redis.pipeline()
        pipe.xack(key, streams.WORKER_GROUP, entry_id)
        pipe.xdel(key, entry_id)
        await pipe.execute()

    async def _resend_lost(self) -> None:
        """Redis came back: jobs a worker holds whose entry Redis lost go back to the bot to be
        sent again (none of them ran to an answer the bot has seen)."""
        for transport in self.transports.values():  # what each was sent may be lost too
            transport.sent.clear()
        for worker, handle in list(self.handles.items()):
            present = {job.job_id for job in await self._jobs_in(worker)}
            lost = tuple(job_id for job_id in handle.in_flight if job_id not in present)
            if lost:
                await self._hand_back(TakenBack(lost, False, worker))

    # ---- what the workers say ------------------------------------------------------------

    async def _read_events(self) -> None:
        # First what an earlier run read but never settled (the bot stopped), each once, in
        # order: pending entries after `start`; then new ones.
        start = "0"
        while not self._stopping:
            try:
                answer = await self._patiently(lambda since=start: self.redis.xreadgroup(
                    streams.BOT_GROUP, streams.BOT_CONSUMER, {streams.EVENTS: since},
                    count=64, block=1000))
                entries = answer[0][1] if answer else []
                if start != ">":
                    start = entries[-1][0] if entries else ">"
                for entry_id, fields in entries:
                    await self._on_entry(entry_id, fields)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("could not read the workers' events")
                await asyncio.sleep(RETRY)

    async def _on_entry(self, entry_id: bytes, fields: dict[bytes, bytes]) -> None:
        worker = fields.get(b"w", b"").decode()
        if b"bye" in fields:
            await self._drop_event(entry_id)
            if worker in self.transports:
                await self._left(worker, "it stopped")
            await self._empty_out(worker)  # it held its jobs only to hand them back
            return
        try:
            message = (await asyncio.to_thread(streams.read_entry, fields, self.blobs)
                       if streams.blob_bytes(fields) > INLINE_BLOBS
                       else streams.read_entry(fields, self.blobs))
        except streams.BadEntry as error:
            log.error("dropped a bad event from %s: %s", worker, error)
            await self._drop_event(entry_id)
            return
        if isinstance(message, protocol.Result):
            message = _with_worker(message, self._name_of(worker))
        transport = self.transports.get(worker)
        if isinstance(message, protocol.Fatal):
            log.error("worker %s could not start: %s", worker, message.error)
            await self._drop_event(entry_id)
            return
        lasting = isinstance(message, protocol.Result | protocol.Failed | protocol.TrainDone
                             | protocol.TrainFailed | protocol.VersionActive)
        if lasting:
            self._unsettled[id(message)] = entry_id
        else:  # passed on at once: dropping it is Redis' housekeeping, not the bot's news
            if not self._passed:
                self._in_background(self._drop_passed())
            self._passed.append(entry_id)
        if transport is not None:
            await transport.said.put(message)
        elif lasting:  # from a worker the bot does not know (yet, or any more)
            await self._pool.events.put(message)

    def _name_of(self, worker: str) -> str:
        transport = self.transports.get(worker)
        return transport.name if transport else worker.rsplit("-", 1)[0]

    def settle(self, event: Event) -> None:
        entry_id = self._unsettled.pop(id(event), None)
        if entry_id is not None:
            self._in_background(self._drop_event(entry_id))

    def _in_background(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.append(task)
        task.add_done_callback(self._tasks.remove)

    async def _drop_passed(self) -> None:
        await asyncio.sleep(PASSING_SETTLE_DELAY)
        entries, self._passed = self._passed, []
        if entries:  # stop() may have dropped them meanwhile
            await self._drop_event(*entries)

    async def _drop_event(self, *entry_ids: bytes) -> None:
        async def drop() -> None:
            pipe = self.redis.pipeline()
            pipe.xack(streams.EVENTS, streams.BOT_GROUP, *entry_ids)
            pipe.xdel(streams.EVENTS, *entry_ids)
            await pipe.execute()

        await self._patiently(drop)

    # ---- what /queue says ----------------------------------------------------------------

    def workers_text(self) -> str:
        if not self.transports:
            return "No image workers are online: jobs wait until one comes."
        now = time.time()
        lines = []
        for transport in self.transports.values():
            record = transport.record or {}
            models = ", ".join(record.get("models", ())) or "no model loaded"
            seen = now - record.get("at", now)
            lines.append(f"{record.get('name')} on {record.get('device')} ({models}; "
                         f"{record.get('free', 0)} free, seen {seen:.0f} s ago)")
        return "Workers online: " + "; ".join(lines) + "."


def _message(fields: dict[bytes, bytes]) -> protocol.ToEngine | protocol.FromEngine | None:
    try:
        return protocol.decode(fields[b"m"])
    except (KeyError, ValueError, TypeError):
        return None


def _with_worker(result: protocol.Result, worker: str) -> protocol.Result:
    return dataclasses.replace(result, worker=worker)
