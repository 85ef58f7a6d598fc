"""The Discord adapter end to end: the real discord.py, the real service, engine process and
bundled model, against a fake Discord on 127.0.0.1 (tests/fake_discord.py). Each test checks
what a user would see: the deferred response, its edits, the follow-up with the PNG, buttons,
ephemeral errors, and channel messages once the interaction token has expired.

One bot serves the whole module (starting the engine costs seconds); the restart test is last.
"""

from __future__ import annotations

import io
import logging
import re
import sqlite3
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
import pytest_asyncio
from PIL import Image

from bot import commands as cmd
from bot.adapters.discord import DiscordAdapter
from bot.cli import build_service
from bot.config import load_settings
from bot.service import Service
from bot.store import JobRow, Store
from bot.web.app import WebServer
from engine.params import Params
from engine.shapes import checker, draw
from tests.conftest import LogLines, free_port, write_config
from tests.fake_discord import (
    APPLICATION_ID,
    BOT_TOKEN,
    EPHEMERAL,
    GUILD_ID,
    FakeDiscord,
    Interaction,
    Message,
)
from tests.lora_file import write_random_lora
from tests.test_safety import flagging_model

pytestmark = pytest.mark.asyncio(loop_scope="module")

ALICE, BOB, ADMIN, CAROL = 111, 222, 333, 444
FAST = 3  # steps for jobs whose picture is not looked at
MAX_IMAGE_BYTES = 200_000
MAX_IMAGE_PIXELS = 1_000_000
COMMAND_NAMES = ["imagine", "vary", "inpaint", "upscale", "rate", "cancel", "queue", "models",
                 "loras", "styles", "settings", "history", "delete", "optout", "optin",
                 "forgetme", "web", "help", "retrain", "model"]


class World:
    """The fake Discord and a bot (service + DiscordAdapter) on one data folder."""

    def __init__(self, folder: Path) -> None:
        self.fake = FakeDiscord()
        self.folder = folder
        self.logs = LogLines()
        self.red_circle: Message | None = None  # the /imagine result, for the prompt check

    async def start_fake(self) -> None:
        await self.fake.start()
        config = write_config(
            self.folder,
            discord={"token": BOT_TOKEN, "api_base_url": self.fake.api_base_url,
                     "gateway_url": self.fake.gateway_url, "guild_ids": [GUILD_ID]},
            admins={"discord": [ADMIN]},
            engine={"max_batch": 1, "loras": str(self.loras()), "models": {
                "shapes": {"source": "bundled:shapes"},
                "shapes-sd3": {"source": "bundled:shapes-sd3"},
                "checked": {"source": str(flagging_model(self.folder))}}},
            web={"listen": f"127.0.0.1:{free_port()}"},
            limits={"max_image_bytes": MAX_IMAGE_BYTES, "max_image_pixels": MAX_IMAGE_PIXELS})
        self.settings = load_settings(config)

    def loras(self) -> Path:
        """engine.loras: one LoRA for the bundled model, "ink", and two names that share a
        prefix with it."""
        folder = self.folder / "loras"
        for name, seed in (("ink", 0), ("inkwash", 1), ("indigo", 2)):
            write_random_lora(folder / f"{name}.safetensors", seed=seed)
        return folder

    async def start_bot(self) -> None:
        self.store = await Store.open(self.settings.storage.db)
        self.service: Service = build_service(self.settings, self.store)
        self.adapter = DiscordAdapter(self.service, self.settings)
        self.web = WebServer(self.service, self.settings)
        await self.adapter.start()
        await self.web.start()
        await self.service.start()

    async def stop_bot(self) -> None:
        await self.adapter.stop()
        await self.web.stop()
        await self.service.stop()
        await self.store.close()

    async def result(self, interaction: Interaction, timeout: float = 60) -> Message:
        """The follow-up that carries the pictures."""
        return await self.fake.wait_for(
            lambda: next((m for m in interaction.followups if m.files), None), timeout)

    async def answer(self, interaction: Interaction) -> Message:
        """The one message an interaction ends with: its ephemeral reply or its edited
        response (whichever comes first)."""
        def done() -> Message | None:
            if interaction.followups:
                return interaction.followups[0]
            original = interaction.original
            if original is not None and (original.edits or interaction.callback["type"] == 4):
                return original
            return None
        return await self.fake.wait_for(done)

    def db(self, sql: str, *params: Any) -> list[sqlite3.Row]:
        connection = sqlite3.connect(self.settings.storage.db)
        connection.row_factory = sqlite3.Row
        try:
            return connection.execute(sql, params).fetchall()
        finally:
            connection.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory):
    world = World(tmp_path_factory.mktemp("discord"))
    logging.getLogger().addHandler(world.logs)
    discord_logger = logging.getLogger("discord")
    old_level = discord_logger.level
    discord_logger.setLevel(logging.DEBUG)  # discord.py's request logs, to check for tokens
    await world.start_fake()
    await world.start_bot()
    yield world
    await world.stop_bot()
    await world.fake.stop()
    discord_logger.setLevel(old_level)
    logging.getLogger().removeHandler(world.logs)


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def picture(message: Message, index: int = 0) -> Image.Image:
    attached = message.files[index]
    assert attached.filename.endswith(".png")
    image = Image.open(io.BytesIO(attached.data))
    assert image.format == "PNG"
    return image


