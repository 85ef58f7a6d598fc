"""`canvas run` on Discord as an operator runs it, killed with SIGKILL while jobs wait and run:
started again, it posts every user's picture, and nobody gets one twice."""

from __future__ import annotations

import asyncio

from tests.conftest import job_statuses, start_bot_process, until, write_config
from tests.fake_discord import BOT_TOKEN, GUILD_ID, FakeDiscord
from tests.test_discord import ALICE


async def test_sigkill_on_discord_loses_no_job_and_posts_no_picture_twice(tmp_path):
    fake = FakeDiscord()
    await fake.start()
    config = write_config(
        tmp_path, discord={"token": BOT_TOKEN, "api_base_url": fake.api_base_url,
                           "gateway_url": fake.gateway_url, "guild_ids": [GUILD_ID]},
        engine={"max_batch": 1}, limits={"max_waiting_per_user": 10})
    db = config.parent / "canvas.db"
    bot = await start_bot_process(config)
    try:
        await asyncio.wait_for(fake.identified.wait(), 60)
        asked = [await fake.slash("imagine", ALICE, prompt="a red circle", steps=60,
                                  seed=seed) for seed in range(4)]
        await until(lambda: job_statuses(db).get(1) == ("done", True))
        bot.kill()
        await bot.wait()
        assert any(status in ("queued", "running") for status, _ in job_statuses(db).values())

        fake.identified.clear()
        bot = await start_bot_process(config)
        await until(lambda: len(job_statuses(db)) == 4
                    and all(delivered for _, delivered in job_statuses(db).values()))
        await asyncio.sleep(1)  # time for a duplicate to show up, if there were one
        pictures = [[m for m in interaction.followups if m.files] for interaction in asked]
        assert [len(posted) for posted in pictures] == [1, 1, 1, 1]
        assert job_statuses(db) == {job: ("done", True) for job in (1, 2, 3, 4)}
    finally:
        if bot.returncode is None:
            bot.terminate()
            await bot.wait()
        await fake.stop()
