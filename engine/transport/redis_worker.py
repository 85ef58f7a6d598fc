"""The worker's end of Redis (`canvas worker`): the engine loop's inbox filled from the worker's
stream, what it says sent back as events, and its heartbeat and leases kept up.

Plain threads and redis-py's blocking client, beside the GPU-bound loop in engine/worker.py,
which never waits on the network: a reader thread, a heartbeat thread, and `send`, called from
the loop. Redis going away is waited out: each call is tried again until it answers.

What the loop says goes out on one connection of its own (EventLine), in order. A passing
event (Started, Progress) is written and not waited for, so a job's first step does not wait
for Redis to answer its Started; what lasts (a result) waits for its answer, and so for every
answer before it. A second thread to send them was tried and was slower: while the loop runs
Python, any other thread waits up to the interpreter's 5 ms switch interval for its turn.
"""

from __future__ import annotations

import json
import logging
import queue
import secrets
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import redis

from engine import protocol
from engine.blobs import LocalBlobs, is_key
from engine.transport import streams

log = logging.getLogger(__name__)

RETRY = 0.5  # seconds between tries while Redis is unreachable
PROGRESS_INTERVAL = 0.25  # seconds between a job's progress events


def worker_id(name: str) -> str:
    """One incarnation of a worker: its name and a random tail, so a worker started again
    under the same name never renews, finishes or reads what the old one held."""
    return f"{name}-{secrets.token_hex(3)}"


def default_name() -> str:
    return socket.gethostname()


class EventLine:
    """A connection on which commands are written without waiting for their replies, which
    are read later (Redis answers one connection's commands in order). The engine loop's own
    (and, while the model loads, the thread that says so)."""

    def __init__(self, client: redis.Redis) -> None:
        self.connection = client.connection_pool.make_connection()
        self.owed = 0  # replies not read yet
        self.lock = threading.Lock()

    def tell(self, *command: Any) -> None:
        """Write a command and go on; its reply is read at a later call."""
        with self.lock:
            self._tell(command)

    def ask(self, *command: Any) -> Any:
        """Write a command and wait for its reply, after every reply owed before it."""
        with self.lock:
            return self._ask(command)

    def flush(self) -> None:
        """Read every owed reply (before the worker says goodbye on another connection)."""
        with self.lock:
            try:
                while self.owed:
                    self._read_owed()
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError):
                self.reset()

    def _tell(self, command: tuple) -> None:
        try:
            self._read_ready()
            self._send(command)
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError):
            self.reset()
            raise

    def _ask(self, command: tuple) -> Any:
        try:
            self._read_ready()
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError):
            self.reset()  # closed while idle (Redis restarted): this command opens a new one
        try:
            self._send(command)
            while self.owed > 1:
                self._read_owed()
            self.owed = 0
            return self.connection.read_response()
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError):
            self.reset()
            raise

    def _send(self, command: tuple) -> None:
        # The health check (a PING after an idle spell, which finds a connection that died
        # without a word) only while nothing is owed: its PING would read an owed reply.
        self.connection.send_command(*command, check_health=self.owed == 0)
        self.owed += 1

    def reset(self) -> None:
        """The connection broke: what it owed is lost with it (passing events only; a
        lasting one is asked again)."""
        self.connection.disconnect()
        self.owed = 0

    def _read_ready(self) -> None:
        """The replies that have come; and a connection Redis closed (it stopped) is found
        here, by the poll, before an event is written into it and lost."""
        while self.connection.can_read(timeout=0):
            if self.owed:
                self._read_owed()
            else:  # nothing is owed: a RESP3 push (a server's notice), read and dropped
                self.connection.read_response(push_request=True)

    def _read_owed(self) -> None:
        self.owed -= 1
        try:
            self.connection.read_response()
        except redis.exceptions.ResponseError as error:  # a passing event Redis refused
            log.warning("Redis refused an event: %s", error)