def assert_matches(image: Image.Image, shape: str, colour: str, background: str) -> None:
    """The picture shows what the prompt asked for, read by the shapes checker."""
    seen = checker.read(image)
    assert (seen.shape, seen.colour, seen.background) == (shape, colour, background), seen


def assert_ephemeral_error(message: Message, *words: str) -> None:
    assert message.ephemeral, message
    for word in words:
        assert word in message.content, (word, message.content)


# ---- start -----------------------------------------------------------------------------------


async def test_login_syncs_typed_commands_to_the_test_guild(world: World):
    assert world.fake.identified.is_set()
    assert world.fake.syncs == [(GUILD_ID, COMMAND_NAMES)]
    assert world.fake.requests[:2] == ["GET /api/v10/users/@me",
                                       "GET /api/v10/oauth2/applications/@me"]
    imagine = {o["name"]: o for o in world.fake.commands["imagine"]["options"]}
    assert list(imagine) == ["prompt", "negative", "seed", "steps", "cfg", "aspect", "n", "model",
                             "style", "loras"]
    assert imagine["prompt"]["required"] and imagine["prompt"]["description"]
    assert imagine["steps"]["type"] == 4 and imagine["steps"]["max_value"] == cmd.MAX_STEPS
    assert imagine["cfg"]["type"] == 10
    assert {"name": "16:9 wide", "value": "16:9"} in imagine["aspect"]["choices"]
    assert imagine["model"]["autocomplete"]
    inpaint = {o["name"]: o["type"] for o in world.fake.commands["inpaint"]["options"]}
    assert inpaint["image"] == inpaint["mask"] == 11  # attachments


# ---- imagine ---------------------------------------------------------------------------------


async def test_imagine_defers_shows_the_queue_and_posts_the_picture(world: World):
    fake = world.fake
    asked = await fake.slash("imagine", ALICE, prompt="a red circle on a blue background",
                             seed=1234)
    result = await world.result(asked)

    assert asked.callback == {"type": 5}  # deferred publicly: "Magic Canvas is thinking…"
    assert asked.callback_after < 3
    edits = [edit["content"] for edit in asked.original.edits]
    assert edits[0].startswith("Queued job #") and "position 1" in edits[0]
    progress = [e for e in asked.original.edits if "step" in e["content"]]
    assert progress and "%" in progress[0]["content"]
    gaps = [b["at"] - a["at"] for a, b in zip(progress, progress[1:], strict=False)]
    assert all(gap >= 1.9 for gap in gaps), gaps
    await fake.wait_for(lambda: asked.original.deleted)  # it gives way to the result

    assert result.content.startswith(f"<@{ALICE}>") and result.mentions == [str(ALICE)]
    [embed] = result.embeds
    [job] = world.db("SELECT * FROM jobs WHERE origin LIKE ?", f"%{asked.id}%")
    [image] = world.db("SELECT * FROM images WHERE job_id = ?", job["id"])
    assert embed["title"] == "a red circle on a blue background"
    fields = {f["name"]: f["value"] for f in embed["fields"]}
    assert fields == {"Seed": "1234", "Image": f"#{image['id']}",
                      "Model": image["version"]}
    assert result.custom_ids == [
        f"mc:vary:{image['id']}:subtle", f"mc:vary:{image['id']}:strong",
        f"mc:reroll:{image['id']}", f"mc:upscale:{image['id']}"] + [
        f"mc:rate:{image['id']}:{score}" for score in range(1, 6)]

    assert picture(result).size == (256, 256)  # the 64-pixel result, enlarged for the chat
    world.red_circle = result


