"""The service with a real engine process and a real SQLite file: limits, /queue, /cancel,
/rate, /history, admin checks, and taking up stored work after a restart."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import sqlite3
from dataclasses import replace
from pathlib import Path

from PIL import Image

from bot import commands as cmd
from bot.cli import build_service
from bot.config import load_settings
from bot.service import OUR_FAULT, Attachment, Service, User
from bot.service.delivery import Delivery
from bot.store import NewJob, Store
from engine.blobs import LocalBlobs, key_of
from engine.params import Params
from tests.conftest import Recorder, engine_process, job_row, write_config

ALICE = User("test", "1001", "alice")
BOB = User("test", "1002", "bob")
SLOW = "--steps 100"  # long enough (~1.5 s on this CPU) to still be running when we look


class Bot:
    """A service on a fresh database, with a recording deliverer for the 'test' platform."""

    def __init__(self, folder: Path, **limits) -> None:
        self.folder = folder
        self.config = write_config(folder, limits=limits, engine={"max_batch": 1},
                                   admins={"telegram": [42]})
        self.settings = load_settings(self.config)
        self.recorder = Recorder()
        self.console = User("console", "console")  # the console user is always an admin

    async def __aenter__(self) -> Bot:
        self.store = await Store.open(self.settings.storage.db)
        self.service: Service = build_service(self.settings, self.store)
        self.service.register("test", self.recorder)
        self.service.register("console", self.recorder)
        await self.service.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.service.stop()
        await self.store.close()

    async def say(self, user: User, text: str, **attachments):
        return await self.service.handle(user, cmd.parse(text), **attachments)

    async def delivered_row(self, job_id: int, timeout: float = 30) -> sqlite3.Row:
        """The job's row once the service has recorded its delivery."""
        await self.recorder.wait(job_id)
        for _ in range(int(timeout / 0.05)):
            if (row := self.row(job_id))["delivered_at"] is not None:
                return row
            await asyncio.sleep(0.05)
        raise AssertionError(f"job {job_id} was never marked delivered")

    def row(self, job_id: int) -> sqlite3.Row:
        return job_row(self.settings.storage.db, job_id)


async def test_a_job_is_stored_before_it_is_queued_and_its_result_before_delivery(tmp_path):
    async with Bot(tmp_path) as bot:
        reply = await bot.say(ALICE, "/imagine a red circle --seed 7 --steps 5")
        assert not reply.error and reply.job_id == 1
        assert bot.row(1)["prompt"] == "a red circle"
        row = await bot.delivered_row(1)
        [image] = bot.recorder.images[1]
        assert row["status"] == "done" and row["delivered_at"] >= row["finished_at"]
        assert image.seed == 7 and await asyncio.to_thread(bot.service.image_file(image).is_file)


async def test_per_user_and_global_limits_answer_busy(tmp_path):
    async with Bot(tmp_path, max_waiting_per_user=2, max_queue=3) as bot:
        first = await bot.say(ALICE, f"/imagine a red circle {SLOW}")
        second = await bot.say(ALICE, f"/imagine a blue circle {SLOW}")
        third = await bot.say(ALICE, f"/imagine a green circle {SLOW}")
        assert not first.error and not second.error
        assert third.error and "limit is 2" in third.text
        bobs = await bot.say(BOB, f"/imagine a red square {SLOW}")
        assert not bobs.error and bobs.position == 3
        full = await bot.say(User("test", "1003"), "/imagine a cat")
        assert full.error and "busy" in full.text and "try again" in full.text


async def test_queue_shows_positions_and_cancel_works_waiting_and_running(tmp_path):
    async with Bot(tmp_path) as bot:
        running = await bot.say(ALICE, f"/imagine a red circle {SLOW}")
        ahead = await bot.say(BOB, f"/imagine a red square {SLOW}")
        waiting = await bot.say(ALICE, f"/imagine a blue circle {SLOW}")
        await bot.recorder.wait_started(running.job_id)

        queue_text = (await bot.say(ALICE, "/queue")).text
        assert f"job #{running.job_id}: generating" in queue_text
        assert f"job #{waiting.job_id}: waiting, position 3" in queue_text
        assert f"#{ahead.job_id}" not in queue_text  # Bob's job is not Alice's business

        refused = await bot.say(BOB, f"/cancel {waiting.job_id}")
        assert refused.error and f"no job #{waiting.job_id}" in refused.text

        cancelled = await bot.say(ALICE, f"/cancel {waiting.job_id}")
        assert cancelled.text == f"Cancelled job #{waiting.job_id}."
        assert bot.row(waiting.job_id)["status"] == "cancelled"
        # A cancelled job no longer counts against her limit of 3 waiting jobs.
        for colour in ("green", "white"):
            assert not (await bot.say(ALICE, f"/imagine a {colour} circle --steps 2")).error

        stopping = await bot.say(ALICE, f"/cancel {running.job_id}")
        assert not stopping.error
        await bot.recorder.wait(running.job_id)
        assert "cancelled" in bot.recorder.failures[running.job_id]
        steps = [step for step, _ in bot.recorder.steps[running.job_id]]
        assert max(steps) < 100
        assert bot.row(running.job_id)["status"] == "cancelled"

        await bot.recorder.wait(ahead.job_id)  # the next user's job still runs
        assert len(bot.recorder.images[ahead.job_id]) == 1
        assert waiting.job_id not in bot.recorder.deliveries


