"""What a worker's engine loop says goes out through Redis in order, against a real
redis-server: passing events (Started, Progress) are written without waiting for Redis'
answer (while Redis holds writes back, the engine loop goes on), a lasting one waits for every
answer before its own, and a Redis that stopped and came back loses none of them (its closed
connection is found before an event is written into it)."""

from __future__ import annotations

import time

import redis

from engine import protocol
from engine.blobs import LocalBlobs
from engine.params import Params
from engine.transport import streams
from engine.transport.redis_worker import RedisLink
from tests.redis_server import RedisServer


def said(link: RedisLink) -> list[protocol.FromEngine]:
    return [protocol.decode(fields[b"m"])
            for _, fields in link.redis.xrange(streams.EVENTS) if b"m" in fields]


def test_passing_events_are_not_waited_for_keep_their_order_and_survive_a_restart(tmp_path):
    server = RedisServer(tmp_path / "redis").start()
    try:
        link = RedisLink(server.url, "solo", "cpu", LocalBlobs(tmp_path / "blobs"), lease=10)
        started = [protocol.Started(job_id, Params(prompt="a red circle"), 64, 64, 1)
                   for job_id in range(1, 42)]
        link.send(started[0])
        link.line.flush()  # connected, and Started 1 stored
        watcher = redis.Redis.from_url(server.url)
        watcher.client_pause(10_000, all=False)  # writes wait; reads are answered
        for message in started[1:]:
            link.send(message)
        # The engine loop went on, though Redis has stored none of them yet.
        assert watcher.xlen(streams.EVENTS) == 1 and link.line.owed == 40
        watcher.client_unpause()
        link.send(protocol.VersionActive("v1", "shapes"))  # lasting: waits for all before it
        assert link.line.owed == 0
        assert said(link) == [*started, protocol.VersionActive("v1", "shapes")]

        server.restart()  # its append-only file keeps what it had
        time.sleep(0.2)
        link.send(protocol.Progress(2, 1, 1))
        link.send(protocol.Progress(3, 1, 1))
        link.line.flush()
        assert said(link)[-2:] == [protocol.Progress(2, 1, 1), protocol.Progress(3, 1, 1)]
    finally:
        server.kill()
