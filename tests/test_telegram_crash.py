"""`canvas run` on Telegram as an operator runs it, killed with SIGKILL while jobs wait and
run: started again, it sends every user their photo, and nobody gets one twice."""

from __future__ import annotations

import asyncio
import sqlite3
import sys
from pathlib import Path

from tests import fake_telegram as tg
from tests.conftest import write_config
from tests.test_telegram import _replied_to

SLOW = "--steps 60"  # about a second each on this CPU


async def start_bot(config: Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", "run", "--config", str(config),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)


def jobs(config: Path) -> dict[int, tuple[str, bool]]:
    with sqlite3.connect(config.parent / "canvas.db") as db:
        rows = db.execute("SELECT id, status, delivered_at IS NOT NULL FROM jobs").fetchall()
    return {job: (status, delivered) for job, status, delivered in rows}


async def until(condition, timeout: float = 120) -> None:
    """Poll: the bot is another process, so there is no event of its to wait on."""
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.05)


async def test_sigkill_on_telegram_loses_no_job_and_sends_no_photo_twice(tmp_path):
    fake = tg.FakeTelegram()
    await fake.start()
    config = write_config(tmp_path, telegram={"token": tg.TOKEN, "api_base_url": fake.url},
                          engine={"max_batch": 1}, limits={"max_waiting_per_user": 10})
    bot = await start_bot(config)
    try:
        asked = [await fake.push(tg.message(f"/imagine a red circle {SLOW} --seed {seed}"))
                 for seed in range(4)]
        await fake.wait_for("sendPhoto", timeout=120)
        await until(lambda: jobs(config).get(1) == ("done", True))
        bot.kill()
        await bot.wait()
        assert any(status in ("queued", "running") for status, _ in jobs(config).values())

        bot = await start_bot(config)
        def photos() -> list[tg.Call]:
            return [c for c in fake.calls if c.method == "sendPhoto" and c.result]

        await until(lambda: len(photos()) >= 4)
        await until(lambda: all(d for _, d in jobs(config).values()))
        await asyncio.sleep(1)  # time for a duplicate to show up, if there were one
        answered = sorted(_replied_to(call) for call in photos())
        assert answered == sorted(message["message"]["message_id"] for message in asked)
        assert jobs(config) == {job: ("done", True) for job in (1, 2, 3, 4)}
    finally:
        if bot.returncode is None:
            bot.terminate()
            await bot.wait()
        await fake.stop()