class RedisLink:
    def __init__(self, url: str, name: str, device: str, blobs: LocalBlobs,
                 lease: float) -> None:
        self.redis = redis.Redis.from_url(url, socket_timeout=max(5.0, 2 * lease),
                                          health_check_interval=10)
        self.name = name
        self.id = worker_id(name)
        self.device = device
        self.blobs = blobs
        self.lease = lease
        self.inbox_key = streams.inbox(self.id)
        self.ready: protocol.Ready | None = None
        self.models: set[str] = set()
        self.busy = 0  # jobs held
        self.entries: dict[int, bytes] = {}  # job id -> its entry id (its lease)
        # The pictures jobs held here need, by how many of those jobs: removed with the last.
        self.inputs: dict[int, list[str]] = {}
        self.input_uses: Counter[str] = Counter()
        self._progress_sent: dict[int, float] = {}  # job id -> when its progress last went
        self.stopping = threading.Event()
        self.line = EventLine(self.redis)  # what the engine loop says
        self._renew = self.redis.register_script(streams.RENEW)
        self._lock = threading.Lock()

    # ---- calls that wait out an outage ----------------------------------------------------

    def _patiently(self, call: Callable[[], Any]) -> Any:
        told = False
        while True:
            try:
                return call()
            except redis.exceptions.ResponseError as error:
                if "NOGROUP" not in str(error):
                    raise
                self._make_group()  # Redis restarted without its data
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as error:
                if not told:
                    log.warning("Redis is unreachable (%s); trying again", error)
                    told = True
                if self.stopping.is_set():
                    raise
                time.sleep(RETRY)

    def _make_group(self) -> None:
        try:
            self.redis.xgroup_create(self.inbox_key, streams.WORKER_GROUP, id="0", mkstream=True)
        except redis.exceptions.ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise

    # ---- start, and the threads ---------------------------------------------------------

    def start(self, inbox: queue.Queue) -> None:
        self._patiently(self._make_group)
        threading.Thread(target=self._read, args=(inbox,), daemon=True, name="redis-in").start()
        threading.Thread(target=self._beat, daemon=True, name="heartbeat").start()
        log.info("worker %s (%s) on %s, serving through Redis", self.name, self.id,
                 self.device)

    def stop(self) -> None:
        """Gone on purpose: the bot takes back at once what this worker still holds."""
        self.stopping.set()
        self.line.flush()
        try:
            self.redis.delete(streams.heartbeat(self.id))
            self.redis.xadd(streams.EVENTS, {"bye": "1", "w": self.id})
        except redis.exceptions.RedisError as error:
            log.warning("could not say goodbye to Redis: %s", error)

    def _read(self, inbox: queue.Queue) -> None:
        while not self.stopping.is_set():
            try:
                answer = self._patiently(lambda: self.redis.xreadgroup(
                    streams.WORKER_GROUP, self.id, {self.inbox_key: ">"}, count=16,
                    block=1000))
            except redis.exceptions.RedisError:
                return  # stopping
            for _, entries in answer or []:
                for entry_id, fields in entries:
                    self._take(entry_id, fields, inbox)

    def _take(self, entry_id: bytes, fields: dict[bytes, bytes], inbox: queue.Queue) -> None:
        with self._lock:  # a picture stored here must not go with a job that finishes now
            # Only what this worker stores is its to remove (--blobs may name a folder that
            # holds other pictures too).
            arriving = {key for key in streams.blob_names(fields)
                        if key in self.input_uses or is_key(key) and not self.blobs.has(key)}
            try:
                message = streams.read_entry(fields, self.blobs)
            except streams.BadEntry as error:
                message = None
                log.error("dropped a bad entry %s: %s", entry_id, error)
            if isinstance(message, protocol.Job):
                again = message.job_id in self.entries
                self.entries[message.job_id] = entry_id
                if not again:
                    self.busy += 1
                    self.inputs[message.job_id] = [key for key in streams.job_inputs(message)
                                                   if key in arriving]
                    self.input_uses.update(self.inputs[message.job_id])
        if not isinstance(message, protocol.Job):
            self._settle(entry_id)  # control is not leased: it is applied in order
            if message is not None:
                inbox.put(message)
            return
        if not again:  # a job seen twice (Redis lost its record of our read) runs once
            inbox.put(message)

    def _beat(self) -> None:
        while not self.stopping.wait(self.lease / 4):
            try:
                self._patiently(self._beat_once)
            except redis.exceptions.RedisError as error:
                log.warning("heartbeat failed: %s", error)

    def _beat_once(self) -> None:
        """Renew the leases and say this worker is here; from its Ready on (before, the bot
        knows nothing of it: its inbox is empty)."""
        self._renew(keys=[self.inbox_key], args=[streams.WORKER_GROUP, self.id])
        if self.ready is None:
            return
        credit = max(1, self.ready.max_batch)
        record = {"id": self.id, "name": self.name, "device": self.ready.device,
                  "ready": protocol.encode(self.ready).decode(), "models": sorted(self.models),
                  "free": max(0, credit - self.busy), "at": time.time()}
        pipe = self.redis.pipeline()
        pipe.set(streams.heartbeat(self.id), json.dumps(record), px=int(self.lease * 1000))
        pipe.sadd(streams.WORKERS, self.id)
        pipe.execute()

    # ---- what the engine says -------------------------------------------------------------

    def send(self, message: protocol.FromEngine) -> None:
        """Called by the engine loop for each message it sends."""
        if isinstance(message, protocol.Ready):
            self.ready = message
            self._patiently(self._beat_once)
        if isinstance(message, protocol.ModelLoaded):
            self.models = (self.models | {message.name}) - set(message.evicted)
        if isinstance(message, protocol.Result | protocol.Failed):
            self._progress_sent.pop(message.job_id, None)
            self._finish_job(message)
            return
        if isinstance(message, protocol.Order):
            return  # the bot orders this worker's jobs by what it hands out
        if isinstance(message, protocol.Progress) and not self._progress_due(message):
            return
        fields = streams.entry(message, self.blobs, w=self.id)
        if isinstance(message, PASSING):
            self._tell(fields)
        else:
            self._event(fields)

    def _progress_due(self, message: protocol.Progress) -> bool:
        """A job's progress at most every PROGRESS_INTERVAL (and always its last step): chat
        edits are throttled to seconds anyway, and each event costs the bot and Redis time
        that two fast workers on one machine would rather spend drawing."""
        now = time.monotonic()
        last = self._progress_sent.get(message.job_id, 0.0)
        if message.step < message.total and now - last < PROGRESS_INTERVAL:
            return False
        self._progress_sent[message.job_id] = now
        if message.step >= message.total:
            self._progress_sent.pop(message.job_id, None)
        return True

    def _tell(self, fields: dict) -> None:
        """A passing event, not waited for; if Redis cannot be reached, it is sent the patient
        way (the loop waits out the outage, as for any event)."""
        try:
            self.line.tell("XADD", streams.EVENTS, "*", *_pairs(fields))
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError):
            self._event(fields)

    def _event(self, fields: dict) -> None:
        self._patiently(lambda: self.line.ask("XADD", streams.EVENTS, "*", *_pairs(fields)))

    def _finish_job(self, message: protocol.Result | protocol.Failed) -> None:
        with self._lock:
            entry_id = self.entries.pop(message.job_id, None)
            if entry_id is not None:
                self.busy -= 1
                self._drop_inputs(message.job_id)
        if entry_id is None:
            return
        fields = streams.entry(message, self.blobs, w=self.id)
        # EVAL with the script itself, not EVALSHA: Redis keeps compiled scripts by their hash
        # anyway, and one restarted without them needs no second try.
        kept = self._patiently(lambda: self.line.ask(
            "EVAL", streams.FINISH, 2, self.inbox_key, streams.EVENTS,
            streams.WORKER_GROUP, self.id, entry_id, *_pairs(fields)))
        if not kept:
            log.warning("job %d was taken back by the bot (this worker's lease lapsed); its "
                        "result is dropped, another worker makes it", message.job_id)
        for key in streams.blob_keys(message):  # the bot has the pictures now
            self.blobs.path(key).unlink(missing_ok=True)

    def _drop_inputs(self, job_id: int) -> None:
        """The job's pictures, once no job held here needs them (the caller holds the lock)."""
        for key in self.inputs.pop(job_id, ()):
            self.input_uses[key] -= 1
            if self.input_uses[key] <= 0:
                del self.input_uses[key]
                self.blobs.path(key).unlink(missing_ok=True)

    def _settle(self, entry_id: bytes) -> None:
        def settle() -> None:
            pipe = self.redis.pipeline()
            pipe.xack(self.inbox_key, streams.WORKER_GROUP, entry_id)
            pipe.xdel(self.inbox_key, entry_id)
            pipe.execute()

        self._patiently(settle)


# What the engine says in passing: the bot acts on it at once and no later step depends on it.
PASSING = (protocol.Started, protocol.Progress, protocol.TrainProgress)


def _pairs(fields: dict) -> list:
    return [item for pair in fields.items() for item in pair]