async def test_the_posted_picture_matches_the_prompt(world: World):
    assert world.red_circle is not None, "runs after the /imagine test"
    assert_matches(picture(world.red_circle), "circle", "red", "blue")


async def test_model_option_autocompletes_the_model_names(world: World):
    typed = await world.fake.autocomplete("imagine", ALICE, "model", "sha")
    await world.fake.wait_for(lambda: typed.callback)
    names = ["shapes", "shapes-sd3"]  # every configured model whose name has "sha"
    assert typed.callback == {"type": 8, "data": {"choices": [
        {"name": name, "value": name} for name in names]}}


async def test_several_pictures_come_in_one_message_with_a_vary_button_each(world: World):
    asked = await world.fake.slash("imagine", BOB, prompt="a green square", n=2, steps=FAST)
    result = await world.result(asked)
    assert len(result.files) == 2 and len(asked.followups) == 1
    ids = [row["id"] for row in world.db(
        "SELECT images.id FROM images JOIN jobs ON jobs.id = images.job_id "
        "WHERE jobs.origin LIKE ? ORDER BY images.idx", f"%{asked.id}%")]
    assert len(ids) == 2
    assert [c for c in result.custom_ids if ":vary:" in c] == [f"mc:vary:{i}" for i in ids]
    assert len([c for c in result.custom_ids if ":rate:" in c]) == 10
    assert all(picture(result, i).size == (256, 256) for i in range(2))


async def test_progress_edits_are_throttled_to_the_latest_value(world: World):
    asked = await world.fake.slash("help", ALICE)
    await world.answer(asked)
    blank = {name: None for name in JobRow.__dataclass_fields__}
    row = replace(JobRow(**blank), id=999, params=Params(prompt="a slow red circle"), origin={
        "application_id": str(APPLICATION_ID), "token": asked.token,
        "message_id": str(asked.original.id), "created_at": asked.created_at})
    before = len(asked.original.edits)
    await world.adapter.progress(row, 1, 10)
    await world.fake.wait_for(lambda: len(asked.original.edits) == before + 1)
    for step in range(2, 11):  # arriving faster than Discord should be edited
        await world.adapter.progress(row, step, 10)
    await world.fake.wait_for(lambda: len(asked.original.edits) == before + 2, timeout=5)
    first, second = asked.original.edits[before:]
    assert "step 1 of 10" in first["content"] and "step 10 of 10" in second["content"]
    assert second["at"] - first["at"] >= 1.9


# ---- buttons ---------------------------------------------------------------------------------


async def first_result(world: World) -> Message:
    return next(m for m in world.fake.messages.values() if m.files and len(m.files) == 1)


