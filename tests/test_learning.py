"""The learning loop on the bundled model: ratings -> /retrain -> versions, while serving."""

from __future__ import annotations

import asyncio
import os
import signal

import numpy as np
from PIL import Image

from bot import learning
from bot.learning import MIN_EXAMPLES
from bot.store import ImageRow
from tests.conftest import engine_process
from tests.test_service import ALICE, BOB, Bot


def pixels(bot: Bot, image: ImageRow) -> np.ndarray:
    return np.asarray(Image.open(bot.service.image_file(image)).convert("RGB")).astype(int)


async def make_rated_images(bot: Bot, count: int, score: int = 5) -> list[int]:
    ids = []
    for seed in range(count):
        job = await bot.say(ALICE, f"/imagine a circle --seed {seed} --steps 4")
        await bot.recorder.wait(job.job_id)
        image_id = bot.recorder.images[job.job_id][0].id
        await bot.say(BOB, f"/rate {image_id} {score}")
        ids.append(image_id)
    return ids


async def image_of(bot: Bot, text: str):
    job = await bot.say(ALICE, text)
    assert not job.error, job.text
    await bot.recorder.wait(job.job_id)
    return bot.recorder.images[job.job_id][0]


async def test_too_few_rated_images_get_a_clear_answer(tmp_path):
    async with Bot(tmp_path, max_waiting_per_user=10) as bot:
        await make_rated_images(bot, 2, score=5)
        reply = await bot.say(bot.console, "/retrain")
        assert reply.error
        assert f"at least {MIN_EXAMPLES} images rated 4 or higher" in reply.text
        assert "there are 2" in reply.text
        refused = await bot.say(BOB, "/retrain")
        assert refused.error and "only the bot's admins" in refused.text


async def test_retrain_makes_an_active_version_and_model_use_rolls_back(tmp_path):
    async with Bot(tmp_path, max_waiting_per_user=10) as bot:
        await make_rated_images(bot, 4)
        before = await image_of(bot, "/imagine a circle --seed 99 --steps 6")
        assert before.version == "base"

        started = await bot.say(bot.console, "/retrain --steps 12 --rank 2")
        assert "Retraining started: v1, from base, on 4 images (4 ratings), 12 steps" \
            in started.text
        await asyncio.wait_for(bot.service.learning.idle(), 120)
        await bot.recorder.announcement("Retraining finished: v1 is now active")

        listing = (await bot.say(bot.console, "/model list")).text
        assert "base · the model as shipped" in listing
        assert "v1 · from base · 4 images, 4 ratings · 12 steps, rank 2" in listing
        assert listing.strip().endswith("← active")

        after = await image_of(bot, "/imagine a circle --seed 99 --steps 6")
        assert after.version == "v1"
        assert np.abs(pixels(bot, after) - pixels(bot, before)).max() > 0

        assert (await bot.say(bot.console, "/model use base")).text == \
            "Now using base for new images."
        rolled_back = await image_of(bot, "/imagine a circle --seed 99 --steps 6")
        assert rolled_back.version == "base"
        assert np.array_equal(pixels(bot, rolled_back), pixels(bot, before))

        await bot.say(bot.console, "/model use v1")
        again = await image_of(bot, "/imagine a circle --seed 99 --steps 6")
        assert np.array_equal(pixels(bot, again), pixels(bot, after))
        unknown = await bot.say(bot.console, "/model use v7")
        assert unknown.error and "no version 'v7'" in unknown.text

    # The active version survives a restart, and the engine is put back on it.
    async with Bot(tmp_path) as restarted:
        image = await image_of(restarted, "/imagine a circle --seed 99 --steps 6")
        assert image.version == "v1"
        assert np.array_equal(pixels(restarted, image), pixels(bot, after))


async def test_the_bot_serves_during_training_and_cancel_keeps_the_version(tmp_path):
    async with Bot(tmp_path, max_waiting_per_user=10) as bot:
        await make_rated_images(bot, 4)
        await bot.say(bot.console, "/retrain --steps 100000")
        second = await bot.say(bot.console, "/retrain")
        assert second.error and "already running" in second.text

        image = await image_of(bot, "/imagine a red circle --steps 4")  # served meanwhile
        assert image.version == "base"
        assert bot.service.learning.run_id is not None

        for _ in range(300):  # the first slice's progress may still be on its way
            status = (await bot.say(bot.console, "/retrain status")).text
            if not status.startswith("Retraining v1 is starting"):
                break
            await asyncio.sleep(0.1)
        assert status.startswith("Retraining v1: step ") and "loss" in status

        await bot.say(bot.console, "/retrain cancel")
        await asyncio.wait_for(bot.service.learning.idle(), 60)
        await bot.recorder.announcement("Retraining was cancelled. Still using base.")
        listing = (await bot.say(bot.console, "/model list")).text
        assert "v1" not in listing and listing.strip().endswith("← active")


async def test_a_restart_during_training_leaves_the_store_consistent(tmp_path):
    async with Bot(tmp_path, max_waiting_per_user=10) as bot:
        await make_rated_images(bot, 4)
        await bot.say(bot.console, "/retrain --steps 100000")
        await asyncio.sleep(1)  # a slice or two of training, then the bot stops
    async with Bot(tmp_path) as restarted:
        run = await restarted.service.learning.versions.run(1)
        assert run.status == "failed" and "Interrupted" in run.error
        assert (await restarted.say(restarted.console, "/retrain status")).text == \
            "No retraining is running. The active version is base."
        image = await image_of(restarted, "/imagine a circle --steps 4")
        assert image.version == "base"


