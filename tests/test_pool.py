"""The engine seam without a process: handles over an in-memory transport, behind the pool.
A cancel reaches only the engine that holds the job, a version switch every engine, a
training run one; a transport's messages arrive as the pool's events."""

from __future__ import annotations

import asyncio

from engine import protocol
from engine.client import EngineExited, EngineHandle
from engine.params import Params
from engine.pool import EnginePool


class MemoryTransport:
    """An engine that is only a pair of queues: what the bot sent, what it will say."""

    def __init__(self, name: str) -> None:
        self.description = name
        self.sent: list[protocol.ToEngine] = []
        self.says: asyncio.Queue[protocol.FromEngine | None] = asyncio.Queue()

    async def open(self) -> None:
        await self.says.put(protocol.Ready(self.description, "base", "cpu", "float32",
                                           max_batch=1))

    async def send(self, message: protocol.ToEngine) -> None:
        self.sent.append(message)

    async def receive(self) -> protocol.FromEngine | None:
        return await self.says.get()

    async def close(self, timeout: float) -> int | None:
        await self.says.put(None)
        return 0

    async def kill(self) -> int | None:
        return 0


class Jobs:
    def __init__(self, *jobs: protocol.Job) -> None:
        self.waiting: asyncio.Queue[protocol.Job] = asyncio.Queue()
        for job in jobs:
            self.waiting.put_nowait(job)

    async def get(self, prefers=None) -> protocol.Job:
        return await self.waiting.get()

    async def put_back(self, job: protocol.Job) -> None:
        await self.waiting.put(job)


def job(job_id: int) -> protocol.Job:
    return protocol.Job(job_id, Params(prompt="a red circle", seed=job_id))


async def until(condition, timeout: float = 5) -> None:
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


async def test_each_message_goes_to_the_engines_it_concerns():
    one, two = MemoryTransport("one"), MemoryTransport("two")
    pool = EnginePool([EngineHandle(one), EngineHandle(two)])
    await pool.start()
    assert pool.ready.checkpoint == "one"
    pool.feed_from(Jobs(job(1), job(2)))  # each engine has room for one job
    await until(lambda: len(pool.in_flight) == 2)
    holder = one if job(1) in one.sent else two
    other = two if holder is one else one

    await pool.cancel(1)
    assert protocol.Cancel(1) in holder.sent and protocol.Cancel(1) not in other.sent

    switch = protocol.UseVersion("v1", (protocol.Adapter("v1", "0" * 64 + ".safetensors"),))
    await pool.use_version(switch)
    assert switch in one.sent and switch in two.sent

    train = protocol.Train(1, "v2", (), (), steps=2, rank=2)
    await pool.train(train)
    await pool.cancel_train(protocol.CancelTrain(1))
    trainers = [t for t in (one, two) if train in t.sent]
    assert len(trainers) == 1 and protocol.CancelTrain(1) in trainers[0].sent
    await pool.stop()


async def test_an_engines_words_and_its_exit_arrive_as_the_pools_events():
    transport = MemoryTransport("one")
    handle = EngineHandle(transport)
    pool = EnginePool([handle])
    await pool.start()
    pool.feed_from(Jobs(job(7)))
    await until(lambda: pool.in_flight == [7])
    await transport.says.put(protocol.Progress(7, 1, 2))
    await transport.says.put(protocol.Failed(7, "Cancelled.", "cancelled"))
    await transport.says.put(None)  # the engine is gone
    events = [await asyncio.wait_for(pool.events.get(), 5) for _ in range(3)]
    assert events == [protocol.Progress(7, 1, 2), protocol.Failed(7, "Cancelled.", "cancelled"),
                      EngineExited(0, ())]
    assert events[-1].engine is handle and pool.in_flight == []


def test_a_job_and_what_ran_cross_the_boundary_as_they_were():
    """Parameters not given stay not given on the way to the engine; blob keys, not paths."""
    asked = protocol.Job(3, Params(kind="img2img", prompt="a fox", seed=9, aspect=(16, 9),
                                   image="a" * 64 + ".png"))
    assert protocol.decode(protocol.encode(asked)) == asked
    assert b'"steps"' not in protocol.encode(asked)
    ran = protocol.Started(3, asked.params.resolve(Params(steps=20, cfg=7.5)).complete(),
                           96, 48, 2)
    again = protocol.decode(protocol.encode(ran))
    assert again == ran and (again.params.steps, again.params.strength) == (20, 0.6)


def test_resolve_takes_the_first_layer_that_gives_each_parameter():
    user = Params(prompt="a fox", steps=12)
    chat = Params(steps=30, cfg=5.0, negative="text")
    model = Params(steps=28, cfg=4.5, checkpoint="sd3")
    assert user.resolve(chat, model) == Params(prompt="a fox", steps=12, cfg=5.0,
                                               negative="text", checkpoint="sd3")
    assert Params(kind="inpaint").resolve(Params(kind="txt2img")).kind == "inpaint"


async def test_the_engines_own_order_is_the_order_the_bot_shows():
    transport = MemoryTransport("one")
    handle = EngineHandle(transport)
    await handle.start()
    for job_id in (1, 2, 3):
        await handle.submit(job(job_id))
    await transport.says.put(protocol.Order((3, 1)))  # job 2 not yet seen by the engine
    await until(lambda: list(handle.in_flight) == [3, 1, 2])
    await transport.says.put(protocol.Result(3, (), 0.1, "base"))
    await until(lambda: list(handle.in_flight) == [1, 2])
    await handle.stop()