async def test_vary_reroll_and_rating_buttons_work_for_anyone(world: World):
    original = await first_result(world)
    image_id = int(original.custom_ids[0].split(":")[2])
    [source] = world.db("SELECT jobs.* FROM jobs JOIN images ON images.job_id = jobs.id "
                        "WHERE images.id = ?", image_id)

    varied = await world.fake.press(original, f"mc:vary:{image_id}:subtle", BOB)
    rerolled = await world.fake.press(original, f"mc:reroll:{image_id}", BOB)
    vary_result, reroll_result = await world.result(varied), await world.result(rerolled)
    assert varied.callback == {"type": 5} and vary_result.content.startswith(f"<@{BOB}>")
    [vary_job] = world.db("SELECT * FROM jobs WHERE origin LIKE ?", f"%{varied.id}%")
    assert vary_job["kind"] == "img2img" and vary_job["source_image_id"] == image_id
    assert Params.from_json(vary_job["params"]).strength == cmd.VARY_STRENGTHS["subtle"]
    strong = await world.fake.press(original, f"mc:vary:{image_id}:strong", BOB)
    upscaled = await world.fake.press(original, f"mc:upscale:{image_id}", BOB)
    await world.result(strong)
    upscale_result = await world.result(upscaled)
    [strong_job] = world.db("SELECT * FROM jobs WHERE origin LIKE ?", f"%{strong.id}%")
    assert Params.from_json(strong_job["params"]).strength == cmd.VARY_STRENGTHS["strong"]
    [upscale_job] = world.db("SELECT * FROM jobs WHERE origin LIKE ?", f"%{upscaled.id}%")
    assert (upscale_job["width"], upscale_job["height"]) == (128, 128)
    assert upscale_job["source_image_id"] == image_id
    upscaled_id = int(upscale_result.custom_ids[0].split(":")[2])
    [stored] = world.db("SELECT width, height FROM images WHERE id = ?", upscaled_id)
    assert (stored["width"], stored["height"]) == (128, 128)
    assert_matches(picture(upscale_result), "circle", "red", "blue")  # still the same picture
    [reroll_job] = world.db("SELECT * FROM jobs WHERE origin LIKE ?", f"%{rerolled.id}%")
    seeds = [Params.from_json(job["params"]).seed for job in (reroll_job, source)]
    assert reroll_job["prompt"] == source["prompt"] and seeds[0] != seeds[1]
    assert reroll_result.embeds[0]["title"] == source["prompt"]
    assert picture(vary_result).size == picture(reroll_result).size == (256, 256)

    rated = await world.fake.press(original, f"mc:rate:{image_id}:4", BOB)
    answer = await world.answer(rated)
    assert rated.callback["data"]["flags"] & EPHEMERAL
    assert f"rated image #{image_id} 4/5" in answer.content
    [rating] = world.db("SELECT score FROM ratings JOIN users ON users.id = ratings.user_id "
                        "WHERE image_id = ? AND platform_user_id = ?", image_id, str(BOB))
    assert rating["score"] == 4


async def test_web_answers_with_a_sign_in_link_only_the_user_sees(world: World):
    answer = await world.answer(await world.fake.slash("web", ALICE))
    assert answer.ephemeral and "works once, for the next 10 minutes" in answer.content
    link = re.search(r"http://\S+/signin/[\w-]+", answer.content).group(0)
    async with aiohttp.ClientSession() as http, http.get(link) as page:
        assert page.status == 200 and 'id="signin"' in await page.text()


async def test_a_channel_s_defaults_apply_there_and_a_user_s_options_win(world: World):
    refused = await world.answer(await world.fake.slash("settings", BOB, aspect="16:9"))
    assert refused.ephemeral and "only the bot's admins" in refused.content
    saved = await world.answer(await world.fake.slash("settings", ADMIN, aspect="16:9",
                                                      style="pixel-art", steps=FAST))
    assert "aspect 16:9" in saved.content and "style pixel-art" in saved.content
    by_channel = await world.fake.slash("imagine", ALICE, prompt="a red circle")
    by_user = await world.fake.slash("imagine", ALICE, prompt="a red circle", aspect="1:1",
                                     style="none")
    await world.result(by_channel)
    await world.result(by_user)
    [channel_job] = world.db("SELECT * FROM jobs WHERE origin LIKE ?", f"%{by_channel.id}%")
    [user_job] = world.db("SELECT * FROM jobs WHERE origin LIKE ?", f"%{by_user.id}%")
    assert (channel_job["width"], channel_job["height"]) == (80, 48)
    assert channel_job["prompt"] == "a red circle, pixel art, 16-bit, limited palette"
    assert (user_job["width"], user_job["height"]) == (64, 64)
    assert user_job["prompt"] == "a red circle"
    shown = await world.answer(await world.fake.slash("settings", BOB))
    assert "style pixel-art" in shown.content
    await world.answer(await world.fake.slash("settings", ADMIN, action="reset"))


async def test_delete_empties_the_picture_s_message_and_only_its_owner_may(world: World):
    asked = await world.fake.slash("imagine", ALICE, prompt="a blue circle", steps=FAST)
    result = await world.result(asked)
    image_id = int(result.custom_ids[0].split(":")[2])
    refused = await world.answer(await world.fake.slash("delete", BOB, image=str(image_id)))
    assert refused.ephemeral and f"You have no image #{image_id}" in refused.content
    deleted = await world.answer(await world.fake.slash("delete", ALICE, image=f"#{image_id}"))
    assert deleted.ephemeral and f"Deleted image #{image_id}" in deleted.content
    await world.fake.wait_for(lambda: result.content == f"Image #{image_id} was deleted.")
    assert result.files == [] and result.custom_ids == [] and result.embeds == []
    assert world.db("SELECT * FROM images WHERE id = ?", image_id) == []
    for command, options in (("vary", {"id": str(image_id)}),
                             ("rate", {"image": str(image_id), "score": 5}),
                             ("upscale", {"image": str(image_id)})):
        refused = await world.answer(await world.fake.slash(command, ALICE, **options))
        assert_ephemeral_error(refused, f"no image #{image_id}")
    history = await world.answer(await world.fake.slash("history", ALICE))
    assert history.ephemeral and f"image #{image_id} " not in history.content


