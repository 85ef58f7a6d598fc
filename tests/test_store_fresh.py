"""Reads see every commit made before them, however many coroutines read and write at once.

Under load (the 200-user benchmark) a user's first command once failed: the row just written
was not found by the read that followed, because another coroutine's query had left a
statement open on the shared reading connection, holding an older snapshot for everyone."""

from __future__ import annotations

import asyncio
from pathlib import Path

from bot.store import NewJob, Store
from engine.params import Params


async def test_a_write_is_seen_by_the_next_read_while_others_read(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "canvas.db")
    stop = asyncio.Event()

    async def reading() -> None:
        while not stop.is_set():
            await store.active_jobs()

    async def newcomer(number: int) -> tuple[int, bool]:
        user_id = await store.ensure_user("telegram", str(number), f"user {number}")
        job_id = await store.add_job(NewJob(user_id, Params(prompt="a red circle", seed=1)))
        return user_id, await store.get_job(job_id) is not None

    readers = [asyncio.create_task(reading()) for _ in range(4)]
    try:
        found = await asyncio.gather(*(newcomer(n) for n in range(150)))
    finally:
        stop.set()
        await asyncio.gather(*readers)
        await store.close()
    assert all(seen for _, seen in found)
    assert len({user_id for user_id, _ in found}) == 150