async def test_ratings_are_stored_replaced_and_checked(tmp_path):
    async with Bot(tmp_path) as bot:
        job = await bot.say(ALICE, "/imagine a red circle --steps 3")
        await bot.recorder.wait(job.job_id)
        image_id = bot.recorder.images[job.job_id][0].id

        rated = await bot.say(ALICE, f"/rate {image_id} 4")
        assert f"rated image #{image_id} 4/5" in rated.text
        await bot.say(ALICE, f"/rate {image_id} 2")
        await bot.say(BOB, f"/rate {image_id} 5")
        assert await bot.store.rating(image_id, 1) == 2
        unknown = await bot.say(ALICE, "/rate 999 3")
        assert unknown.error and "no image #999" in unknown.text
        out_of_range = await bot.service.handle(ALICE, cmd.Rate(image_id, 9))
        assert out_of_range.error and "from 1 to 5" in out_of_range.text
        assert await bot.store.rating(image_id, 1) == 2


async def test_reroll_repeats_the_job_with_a_new_seed(tmp_path):
    async with Bot(tmp_path) as bot:
        job = await bot.say(ALICE, "/imagine a red circle --no blue --steps 4 --seed 5 --ar 2:1")
        await bot.recorder.wait(job.job_id)
        image = bot.recorder.images[job.job_id][0]
        again = await bot.service.reroll(BOB, image.id, {"chat": 7})
        await bot.recorder.wait(again.job_id)
        row, source = bot.row(again.job_id), bot.row(job.job_id)
        same = ("kind", "prompt", "width", "height")
        assert [row[k] for k in same] == [source[k] for k in same]
        asked, resolved = Params.from_json(row["params"]), Params.from_json(row["resolved"])
        assert asked.checkpoint == "shapes"  # the model that made the source picture
        unseeded = {"seed": None, "checkpoint": None}
        assert replace(asked, **unseeded) == replace(Params.from_json(source["params"]),
                                                     **unseeded)
        assert replace(resolved, **unseeded) == replace(Params.from_json(source["resolved"]),
                                                        **unseeded)
        assert (asked.negative, resolved.steps) == ("blue", 4)
        assert asked.seed != 5 and row["origin"] == '{"chat": 7}'
        assert bot.recorder.images[again.job_id][0].seed == asked.seed
        missing = await bot.service.reroll(BOB, 999)
        assert missing.error and "no image #999" in missing.text


async def test_history_lists_the_users_images_newest_first(tmp_path):
    async with Bot(tmp_path) as bot:
        assert "no images yet" in (await bot.say(ALICE, "/history")).text
        first = await bot.say(ALICE, "/imagine a red circle --steps 3 --seed 1")
        second = await bot.say(ALICE, "/imagine a blue square --steps 3 --seed 2 --n 2")
        await bot.recorder.wait(second.job_id)
        await bot.recorder.wait(first.job_id)
        lines = (await bot.say(ALICE, "/history")).text.splitlines()[1:]
        assert [line.split(" · ")[0] for line in lines] == ["image #3", "image #2", "image #1"]
        assert "a blue square" in lines[0] and "seed 1" in lines[2]
        assert "no images yet" in (await bot.say(BOB, "/history")).text


async def test_blocked_words_are_refused_politely(tmp_path):
    async with Bot(tmp_path, blocked_words=["Gore"]) as bot:
        refused = await bot.say(ALICE, "/imagine a red circle full of GORE")
        assert refused.error and "'Gore'" in refused.text and "rephrase" in refused.text
        assert not (await bot.say(ALICE, "/imagine a gorgeous red circle --steps 2")).error


async def test_admin_commands_are_refused_to_others(tmp_path):
    async with Bot(tmp_path) as bot:
        refused = await bot.say(User("telegram", "7"), "/retrain")
        assert refused.error and "only the bot's admins" in refused.text
        admin = await bot.say(User("telegram", "42"), "/model list")
        assert not admin.error
        assert admin.text.splitlines() == ["Model versions of shapes:",
                                           "base · the model as shipped ← active"]
        assert not (await bot.say(User("console", "me"), "/retrain status")).error