async def test_forgetme_asks_with_a_button_only_its_asker_may_press(world: World):
    await world.answer(await world.fake.slash("optout", CAROL))
    carol = str(CAROL)
    assert world.db("SELECT trains FROM users WHERE platform_user_id = ?", carol)[0][0] == 0
    made = await world.result(await world.fake.slash("imagine", CAROL, prompt="a green circle",
                                                     steps=FAST))
    image_id = int(made.custom_ids[0].split(":")[2])
    asked = await world.answer(await world.fake.slash("forgetme", CAROL))
    assert asked.ephemeral and "cannot be undone" in asked.content
    assert asked.custom_ids == [f"mc:forget:{CAROL}"]

    by_bob = await world.answer(await world.fake.press(asked, f"mc:forget:{CAROL}", BOB))
    assert_ephemeral_error(by_bob, "for the one who sent /forgetme")
    assert world.db("SELECT * FROM users WHERE platform_user_id = ?", carol)
    confirmed = await world.answer(await world.fake.press(asked, f"mc:forget:{CAROL}", CAROL))
    assert confirmed.ephemeral and "I have forgotten you" in confirmed.content
    assert world.db("SELECT * FROM users WHERE platform_user_id = ?", carol) == []
    assert world.db("SELECT * FROM images WHERE id = ?", image_id) == []


async def test_a_flagged_picture_is_refused_but_a_spoiler_in_an_age_restricted_channel(
        world: World):
    """The "checked" model's safety checker flags every picture (tests/test_safety.py)."""
    asked = await world.fake.slash("imagine", ALICE, prompt="a red square", model="checked",
                                   steps=FAST)
    await world.fake.wait_for(lambda: asked.original and any(
        "safety checker flagged" in edit["content"] for edit in asked.original.edits))
    assert not any(m.files for m in asked.followups)
    hidden = await world.fake.slash("imagine", ALICE, prompt="a red circle on a blue background",
                                    model="checked", seed=4, age_restricted=True)
    result = await world.result(hidden)
    image_id = int(result.custom_ids[0].split(":")[2])
    assert [f.filename for f in result.files] == [f"SPOILER_canvas-{image_id}.png"]
    assert_matches(picture(result), "circle", "red", "blue")  # the picture, only hidden


async def test_style_option_autocompletes_the_style_names_and_styles_lists_them(world: World):
    typed = await world.fake.autocomplete("imagine", ALICE, "style", "p")
    await world.fake.wait_for(lambda: typed.callback)
    names = [choice["value"] for choice in typed.callback["data"]["choices"]]
    assert names == ["photo", "pixel-art"]
    listing = await world.answer(await world.fake.slash("styles", ALICE))
    assert "pixel-art · Retro 16-bit pixel art" in listing.content


async def test_loras_by_name_autocomplete_are_listed_and_change_the_picture(world: World):
    typed = await world.fake.autocomplete("imagine", ALICE, "loras", "ink:0.5, ink")
    await world.fake.wait_for(lambda: typed.callback)
    names = [choice["value"] for choice in typed.callback["data"]["choices"]]
    assert names == ["ink:0.5, ink", "ink:0.5, inkwash"]  # the last name typed, completed
    listing = await world.answer(await world.fake.slash("loras", ALICE))
    assert "ink · for Stable Diffusion 1.x/2.x" in listing.content
    scene = {"prompt": "a red circle on a blue background", "seed": 11, "steps": 10}
    plain = await world.result(await world.fake.slash("imagine", ALICE, **scene))
    inked = await world.result(await world.fake.slash("imagine", ALICE, **scene, loras="ink"))
    difference = np.abs(np.asarray(picture(plain), dtype=float)
                        - np.asarray(picture(inked), dtype=float)).mean()
    assert difference > 2, difference  # the LoRA changed the picture
    missing = await world.answer(await world.fake.slash("imagine", ALICE, prompt="a red circle",
                                                        loras="nope"))
    assert_ephemeral_error(missing, "no LoRA 'nope'")