async def test_jobs_taken_up_after_an_engine_crash_run_on_the_active_version(tmp_path):
    """The engine is killed while jobs wait and run: the new engine is put on the trained
    version before it is handed any of them."""
    async with Bot(tmp_path, max_waiting_per_user=10) as bot:
        await make_rated_images(bot, 4)
        await bot.say(bot.console, "/retrain --steps 4 --rank 2")
        await asyncio.wait_for(bot.service.learning.idle(), 120)
        assert (await image_of(bot, "/imagine a circle --seed 1 --steps 3")).version == "v1"
        jobs = [await bot.say(ALICE, f"/imagine a circle --seed {seed} --steps 40")
                for seed in (2, 3, 4)]
        await bot.recorder.wait_started(jobs[0].job_id)
        os.kill(engine_process(bot.service).pid, signal.SIGKILL)
        for job in jobs:
            await bot.recorder.wait(job.job_id, timeout=120)
        versions = [bot.recorder.images[job.job_id][0].version for job in jobs]
        assert versions == ["v1", "v1", "v1"]


async def test_an_active_version_that_cannot_be_loaded_leaves_the_bot_serving_the_base(tmp_path):
    async with Bot(tmp_path, max_waiting_per_user=10) as bot:
        await make_rated_images(bot, 4)
        await bot.say(bot.console, "/retrain --steps 4 --rank 2")
        await asyncio.wait_for(bot.service.learning.idle(), 120)
    [weights] = (tmp_path / "images" / "blobs").rglob("*.safetensors")
    weights.write_bytes(b"not a LoRA at all")  # a disk error, a bad copy

    async with Bot(tmp_path, max_waiting_per_user=10) as bot:  # it starts
        assert (await image_of(bot, "/imagine a circle --seed 1 --steps 3")).version \
            == "base"
        listing = (await bot.say(bot.console, "/model list")).text
        assert listing.startswith("Note: the active version v1 could not be loaded")
        assert "base · the model as shipped ← active" in listing
        status = (await bot.say(bot.console, "/retrain status")).text
        assert "The active version is base." in status and "v1 could not be loaded" in status


async def test_switches_asked_at_once_each_get_their_own_answer_and_the_store_agrees(tmp_path):
    async with Bot(tmp_path, max_waiting_per_user=10) as bot:
        await make_rated_images(bot, 4)
        await bot.say(bot.console, "/retrain --steps 4 --rank 2")
        await asyncio.wait_for(bot.service.learning.idle(), 120)
        replies = await asyncio.wait_for(asyncio.gather(
            bot.say(bot.console, "/model use base"), bot.say(bot.console, "/model use v1"),
            bot.say(bot.console, "/model use base")), 60)
        assert [r.text for r in replies] == ["Now using base for new images.",
                                             "Now using v1 for new images.",
                                             "Now using base for new images."]
        listing = (await bot.say(bot.console, "/model list")).text
        assert "base · the model as shipped ← active" in listing
        assert (await image_of(bot, "/imagine a circle --seed 1 --steps 3")).version \
            == "base"


async def test_a_switch_answered_after_its_caller_gave_up_still_brings_the_store_in_line(
        tmp_path, monkeypatch):
    async with Bot(tmp_path, max_waiting_per_user=10) as bot:
        await make_rated_images(bot, 4)
        await bot.say(bot.console, "/retrain --steps 4 --rank 2")
        await asyncio.wait_for(bot.service.learning.idle(), 120)
        await bot.say(bot.console, "/model use base")
        long_job = await bot.say(ALICE, "/imagine a circle --seed 5 --steps 100")
        await bot.recorder.wait_started(long_job.job_id)
        monkeypatch.setattr(learning, "SWITCH_TIMEOUT", 0.05)  # gives up behind the batch
        timed_out = await bot.say(bot.console, "/model use v1")
        assert timed_out.error
        await bot.recorder.wait(long_job.job_id, timeout=120)
        for _ in range(100):  # the engine switches after the batch; the store follows
            if "v1 · from base" in (listing := (await bot.say(bot.console, "/model list")).text) \
                    and "← active" in listing.split("v1 · from base")[1]:
                break
            await asyncio.sleep(0.1)
        assert "← active" in listing.split("v1 · from base")[1], listing
        assert (await image_of(bot, "/imagine a circle --seed 1 --steps 3")).version \
            == "v1"


async def test_two_retrains_at_once_start_one_run_and_it_finishes(tmp_path):
    async with Bot(tmp_path, max_waiting_per_user=10) as bot:
        await make_rated_images(bot, 4)
        replies = await asyncio.gather(bot.say(bot.console, "/retrain --steps 4 --rank 2"),
                                       bot.say(bot.console, "/retrain --steps 4 --rank 2"))
        started = [r for r in replies if r.text.startswith("Retraining started: v1")]
        refused = [r for r in replies if r.error and "already running" in r.text]
        assert len(started) == 1 and len(refused) == 1, [r.text for r in replies]
        await asyncio.wait_for(bot.service.learning.idle(), 120)
        await bot.recorder.announcement("Retraining finished: v1 is now active")
        assert not [a for a in bot.recorder.announcements if "failed" in a]