async def test_work_stored_before_a_crash_is_finished_and_delivered_once(tmp_path):
    settings = load_settings(write_config(tmp_path))
    store = await Store.open(settings.storage.db)
    user = await store.ensure_user("test", "1001")
    # A job stored but never queued (crash between the two) ...
    waiting = await store.add_job(NewJob(user, Params(prompt="a red circle", seed=3, steps=3)))
    # ... and one finished but not yet delivered.
    finished = await store.add_job(NewJob(user, Params(prompt="a blue circle", seed=4, steps=3)))
    await store.save_result(finished, [], 0.1, "base")
    await store.close()

    async with Bot(tmp_path) as bot:
        await bot.recorder.wait(waiting)
        await bot.recorder.wait(finished)
        assert len(bot.recorder.images[waiting]) == 1
    async with Bot(tmp_path) as again:
        pass
    assert again.recorder.deliveries == []  # nothing is delivered twice


async def test_a_killed_engine_is_restarted_and_its_job_retried_once(tmp_path):
    async with Bot(tmp_path) as bot:
        job = await bot.say(ALICE, f"/imagine a red circle {SLOW} --seed 11")
        await bot.recorder.wait_started(job.job_id)
        first_engine = engine_process(bot.service)
        os.kill(first_engine.pid, signal.SIGKILL)

        row = await bot.delivered_row(job.job_id, timeout=60)
        assert row["status"] == "done" and bot.recorder.deliveries == [job.job_id]
        assert bot.recorder.images[job.job_id][0].seed == 11
        assert engine_process(bot.service).pid != first_engine.pid
        assert not bot.service.dispatch.retried  # done with: forgotten, so the set does not grow
        after = await bot.say(BOB, "/imagine a blue square --steps 3")  # still serving
        await bot.recorder.wait(after.job_id)
        assert len(bot.recorder.images[after.job_id]) == 1


async def test_a_failure_on_our_side_gets_a_polite_reply_and_the_bot_goes_on(tmp_path):
    async with Bot(tmp_path) as bot:
        picture = io.BytesIO()
        Image.new("RGB", (32, 32), "red").save(picture, format="PNG")
        # A folder where the upload's blob should be written: that one write fails.
        blobs = LocalBlobs(bot.settings.storage.images / "blobs")
        blobs.path(key_of(picture.getvalue(), ".png")).mkdir(parents=True)
        reply = await bot.say(ALICE, "/vary", image=Attachment(picture.getvalue(), "red.png"))
        assert reply.error and reply.text == OUR_FAULT
        after = await bot.say(BOB, "/imagine a blue square --steps 2")
        await bot.recorder.wait(after.job_id)
        assert len(bot.recorder.images[after.job_id]) == 1


async def test_a_job_that_kills_the_engine_twice_fails_clearly_and_the_bot_goes_on(tmp_path):
    async with Bot(tmp_path) as bot:
        job = await bot.say(ALICE, f"/imagine a red circle {SLOW}")
        for _ in range(2):  # the job is running; its engine dies, twice
            for _ in range(600):
                if bot.row(job.job_id)["status"] == "running":
                    break
                await asyncio.sleep(0.05)
            process = engine_process(bot.service)
            os.kill(process.pid, signal.SIGKILL)
            for _ in range(600):
                replaced = engine_process(bot.service) is not process
                if replaced or job.job_id in bot.recorder.failures:
                    break
                await asyncio.sleep(0.05)
        row = await bot.delivered_row(job.job_id, timeout=60)
        assert row["status"] == "failed"
        assert "stopped twice" in bot.recorder.failures[job.job_id]
        after = await bot.say(BOB, "/imagine a blue square --steps 2")
        await bot.recorder.wait(after.job_id, timeout=60)
        assert len(bot.recorder.images[after.job_id]) == 1


async def test_an_outcome_asked_for_twice_while_on_its_way_goes_out_once(tmp_path):
    """At start a job can be both among the undelivered and answered by a worker that
    finished it meanwhile: its chat still gets one picture."""
    settings = load_settings(write_config(tmp_path))
    store = await Store.open(settings.storage.db)
    user = await store.ensure_user("test", "1001")
    job_id = await store.add_job(NewJob(user, Params(prompt="a blue circle", seed=4, steps=3)))
    await store.save_result(job_id, [], 0.1, "base")
    release = asyncio.Event()

    class SlowChat(Recorder):
        async def deliver_images(self, job, images) -> None:
            await release.wait()
            await super().deliver_images(job, images)

    delivery = Delivery(store)
    chat = SlowChat()
    delivery.register("test", chat)
    job = await store.get_job(job_id)
    delivery.outcome(job)
    delivery.outcome(job)
    release.set()
    await chat.wait(job_id)
    await delivery.finish()
    assert chat.deliveries == [job_id]
    assert (await store.get_job(job_id)).delivered_at
    await store.close()