async def test_rate_command_and_history_answer_only_the_user(world: World):
    [image] = world.db("SELECT id FROM images ORDER BY id LIMIT 1")
    rated = await world.answer(await world.fake.slash("rate", ALICE, image=f"#{image['id']}",
                                                      score=5))
    assert rated.ephemeral and f"rated image #{image['id']} 5/5" in rated.content
    history = await world.answer(await world.fake.slash("history", ALICE))
    assert history.ephemeral and f"image #{image['id']}" in history.content
    bad = await world.answer(await world.fake.slash("rate", ALICE, image="twelve", score=3))
    assert_ephemeral_error(bad, "image id must be a positive whole number")


# ---- inpaint and attachments -----------------------------------------------------------------


def scene(size: int = 64) -> Image.Image:
    return draw.draw(draw.Scene("square", "red", "blue", side=24, left=20, top=20), size)


async def test_inpaint_with_a_mask_and_with_a_transparent_png(world: World):
    fake = world.fake
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    two = await fake.slash(
        "inpaint", ALICE, prompt="a yellow circle", steps=FAST,
        image=fake.upload(png(scene()), "scene.png", size=(64, 64)),
        mask=fake.upload(png(mask), "mask.png", size=(64, 64)))
    transparent = scene().convert("RGBA")
    transparent.putalpha(Image.eval(mask, lambda v: 255 - v))
    one = await fake.slash("inpaint", ALICE, prompt="a yellow circle", steps=FAST,
                           image=fake.upload(png(transparent), "hole.png", size=(64, 64)))
    for asked in (two, one):
        result = await world.result(asked)
        assert picture(result).size == (256, 256)
        [job] = world.db("SELECT * FROM jobs WHERE origin LIKE ?", f"%{asked.id}%")
        assert job["kind"] == "inpaint" and Params.from_json(job["params"]).mask.endswith(".png")


@pytest.mark.parametrize("case", ["not an image", "too many bytes", "too many pixels",
                                  "mask of another size", "damaged image", "no mask"])
async def test_bad_attachments_get_an_ephemeral_answer(world: World, case: str):
    fake = world.fake
    good = fake.upload(png(scene()), "scene.png", size=(64, 64))
    options: dict[str, Any] = {"prompt": "a yellow circle", "image": good}
    expected: tuple[str, ...]
    if case == "not an image":
        options["image"] = fake.upload(b"hello", "notes.txt", "text/plain")
        expected = ("notes.txt", "not a picture", "PNG")
    elif case == "too many bytes":
        options["image"] = fake.upload(b"\x89PNG" + bytes(MAX_IMAGE_BYTES), "big.png")
        expected = ("the limit is 0.2 MB",)
    elif case == "too many pixels":
        options["image"] = fake.upload(png(scene()), "huge.png", size=(2000, 2000))
        expected = ("2000×2000", "1,000,000 pixels")
    elif case == "mask of another size":
        options["mask"] = fake.upload(png(Image.new("L", (32, 32), 255)), "m.png", size=(32, 32))
        expected = ("mask is 32×32", "image is 64×64", "same size")
    elif case == "damaged image":
        options["image"] = fake.upload(png(scene())[:100], "cut.png")
        expected = ("damaged",)
    else:
        expected = ("Inpainting needs a mask",)
    asked = await fake.slash("inpaint", ALICE, **options)
    answer = await world.answer(asked)
    assert_ephemeral_error(answer, *expected)
    if case in ("damaged image", "no mask"):  # found after downloading: placeholder removed
        assert asked.callback["type"] == 5 and asked.original.deleted
    else:  # found from Discord's description of the file, before anything is downloaded
        assert asked.callback["type"] == 4
    still = await world.answer(await fake.slash("queue", ALICE))  # and the bot keeps serving
    assert "queue" in still.content


async def test_bad_options_get_an_ephemeral_answer(world: World):
    blank = await world.answer(await world.fake.slash("imagine", ALICE, prompt="  \x00 "))
    assert_ephemeral_error(blank, "Please describe the picture")
    wrong_model = await world.answer(await world.fake.slash("imagine", ALICE, prompt="a cat",
                                                            model="sdxl"))
    assert_ephemeral_error(wrong_model, "no model 'sdxl'", "shapes, checked, shapes-sd3")
    nothing = await world.answer(await world.fake.slash("vary", ALICE))
    assert_ephemeral_error(nothing, "Which picture should I vary?")


