"""What travels through Redis with a job, against a real redis-server: a LoRA file goes to a
worker once, not with every job that names it (a LoRA is tens or hundreds of MB); the pictures
a job brings are removed from the worker's transit folder once it is done with them, but never
a picture it did not bring; and an entry that names a blob by something that is no key is
dropped without stopping the worker."""

from __future__ import annotations

import queue
import time

import redis

from engine import protocol
from engine.blobs import LocalBlobs
from engine.params import Params
from engine.transport import streams
from engine.transport.redis import RedisHub, WorkerTransport
from engine.transport.redis_worker import RedisLink
from tests.redis_server import RedisServer

LORA = b"a LoRA's bytes " * 1000


def job(job_id: int, image: str | None = None, lora: str | None = None) -> protocol.Job:
    return protocol.Job(job_id, Params(prompt="a red circle", seed=job_id, image=image,
                                       loras=((("ink", 1.0, lora),) if lora else None)))


async def test_a_lora_goes_to_a_worker_once_and_again_after_redis_lost_it(tmp_path):
    server = RedisServer(tmp_path / "redis").start()
    try:
        blobs = LocalBlobs(tmp_path / "bot-blobs")
        lora, picture = blobs.put(LORA, ".safetensors"), blobs.put(b"a PNG", ".png")
        hub = RedisHub(server.url, blobs)
        first, second = (WorkerTransport(hub, name, {"name": name, "device": "cpu"})
                         for name in ("alpha-1", "beta-2"))
        hub.transports.update({"alpha-1": first, "beta-2": second})
        for job_id in (1, 2):
            await first.send(job(job_id, picture, lora))
        await second.send(job(3, picture, lora))
        plain = redis.Redis.from_url(server.url)

        def carried(worker: str) -> list[set[str]]:
            return [set(streams.blob_names(fields))
                    for _, fields in plain.xrange(streams.inbox(worker))]

        assert carried("alpha-1") == [{lora, picture}, {picture}]
        assert carried("beta-2") == [{lora, picture}]  # each worker gets its own copy
        plain.delete(streams.inbox("alpha-1"))
        await hub._resend_lost()  # as when Redis comes back without its data
        await first.send(job(4, None, lora))
        assert carried("alpha-1") == [{lora}]
        await hub.redis.aclose()
    finally:
        server.kill()


def test_a_worker_removes_the_pictures_it_brought_once_no_job_needs_them(tmp_path):
    server = RedisServer(tmp_path / "redis").start()
    bot_blobs = LocalBlobs(tmp_path / "bot-blobs")
    ours, shared, lora = (bot_blobs.put(data, suffix) for data, suffix in (
        (b"picture one", ".png"), (b"already there", ".png"), (LORA, ".safetensors")))
    transit = LocalBlobs(tmp_path / "transit")
    transit.put(b"already there", ".png")  # --blobs may name a folder with other pictures
    link = RedisLink(server.url, "alpha", "cpu", transit, lease=5)
    inbox: queue.Queue = queue.Queue()
    try:
        link.start(inbox)
        plain = redis.Redis.from_url(server.url)
        for message in (job(1, ours, lora), job(2, ours), job(3, shared)):
            plain.xadd(link.inbox_key, streams.entry(message, bot_blobs))
        plain.xadd(link.inbox_key, {"m": protocol.encode(job(4)), "b:../../etc": b"x"})
        plain.xadd(link.inbox_key, streams.entry(job(5), bot_blobs))
        received = [inbox.get(timeout=10).job_id for _ in range(4)]
        assert received == [1, 2, 3, 5]  # the bad entry is dropped, the worker reads on
        def finish(job_id: int) -> None:
            result = transit.put(f"job {job_id}'s picture".encode(), ".png")
            link.send(protocol.Result(job_id, (protocol.ImageBlob(result, 1, 64, 64),), 0.1,
                                      "base"))

        finish(1)
        assert transit.has(ours) and transit.has(lora)  # job 2 still needs the picture
        finish(2)
        assert not transit.has(ours) and transit.has(lora)  # a LoRA is kept for later jobs
        finish(3)
        assert transit.has(shared)  # not brought by a job: not the worker's to remove
        deadline = time.monotonic() + 10
        while plain.xlen(streams.EVENTS) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert plain.xlen(streams.EVENTS) == 3
    finally:
        link.stop()
        server.kill()
