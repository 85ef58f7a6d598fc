"""`canvas run` on Telegram as an operator runs it, killed with SIGKILL while jobs wait and
run: started again, it sends every user their photo, and nobody gets one twice."""

from __future__ import annotations

import asyncio

from tests import fake_telegram as tg
from tests.conftest import job_statuses, start_bot_process, until, write_config

SLOW = "--steps 60"  # about a second each on this CPU


async def test_sigkill_on_telegram_loses_no_job_and_sends_no_photo_twice(tmp_path):
    fake = tg.FakeTelegram()
    await fake.start()
    config = write_config(tmp_path, telegram={"token": tg.TOKEN, "api_base_url": fake.url},
                          engine={"max_batch": 1}, limits={"max_waiting_per_user": 10})
    db = config.parent / "canvas.db"
    bot = await start_bot_process(config)
    try:
        asked = [await fake.push(tg.message(f"/imagine a red circle {SLOW} --seed {seed}"))
                 for seed in range(4)]
        await fake.wait_for("sendPhoto", timeout=120)
        await until(lambda: job_statuses(db).get(1) == ("done", True))
        bot.kill()
        await bot.wait()
        assert any(status in ("queued", "running") for status, _ in job_statuses(db).values())

        bot = await start_bot_process(config)
        def photos() -> list[tg.Call]:
            return [c for c in fake.calls if c.method == "sendPhoto" and c.result]

        await until(lambda: len(photos()) >= 4)
        await until(lambda: all(d for _, d in job_statuses(db).values()))
        await asyncio.sleep(1)  # time for a duplicate to show up, if there were one
        answered = sorted(tg.replied_to(call) for call in photos())
        assert answered == sorted(message["message"]["message_id"] for message in asked)
        assert job_statuses(db) == {job: ("done", True) for job in (1, 2, 3, 4)}
    finally:
        if bot.returncode is None:
            bot.terminate()
            await bot.wait()
        await fake.stop()