# ---- admins ----------------------------------------------------------------------------------


async def test_retrain_and_model_are_refused_to_everyone_but_admins(world: World):
    refused = await world.fake.slash("retrain", BOB)
    assert_ephemeral_error(await world.answer(refused), "only the bot's admins")
    assert refused.callback["type"] == 4  # refused at once, nothing deferred
    # An admin gets the service's answer: too few rated images yet, or retraining started.
    admin = await world.answer(await world.fake.slash("retrain", ADMIN, steps=50))
    assert admin.ephemeral and admin.content and "only the bot's admins" not in admin.content
    models = await world.answer(await world.fake.slash("model", ADMIN))
    assert models.content and "only the bot's admins" not in models.content


# ---- the 15-minute token ---------------------------------------------------------------------


async def test_a_result_after_the_token_expired_is_posted_in_the_channel(world: World):
    fake = world.fake
    old = await fake.slash("imagine", ALICE, prompt="a blue triangle", steps=FAST, age=14.5 * 60)
    refused = await fake.slash("imagine", BOB, prompt="a white circle", steps=FAST)
    await fake.wait_for(lambda: refused.callback is not None)
    fake.expire(refused)  # Discord refuses the token from now on
    posted = await fake.wait_for(
        lambda: [m for m in fake.channel_messages() if m.files and m.mentions], timeout=60)
    await fake.wait_for(lambda: len([m for m in fake.channel_messages() if m.files]) == 2)
    by_user = {m.mentions[0]: m for m in fake.channel_messages() if m.files}
    for user, asked in ((ALICE, old), (BOB, refused)):
        message = by_user[str(user)]
        assert message.content.startswith(f"<@{user}>") and not message.ephemeral
        assert picture(message).size == (256, 256)
        assert any(c.startswith("mc:vary:") for c in message.custom_ids)
        assert not asked.followups
    assert posted


# ---- restart (keep last: it replaces the bot) ------------------------------------------------


async def test_after_a_restart_buttons_still_work_and_commands_are_not_synced_again(world):
    before = await first_result(world)
    image_id = int(before.custom_ids[0].split(":")[2])
    await world.stop_bot()
    await world.start_bot()
    assert len(world.fake.syncs) == 1 and not world.adapter.client.synced

    varied = await world.fake.press(before, f"mc:vary:{image_id}:subtle", ALICE)
    result = await world.result(varied)
    assert picture(result).size == (256, 256)
    rerolled = await world.result(await world.fake.press(before, f"mc:reroll:{image_id}", BOB))
    assert rerolled.embeds[0]["title"] == before.embeds[0]["title"]


async def test_changed_commands_are_synced_again_at_the_next_start(world: World):
    original = world.settings
    await world.stop_bot()
    synced = len(world.fake.syncs)
    world.settings = replace(original, discord=replace(original.discord,
                                                       guild_ids=(GUILD_ID, 4242)))
    try:
        await world.start_bot()
        assert {guild for guild, _ in world.fake.syncs[synced:]} == {GUILD_ID, 4242}
    finally:
        await world.stop_bot()
        world.settings = original
        await world.start_bot()

async def test_a_forged_button_is_refused(world: World):
    """A crafted press naming an image the message does not show: discord.py drops a press
    whose custom_id is not on its message before any of our code runs, so nothing happens
    (the client says the interaction failed)."""
    message = await first_result(world)
    other = int(message.custom_ids[0].split(":")[2]) + 1  # another image, not on this message
    jobs_before = len(world.db("SELECT id FROM jobs"))
    ratings_before = world.db("SELECT * FROM ratings")
    forged = [await world.fake.press(message, custom_id, BOB, forged=True)
              for custom_id in (f"mc:vary:{other}", f"mc:reroll:{other}",
                                f"mc:rate:{other}:5")]
    genuine = await world.fake.press(message, message.custom_ids[-1], BOB)  # then a real one
    await world.answer(genuine)
    assert [interaction.callback for interaction in forged] == [None, None, None]
    assert len(world.db("SELECT id FROM jobs")) == jobs_before
    assert world.db("SELECT * FROM ratings WHERE image_id = ?", other) == [
        row for row in ratings_before if row["image_id"] == other]

