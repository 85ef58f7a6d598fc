"""The fair queue: round robin over chats, then over the users in a chat, FIFO within a user;
priority jobs first; put-back jobs at the very front; waiting() is the serving order."""

from __future__ import annotations

import asyncio
import contextlib

from bot import commands as cmd
from bot.queue import JobQueue
from bot.service import User
from engine.params import Params
from engine.protocol import Job
from tests.test_service import ALICE, SLOW, Bot


def job(job_id: int) -> Job:
    return Job(job_id, Params(prompt=f"job {job_id}", seed=job_id))


async def put(queue: JobQueue, job_id: int, user: str, chat: str | None = None,
              priority: bool = False) -> None:
    await queue.put(job(job_id), user=user, chat=chat or user, priority=priority)


async def drain(queue: JobQueue) -> list[int]:
    """Serve everything, checking on the way that waiting() always foretold the order."""
    foretold = queue.waiting()
    served = []
    while len(queue):
        served.append((await queue.get()).job_id)
        assert queue.waiting() == foretold[len(served):]
    assert served == foretold
    return served


async def test_a_light_user_is_served_second_not_after_a_heavy_users_backlog():
    queue = JobQueue()
    for job_id in range(1, 11):
        await put(queue, job_id, "telegram:1")
    await put(queue, 11, "telegram:2")
    assert await drain(queue) == [1, 11, 2, 3, 4, 5, 6, 7, 8, 9, 10]


async def test_heavy_and_light_users_alternate_in_the_same_chat():
    queue = JobQueue()
    for job_id in range(1, 6):
        await put(queue, job_id, "telegram:1", "telegram:-100")
    for job_id in (6, 7):
        await put(queue, job_id, "telegram:2", "telegram:-100")
    assert await drain(queue) == [1, 6, 2, 7, 3, 4, 5]


async def test_three_users_rotate_in_the_order_they_got_in_line():
    queue = JobQueue()
    for job_id, user in enumerate(["b", "b", "a", "c", "a", "b", "c", "a"], start=1):
        await put(queue, job_id, f"discord:{user}")
    # b first (it came first), then a, then c; each user's own jobs in order
    assert await drain(queue) == [1, 3, 4, 2, 5, 7, 6, 8]


async def test_a_user_who_comes_back_joins_the_end_of_the_rotation():
    queue = JobQueue()
    await put(queue, 1, "u1")
    await put(queue, 2, "u2")
    await put(queue, 3, "u2")
    assert (await queue.get()).job_id == 1  # u1 has nothing left: out of the rotation
    await put(queue, 4, "u3")
    await put(queue, 5, "u1")  # u1 is back, behind u3
    assert await drain(queue) == [2, 4, 5, 3]


async def test_a_quiet_chat_is_not_starved_by_a_flooded_group():
    queue = JobQueue()
    group = "telegram:-100"
    for job_id in range(1, 13):  # four users flood the group, three jobs each
        await put(queue, job_id, f"telegram:{job_id % 4}", group)
    await put(queue, 13, "telegram:9", "telegram:9")  # one job in a private chat
    served = await drain(queue)
    assert served[1] == 13
    # and within the group the four users take turns, each in their own order
    assert served[:6] == [1, 13, 2, 3, 4, 5]
    assert [j for j in served if j % 4 == 1 and j != 13] == [1, 5, 9]


async def test_per_user_order_is_first_in_first_out():
    queue = JobQueue()
    for job_id in (5, 3, 9, 1):
        await put(queue, job_id, "telegram:1")
    assert await drain(queue) == [5, 3, 9, 1]


async def test_priority_jobs_go_first_still_in_turn_among_themselves():
    queue = JobQueue()
    await put(queue, 1, "u1")
    await put(queue, 2, "u2")
    await put(queue, 3, "admin1", priority=True)
    await put(queue, 4, "admin1", priority=True)
    await put(queue, 5, "admin2", priority=True)
    assert await drain(queue) == [3, 5, 4, 1, 2]