async def test_no_token_reaches_the_logs(world: World):
    text = "\n".join(world.logs.lines)
    assert "discord.http" in text or "webhook" in text.lower()  # the debug logs were on
    assert BOT_TOKEN not in text
    for token in world.fake.interactions:
        assert token not in text



async def test_retraining_news_is_posted_in_the_admins_channel(world: World):
    for row in world.db("SELECT id FROM images ORDER BY id LIMIT 4"):
        rated = await world.answer(await world.fake.slash("rate", ADMIN, image=str(row["id"]),
                                                          score=5))
        assert "5/5" in rated.content
    await world.service.learning.idle()
    started = await world.answer(await world.fake.slash("retrain", ADMIN, steps=5, rank=2))
    assert "Retraining started" in started.content
    news = await world.fake.wait_for(lambda: [
        m for m in world.fake.channel_messages() if "Retraining finished" in m.content],
        timeout=60)
    assert f"<@{ADMIN}>" in news[0].content
    back = await world.answer(await world.fake.slash("model", ADMIN, action="use",
                                                     version="base"))
    assert "Now using base" in back.content

# ---- typed options (bot/commands/) and the slash commands made from the table -----------------


async def test_typed_options_are_checked_like_the_text_syntax():
    request = cmd.parse_typed("imagine", {
        "prompt": " a  red\tcircle ", "negative": "blue", "seed": 3, "steps": 9, "cfg": 7.5,
        "aspect": "32:18", "n": 2, "model": " base "})
    assert request == cmd.Imagine(Params(prompt="a red circle", negative="blue", seed=3, steps=9,
                                         cfg=7.5, aspect=(16, 9), n=2, checkpoint="base"))
    assert cmd.parse_typed("vary", {"id": "#12", "strength": 0.5, "prompt": "  "}) == cmd.Vary(
        12, Params(kind="img2img", strength=0.5))
    assert cmd.parse_typed("rate", {"image": " 7 ", "score": 5}) == cmd.Rate(7, 5)
    assert cmd.parse_typed("inpaint", {"prompt": "a hat", "steps": 4}) == cmd.Inpaint(
        Params(kind="inpaint", prompt="a hat", steps=4))
    for command, values, words in [
        ("imagine", {"prompt": "x" * 11}, "the limit is 10"),
        ("imagine", {"prompt": "a", "steps": 0}, "from 1 to 100"),
        ("imagine", {"prompt": "a", "cfg": float("inf")}, "CFG scale"),
        ("imagine", {"prompt": "a", "aspect": "9:1"}, "aspect ratio"),
        ("vary", {"strength": 1.5}, "above 0 and at most 1"),
        ("rate", {"image": "1", "score": 6}, "score must be"),
    ]:
        with pytest.raises(cmd.CommandError, match=words):
            cmd.parse_typed(command, values, max_prompt_chars=10)


async def test_blank_typed_text_is_not_given_and_attachments_are_the_adapters():
    request = cmd.parse_typed("imagine", {"prompt": "a fox", "negative": " \x00 ", "model": " "})
    assert request == cmd.Imagine(Params(prompt="a fox"))
    assert request.params.negative is None and request.params.checkpoint is None
    assert cmd.parse_typed("vary", {"image": object(), "id": None, "prompt": " "}) == cmd.Vary()
    with pytest.raises(TypeError, match="no option 'colour'"):
        cmd.parse_typed("imagine", {"prompt": "a fox", "colour": "red"})


async def test_every_table_option_is_a_slash_command_option_with_its_description(world: World):
    for name, command in cmd.TABLE.items():
        registered = world.fake.commands[name]
        assert registered["description"] == cmd.COMMANDS[name] == command.summary
        options = {o["name"]: o for o in registered.get("options", [])}
        assert list(options) == [o.name for o in sorted(command.options,
                                                         key=lambda o: not o.required)]
        for option in command.options:
            field = options[option.name]
            assert field["description"] == option.description and len(field["description"]) <= 100
            assert field.get("required", False) == option.required
            assert field["type"] == {"int": 4, "float": 10, "str": 3, "file": 11}[
                option.kind.field_type]
            if option.kind.bounds and not option.offered:
                assert (field["min_value"], field["max_value"]) == option.kind.bounds
            assert [(c["name"], c["value"]) for c in field.get("choices", [])] == list(
                option.offered)
            assert field.get("autocomplete", False) == bool(option.complete)