async def test_put_back_goes_to_the_very_front():
    queue = JobQueue()
    await put(queue, 1, "u1")
    await put(queue, 2, "u2")
    await put(queue, 3, "admin", priority=True)
    taken = [await queue.get(), await queue.get()]
    assert [j.job_id for j in taken] == [3, 1]
    for back in reversed(taken):  # as the service does after an engine crash
        await queue.put_back(back)
    await put(queue, 4, "admin", priority=True)
    assert queue.waiting() == [3, 1, 4, 2]
    assert await drain(queue) == [3, 1, 4, 2]


async def test_remove_and_waiting_agree_with_the_serving_order():
    queue = JobQueue()
    for job_id, (user, chat) in enumerate(
            [("a", "g"), ("a", "g"), ("b", "g"), ("c", "c"), ("c", "c"), ("a", "g")], start=1):
        await put(queue, job_id, user, chat)
    assert queue.waiting() == [1, 4, 3, 5, 2, 6]
    assert queue.remove(3) and queue.remove(4)
    assert not queue.remove(4) and not queue.remove(99)
    assert len(queue) == 4
    assert queue.waiting() == [1, 5, 2, 6]
    taken = await queue.get()
    await queue.put_back(taken)
    assert queue.remove(1) and queue.waiting() == [5, 2, 6]
    assert await drain(queue) == [5, 2, 6]
    assert len(queue) == 0 and queue.waiting() == []


async def test_queue_positions_follow_the_fair_order(tmp_path):
    """Through the service: a group, a private chat, and an admin whose jobs jump the queue."""
    group, bob, carol = {"chat_id": -100}, {"chat_id": 1002}, {"chat_id": -100}
    async with Bot(tmp_path, max_waiting_per_user=4, admin_priority=True) as bot:
        # Alice's first job goes to the engine (max_batch 1: it holds one); it is long enough
        # to still be running when the test ends.
        alice = [await bot.service.handle(ALICE, cmd.parse(f"/imagine a red circle {SLOW} --n 4"),
                                          origin=group)]
        alice += [await bot.service.handle(ALICE, cmd.parse(f"/imagine circle {i} {SLOW}"),
                                           origin=group) for i in range(3)]
        await bot.recorder.wait_started(alice[0].job_id)
        assert bot.service.queue.waiting() == [job.job_id for job in alice[1:]]

        b1 = await bot.service.handle(User("test", "1002", "bob"), cmd.parse("/imagine a square"),
                                      origin=bob)
        assert b1.position == 3  # after Alice's next one, not after all of hers
        c1 = await bot.service.handle(User("test", "1003", "carol"), cmd.parse("/imagine a square"),
                                      origin=carol)
        assert c1.position == 4  # Carol's turn in the group comes before Alice's others
        admin = await bot.say(bot.console, "/imagine a triangle")
        assert admin.position == 2  # admin_priority: first among the waiting

        text = (await bot.say(ALICE, "/queue")).text
        assert f"job #{alice[1].job_id}: waiting, position 3" in text
        assert f"job #{alice[2].job_id}: waiting, position 6" in text
        assert f"job #{alice[3].job_id}: waiting, position 7" in text
        assert "7 job(s) in the queue in all" in text
        assert bot.service.position(b1.job_id) == 4
        assert bot.service.position(c1.job_id) == 5



async def test_the_next_job_goes_to_a_waiting_engine_that_has_its_model():
    queue = JobQueue()
    wants_sd3 = lambda job: job.params.checkpoint == "sd3"  # noqa: E731
    plain = asyncio.create_task(queue.get())  # waited longest, prefers nothing
    await asyncio.sleep(0)
    warm = asyncio.create_task(queue.get(prefers=wants_sd3))
    await asyncio.sleep(0)
    await queue.put(Job(1, Params(prompt="x", checkpoint="sd3")), user="u1", chat="c")
    await queue.put(Job(2, Params(prompt="y", checkpoint="shapes")), user="u2", chat="c")
    assert (await warm).job_id == 1 and (await plain).job_id == 2


async def test_a_taker_cancelled_as_it_was_handed_a_job_puts_it_back_first():
    queue = JobQueue()
    taker = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    await queue.put(Job(1, Params(prompt="x")), user="u1", chat="c")
    taker.cancel()  # the job was set on its future; the task never ran to take it
    with contextlib.suppress(asyncio.CancelledError):
        await taker
    assert queue.waiting() == [1]
