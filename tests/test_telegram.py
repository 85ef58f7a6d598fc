"""The Telegram adapter end to end: the real python-telegram-bot talks over HTTP to a fake Bot
API server on 127.0.0.1 (tests/fake_telegram.py), the real service runs the real engine process
on the bundled model, and each test checks what a Telegram user would see."""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import pytest_asyncio
from PIL import Image

from bot import commands as cmd
from bot.adapters.telegram import TelegramAdapter, api_urls
from bot.cli import build_service
from bot.config import Settings, load_settings
from bot.service import Service
from bot.store import Store
from engine.params import Params
from engine.shapes import checker
from tests import fake_telegram as tg
from tests.conftest import LogLines, capture_logs, fast_telegram_adapter, job_row, write_config
from tests.lora_file import write_random_lora
from tests.test_safety import flagging_model

pytestmark = [
    pytest.mark.asyncio(loop_scope="module"),
    # PTB's own AIORateLimiter reads RetryAfter.retry_after, deprecated in PTB 22.2.
    pytest.mark.filterwarnings("ignore::telegram.warnings.PTBDeprecationWarning"),
]

FAST = "--steps 4"
SCENE = re.compile(r"an? (\w+) (circle|square|triangle) on an? (\w+) background")
MAX_IMAGE_BYTES = 200_000
MAX_IMAGE_PIXELS = 256 * 256


@dataclass
class Canvas:
    fake: tg.FakeTelegram
    adapter: TelegramAdapter
    service: Service
    store: Store
    settings: Settings
    logs: LogLines

    def store_rows(self, sql: str) -> list[tuple]:
        with contextlib.closing(sqlite3.connect(self.settings.storage.db)) as db:
            return db.execute(sql).fetchall()

    async def say(self, text: str | None = None, **message: Any) -> dict[str, Any]:
        update = await self.fake.push(tg.message(text, **message))
        return update["message"]

    async def reply_to(self, sent: dict[str, Any], method: str = "sendMessage",
                       **wait: Any) -> tg.Call:
        """The bot's answer (a reply) to the user's message `sent`."""
        return await self.fake.wait_for(
            method, lambda call: tg.replied_to(call) == sent["message_id"], **wait)

    async def photo_for(self, sent: dict[str, Any]) -> tuple[tg.Call, dict[str, Any]]:
        """The sendPhoto answering `sent`, and the message the fake made of it."""
        call = await self.fake.wait_for(
            "sendPhoto", lambda c: tg.replied_to(c) == sent["message_id"] and c.result)
        return call, call.result

    def job(self, job_id: int) -> sqlite3.Row:
        return job_row(self.settings.storage.db, job_id)

    def image_id(self, call: tg.Call) -> int:
        return int(str(call["caption"]).rsplit("image #", 1)[1])



@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def canvas(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Canvas]:
    folder = tmp_path_factory.mktemp("telegram")
    fake = tg.FakeTelegram()
    await fake.start()
    config = write_config(
        folder, telegram={"token": tg.TOKEN, "api_base_url": fake.url},
        admins={"telegram": [tg.ADMIN["id"]]},
        engine={"loras": str(write_random_lora(folder / "loras" / "ink.safetensors").parent),
                "models": {"shapes": {"source": "bundled:shapes"},
                           "shapes-sd3": {"source": "bundled:shapes-sd3"},
                           "checked": {"source": str(flagging_model(folder))}}},
        limits={"max_image_bytes": MAX_IMAGE_BYTES, "max_image_pixels": MAX_IMAGE_PIXELS})
    settings = load_settings(config)
    with capture_logs() as logs:
        store = await Store.open(settings.storage.db)
        service = build_service(settings, store)
        adapter = fast_telegram_adapter(service, settings)
        await adapter.start()
        await service.start()
        canvas = Canvas(fake, adapter, service, store, settings, logs)
        try:
            yield canvas
        finally:
            await canvas.adapter.stop()
            await service.stop()
            await store.close()
            await fake.stop()


def png(colour: str = "red", size: tuple[int, int] = (64, 64), mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def photo(fake: tg.FakeTelegram, data: bytes, size: int | None = None) -> dict[str, Any]:
    return {**fake.add_file(data, "photos/user.jpg", size), "width": 64, "height": 64}


def document(fake: tg.FakeTelegram, data: bytes, name: str = "picture.png",
             mime: str = "image/png") -> dict[str, Any]:
    return {**fake.add_file(data, f"documents/{name}"), "file_name": name, "mime_type": mime}


def assert_shows(data: bytes, prompt: str, size: int) -> None:
    """The PNG that reached Telegram decodes, has the chat size, and shows what the prompt
    asked for, as the shapes checker reads it."""
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG" and min(image.size) >= size
    asked = SCENE.fullmatch(prompt)
    assert asked, f"write prompts here as {SCENE.pattern}"
    seen = checker.read(image.convert("RGB"))
    assert (seen.colour, seen.shape, seen.background) == asked.groups()


# ---- start-up ----------------------------------------------------------------------------


async def test_commands_are_registered_with_descriptions(canvas: Canvas) -> None:
    everyone, *admins = canvas.fake.called("setMyCommands")
    names = {c["command"]: c["description"] for c in everyone["commands"]}
    assert names["imagine"] == cmd.COMMANDS["imagine"] and "retrain" not in names
    [admin] = admins
    assert admin["scope"] == {"type": "chat", "chat_id": tg.ADMIN["id"]}
    assert {c["command"] for c in admin["commands"]} == set(cmd.COMMANDS)


async def test_api_urls_follow_the_settings() -> None:
    assert api_urls("", "") == ("https://api.telegram.org/bot",
                                "https://api.telegram.org/file/bot")
    assert api_urls("http://127.0.0.1:8081", "") == ("http://127.0.0.1:8081/bot",
                                                     "http://127.0.0.1:8081/file/bot")
    assert api_urls("https://x/bot", "https://f") == ("https://x/bot", "https://f/file/bot")


# ---- /imagine ----------------------------------------------------------------------------


async def test_imagine_answers_at_once_edits_the_status_and_sends_the_photo(
        canvas: Canvas) -> None:
    fake = canvas.fake
    # Progress edits are cosmetic: "not modified" and a flood wait must not stop the job.
    generating = lambda params: "Generating" in str(params.get("text"))  # noqa: E731
    fake.fail_next("editMessageText", 400, "Bad Request: message is not modified",
                   when=generating)
    fake.fail_next("editMessageText", 429, retry_after=1, when=generating)
    prompt = "a red circle on a blue background"
    sent = await canvas.say(f"/imagine@canvas_bot {prompt} --seed 7 --steps 40",
                            chat=tg.GROUP)
    status = await canvas.reply_to(sent)
    assert status["text"] == "Working on it…"
    call, message = await canvas.photo_for(sent)

    edits = [c["text"] for c in fake.called("editMessageText")
             if c["chat_id"] == tg.GROUP["id"] and c["text"] != "Working on it…"]
    assert any(text.startswith("Queued job #") and "position 1" in text for text in edits)
    assert any(text.startswith("Generating job #") and text.endswith("%") for text in edits)
    # Once the photo is out, the status message goes (less clutter in a busy group).
    await fake.wait_for("deleteMessage", lambda c: c["message_id"] == status.result["message_id"])

    picture = Image.open(io.BytesIO(call.upload("photo")))
    assert picture.format == "PNG" and min(picture.size) >= canvas.service.chat_image_size
    image_id = canvas.image_id(call)
    assert call["caption"].startswith(prompt)
    assert f"seed 7 · base · image #{image_id}" in call["caption"]
    buttons = [b["callback_data"] for row in call["reply_markup"]["inline_keyboard"] for b in row]
    assert buttons == [f"v:{image_id}:s", f"v:{image_id}:S", f"r:{image_id}",
                       f"u:{image_id}"] + [f"s:{image_id}:{s}" for s in range(1, 6)]
    assert message["chat"]["id"] == tg.GROUP["id"]


# The bundled model in git is still the randomly initialised one; its training lands separately.
# strict: once the trained model is committed this XPASSes and fails, so the mark gets removed.
async def test_the_photo_shows_what_the_prompt_asked_for(canvas: Canvas) -> None:
    prompt = "a red circle on a blue background"
    sent = await canvas.say(f"/imagine {prompt} --seed 8")  # the model's default steps
    call, _ = await canvas.photo_for(sent)
    assert_shows(call.upload("photo"), prompt, canvas.service.chat_image_size)


async def test_n_2_sends_an_album_with_a_keyboard_for_each_picture(canvas: Canvas) -> None:
    sent = await canvas.say(f"/imagine a green square --n 2 {FAST}")
    album = await canvas.fake.wait_for(
        "sendMediaGroup", lambda c: tg.replied_to(c) == sent["message_id"] and c.result)
    assert len(album["media"]) == 2
    for item in album["media"]:
        Image.open(io.BytesIO(album.upload(item["media"]))).verify()
    keyboard = await canvas.fake.wait_for("sendMessage", lambda c: "reply_markup" in c.params
                                          and tg.replied_to(c) == sent["message_id"])
    rows = keyboard["reply_markup"]["inline_keyboard"]
    assert len(rows) == 4 and rows[-2][0]["callback_data"].startswith("r:")
    pictures = [row[0]["callback_data"].split(":")[1] for row in rows[:2]]
    assert [b["callback_data"] for b in rows[-1]] == [f"u:{n}" for n in pictures]


async def test_a_command_for_another_bot_is_ignored_and_a_bad_one_explained(
        canvas: Canvas) -> None:
    other = await canvas.say("/imagine@other_bot a cat", chat=tg.GROUP)
    bad = await canvas.say("/imagine a cat --seed lots")
    answer = await canvas.reply_to(bad)
    assert "seed must be a whole number" in answer["text"]
    assert not [c for c in canvas.fake.calls if tg.replied_to(c) == other["message_id"]]


async def picture(canvas: Canvas, prompt: str = "a red square") -> tuple[dict[str, Any], int]:
    """Imagine one picture; the photo message the user sees and its image id."""
    sent = await canvas.say(f"/imagine {prompt} {FAST}")
    call, message = await canvas.photo_for(sent)
    return message, canvas.image_id(call)


# ---- /vary -------------------------------------------------------------------------------


async def test_vary_by_button_by_reply_and_by_caption(canvas: Canvas) -> None:
    photo_message, image_id = await picture(canvas)

    await canvas.fake.push(tg.button_press(photo_message, f"v:{image_id}:S", user=tg.BOB))
    answer = await canvas.fake.wait_for("answerCallbackQuery")
    assert answer["text"].startswith("Queued job #")
    by_button, _ = await canvas.photo_for(photo_message)  # the variation replies to its source

    reply = await canvas.say("/vary --strength 0.5", reply_to=photo_message)
    by_reply, _ = await canvas.photo_for(reply)

    upload = photo(canvas.fake, png("blue"))
    captioned = await canvas.say(caption="/vary --prompt a blue circle", photo=upload)
    by_caption, _ = await canvas.photo_for(captioned)

    jobs = [canvas.job(int(_job_of(canvas, call))) for call in (by_button, by_reply, by_caption)]
    assert [job["kind"] for job in jobs] == ["img2img"] * 3
    assert [job["source_image_id"] for job in jobs] == [image_id, image_id, None]
    assert Params.from_json(jobs[0]["params"]).strength == cmd.VARY_STRENGTHS["strong"]
    assert Params.from_json(jobs[1]["params"]).strength == 0.5
    assert jobs[2]["prompt"] == "a blue circle"

    await canvas.fake.push(tg.button_press(photo_message, f"v:{image_id}:s", user=tg.BOB))
    subtle = await canvas.fake.wait_for(
        "sendPhoto", lambda c: tg.replied_to(c) == photo_message["message_id"] and c.result
        and c is not by_button)
    job = canvas.job(int(_job_of(canvas, subtle)))
    assert Params.from_json(job["params"]).strength == cmd.VARY_STRENGTHS["subtle"]


async def test_upscale_by_button_and_by_reply_sends_a_picture_twice_as_large(
        canvas: Canvas) -> None:
    sent = await canvas.say("/imagine a red circle on a blue background --seed 5")
    call, photo_message = await canvas.photo_for(sent)
    image_id = canvas.image_id(call)
    await canvas.fake.push(tg.button_press(photo_message, f"u:{image_id}", user=tg.BOB))
    by_button, _ = await canvas.photo_for(photo_message)
    reply = await canvas.say("/upscale --scale 4", reply_to=photo_message)
    by_reply, _ = await canvas.photo_for(reply)
    for call, scale in ((by_button, 2), (by_reply, 4)):
        job = canvas.job(_job_of(canvas, call))
        assert (job["width"], job["height"]) == (64 * scale, 64 * scale)
        assert job["source_image_id"] == image_id
        assert Params.from_json(job["params"]).scale == scale
        [(width,)] = canvas.store_rows(
            f"SELECT width FROM images WHERE id = {canvas.image_id(call)}")
        assert width == 64 * scale
        # What the user gets is still the picture they upscaled.
        assert_shows(call.upload("photo"), "a red circle on a blue background", 64 * scale)


def _job_of(canvas: Canvas, call: tg.Call) -> int:
    db = sqlite3.connect(canvas.settings.storage.db)
    try:
        (job_id,) = db.execute("SELECT job_id FROM images WHERE id = ?",
                               (canvas.image_id(call),)).fetchone()
        return job_id
    finally:
        db.close()


# ---- /inpaint ----------------------------------------------------------------------------


async def test_inpaint_by_album_and_by_transparent_png(canvas: Canvas) -> None:
    fake = canvas.fake
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    buffer = io.BytesIO()
    mask.save(buffer, format="PNG")
    first = await canvas.say(caption="/inpaint a red circle", media_group_id="g1",
                             photo=photo(fake, png("blue")))
    await canvas.say(media_group_id="g1", photo=photo(fake, buffer.getvalue()))
    by_album, _ = await canvas.photo_for(first)

    hole = Image.new("RGBA", (64, 64), "green")
    hole.paste((0, 0, 0, 0), (20, 20, 44, 44))
    buffer = io.BytesIO()
    hole.save(buffer, format="PNG")
    single = await canvas.say(caption="/inpaint a yellow square",
                              document=document(fake, buffer.getvalue(), "hole.png"))
    by_png, _ = await canvas.photo_for(single)

    for call, prompt in ((by_album, "a red circle"), (by_png, "a yellow square")):
        job = canvas.job(_job_of(canvas, call))
        assert (job["kind"], job["prompt"]) == ("inpaint", prompt)
        mask = Params.from_json(job["params"]).mask
        with Image.open(canvas.service.blobs.path(mask)) as stored_mask:
            assert stored_mask.getextrema() == (0, 255)


# ---- ratings -----------------------------------------------------------------------------


async def test_rating_buttons_store_the_score_and_show_it_and_a_second_press_replaces_it(
        canvas: Canvas) -> None:
    fake = canvas.fake
    photo_message, image_id = await picture(canvas, "a blue triangle")
    start = len(fake.calls)
    await fake.push(tg.button_press(photo_message, f"s:{image_id}:4"))
    answer = await fake.wait_for("answerCallbackQuery", after=start)
    assert answer["text"] == f"Thanks! You rated image #{image_id} 4/5."
    marked = await fake.wait_for("editMessageReplyMarkup", after=start)
    labels = [b["text"] for b in marked["reply_markup"]["inline_keyboard"][1]]
    assert labels == ["1", "2", "3", "⭐4", "5"]

    start = len(fake.calls)
    await fake.push(tg.button_press(fake.messages[(tg.PRIVATE["id"],
                                                   photo_message["message_id"])],
                                    f"s:{image_id}:2"))
    await fake.wait_for("editMessageReplyMarkup", after=start)
    alice = await canvas.store.ensure_user("telegram", str(tg.ALICE["id"]))
    assert await canvas.store.rating(image_id, alice) == 2

    rated = await canvas.say(f"/rate {image_id} 5")
    assert "5/5" in (await canvas.reply_to(rated))["text"]
    assert await canvas.store.rating(image_id, alice) == 5


async def test_a_forged_button_is_answered_politely(canvas: Canvas) -> None:
    photo_message, image_id = await picture(canvas)
    for data, refusal in (("s:1:9", "don't know that button"), ("x:1", "don't know that button"),
                          (f"v:{10**30}", "don't know that button"),
                          ("v:99999", "not one of this message's buttons"),
                          (f"r:{image_id + 1}", "not one of this message's buttons"),
                          (f"s:{image_id + 1}:5", "not one of this message's buttons")):
        start = len(canvas.fake.calls)
        await canvas.fake.push(tg.button_press(photo_message, data))
        answer = await canvas.fake.wait_for("answerCallbackQuery", after=start)
        assert refusal in answer["text"], (data, answer["text"])


async def test_buttons_sent_before_a_restart_still_work(canvas: Canvas) -> None:
    photo_message, image_id = await picture(canvas, "a green circle")
    await canvas.adapter.stop()  # a new adapter keeps nothing from the old one
    canvas.adapter = fast_telegram_adapter(canvas.service, canvas.settings)
    await canvas.adapter.start()
    start = len(canvas.fake.calls)
    await canvas.fake.push(tg.button_press(photo_message, f"r:{image_id}"))
    rerolled = await canvas.fake.wait_for(
        "sendPhoto", lambda c: tg.replied_to(c) == photo_message["message_id"], after=start)
    await canvas.fake.push(tg.button_press(photo_message, f"s:{image_id}:3", user=tg.BOB))
    await canvas.fake.wait_for("editMessageReplyMarkup", after=start)
    bob = await canvas.store.ensure_user("telegram", str(tg.BOB["id"]))
    assert await canvas.store.rating(image_id, bob) == 3
    assert canvas.job(_job_of(canvas, rerolled))["prompt"] == "a green circle"


# ---- flood control -----------------------------------------------------------------------


async def test_a_429_on_send_photo_is_waited_out(canvas: Canvas) -> None:
    canvas.fake.fail_next("sendPhoto", 429, retry_after=1)
    sent = await canvas.say(f"/imagine a purple square {FAST}")
    call, _ = await canvas.photo_for(sent)
    tries = [c for c in canvas.fake.called("sendPhoto") if tg.replied_to(c) == sent["message_id"]]
    assert [c.error is not None for c in tries] == [True, False]
    assert tries[1].at - tries[0].at >= 1.0


# ---- other commands ----------------------------------------------------------------------


async def test_a_group_s_defaults_apply_there_and_a_user_s_options_win(canvas: Canvas) -> None:
    refused = await canvas.say("/settings --ar 16:9", user=tg.BOB, chat=tg.GROUP)
    assert "only the bot's admins" in (await canvas.reply_to(refused))["text"]
    saved = await canvas.say("/settings --ar 16:9 --style watercolor", user=tg.ADMIN,
                             chat=tg.GROUP)
    assert "aspect 16:9 · style watercolor" in (await canvas.reply_to(saved))["text"]
    calls = []
    for text, chat in ((f"/imagine a red circle {FAST}", tg.GROUP),
                       (f"/imagine a red circle {FAST} --ar 1:1 --style none", tg.GROUP),
                       (f"/imagine a red circle {FAST}", tg.PRIVATE)):
        sent = await canvas.say(text, chat=chat)
        calls.append((await canvas.photo_for(sent))[0])
    in_group, overridden, in_private = (canvas.job(_job_of(canvas, call)) for call in calls)
    assert (in_group["width"], in_group["height"]) == (80, 48)
    assert in_group["prompt"].startswith("a red circle, watercolor painting")
    assert Params.from_json(in_group["params"]).words == "a red circle"
    for job in (overridden, in_private):
        assert (job["width"], job["height"]) == (64, 64) and job["prompt"] == "a red circle"
    reset = await canvas.say("/settings reset", user=tg.ADMIN, chat=tg.GROUP)
    assert "no defaults of its own" in (await canvas.reply_to(reset))["text"]


async def test_loras_and_styles_are_listed_and_a_lora_by_name_changes_the_picture(
        canvas: Canvas) -> None:
    listing = await canvas.reply_to(await canvas.say("/loras"))
    assert "ink · for Stable Diffusion 1.x/2.x" in listing["text"]
    styles = await canvas.reply_to(await canvas.say("/styles"))
    assert "pixel-art · Retro 16-bit pixel art" in styles["text"]
    scene = "/imagine a red circle on a blue background --seed 11 --steps 10"
    plain, inked = [(await canvas.photo_for(await canvas.say(text)))[0]
                    for text in (scene, f"{scene} --lora ink:1.0")]
    pixels = [np.asarray(Image.open(io.BytesIO(call.upload("photo"))).convert("RGB"), dtype=float)
              for call in (plain, inked)]
    assert np.abs(pixels[0] - pixels[1]).mean() > 2  # the LoRA changed the picture
    await canvas.say("/imagine a red circle --lora nope")
    await canvas.fake.wait_for("editMessageText",  # its "Working on it…", answered
                               lambda c: "There is no LoRA 'nope'" in c.params["text"])


async def test_admin_commands_are_refused_to_others_and_help_speaks_of_telegram(
        canvas: Canvas) -> None:
    refused = await canvas.say("/retrain", user=tg.BOB, chat=tg.GROUP)
    assert "only the bot's admins" in (await canvas.reply_to(refused))["text"]
    admin = await canvas.say("/model", user=tg.ADMIN, chat={**tg.PRIVATE, "id": 42})
    assert "only the bot's admins" not in (await canvas.reply_to(admin))["text"]
    asked = await canvas.say("/help")
    text = (await canvas.reply_to(asked))["text"]
    assert "/imagine" in text and "recompressed by Telegram" in text
    history = await canvas.say("/history")
    assert "image #" in (await canvas.reply_to(history))["text"]
    queue = await canvas.say("/queue")
    assert "in the queue" in (await canvas.reply_to(queue))["text"]



async def test_retraining_news_reaches_the_admins_chat(canvas: Canvas) -> None:
    admin_chat = {**tg.PRIVATE, "id": 42}
    rows = canvas.store_rows("SELECT id FROM images ORDER BY id LIMIT 4")
    for (image_id,) in rows:
        rated = await canvas.say(f"/rate {image_id} 5", user=tg.ADMIN, chat=admin_chat)
        assert "5/5" in (await canvas.reply_to(rated))["text"]
    await canvas.service.learning.idle()
    asked = await canvas.say("/retrain --steps 5 --rank 2", user=tg.ADMIN, chat=admin_chat)
    assert "Retraining started" in (await canvas.reply_to(asked))["text"]
    news = await canvas.fake.wait_for(
        "sendMessage", lambda call: "Retraining finished" in call.params.get("text", ""),
        timeout=60)
    assert int(news.params["chat_id"]) == 42
    back = await canvas.say("/model use base", user=tg.ADMIN, chat=admin_chat)
    assert "Now using base" in (await canvas.reply_to(back))["text"]


async def test_an_opted_out_user_s_ratings_are_left_out_of_the_next_retrain(
        canvas: Canvas) -> None:
    admin_chat = {**tg.PRIVATE, "id": 42}
    bob_chat = {**tg.PRIVATE, "id": tg.BOB["id"]}
    _, only_bob = await picture(canvas, "a yellow circle on a black background")
    rated = await canvas.say(f"/rate {only_bob} 5", user=tg.BOB, chat=bob_chat)
    await canvas.reply_to(rated)
    out = await canvas.say("/optout", user=tg.BOB, chat=bob_chat)
    assert "leave out" in (await canvas.reply_to(out))["text"]
    await canvas.service.learning.idle()
    asked = await canvas.say("/retrain --steps 2 --rank 2", user=tg.ADMIN, chat=admin_chat)
    assert "Retraining started" in (await canvas.reply_to(asked))["text"]
    await canvas.fake.wait_for(
        "sendMessage", lambda call: "Retraining finished: v2" in call.params.get("text", ""),
        timeout=60)
    [(run_id, ratings_used)] = canvas.store_rows(
        "SELECT id, ratings_used FROM training_runs WHERE version = 'v2'")
    used = canvas.store_rows(f"SELECT image_id, ratings FROM training_run_images "
                             f"WHERE run_id = {run_id}")
    assert only_bob not in [image_id for image_id, _ in used]  # the run's record shows it
    assert ratings_used == sum(count for _, count in used)
    bob = canvas.store_rows(f"SELECT id FROM users WHERE platform_user_id = '{tg.BOB['id']}'")
    assert not canvas.store_rows(f"SELECT * FROM ratings JOIN training_run_images USING "
                                 f"(image_id) WHERE run_id = {run_id} AND user_id = "
                                 f"{bob[0][0]} AND ratings = 1")
    back = await canvas.say("/optin", user=tg.BOB, chat=bob_chat)
    assert "again" in (await canvas.reply_to(back))["text"]
    undo = await canvas.say("/model use base", user=tg.ADMIN, chat=admin_chat)
    assert "Now using base" in (await canvas.reply_to(undo))["text"]


async def test_a_flagged_picture_is_refused_but_hidden_in_a_group_that_allows_spoilers(
        canvas: Canvas) -> None:
    """The "checked" model's safety checker flags every picture (tests/test_safety.py)."""
    prompt = "/imagine a red circle on a blue background --seed 4 --model checked"
    refused = await canvas.say(prompt)
    await canvas.fake.wait_for("editMessageText",
                               lambda c: "safety checker flagged" in c.params["text"])
    allowed = await canvas.say("/settings --safety spoiler", user=tg.ADMIN, chat=tg.GROUP)
    assert "sent hidden, as spoilers" in (await canvas.reply_to(allowed))["text"]
    hidden = await canvas.say(prompt, chat=tg.GROUP)
    call, _ = await canvas.photo_for(hidden)
    assert str(call.params.get("has_spoiler")).lower() == "true"
    assert_shows(call.upload("photo"), "a red circle on a blue background", 64)
    assert not [c for c in canvas.fake.called("sendPhoto")
                if tg.replied_to(c) == refused["message_id"]]
    await canvas.reply_to(await canvas.say("/settings reset", user=tg.ADMIN, chat=tg.GROUP))


async def test_delete_replaces_the_photo_and_only_its_owner_may(canvas: Canvas) -> None:
    photo_message, image_id = await picture(canvas, "a red circle on a blue background")
    bobs = await canvas.say(f"/delete {image_id}", user=tg.BOB,
                            chat={**tg.PRIVATE, "id": tg.BOB["id"]})
    assert f"You have no image #{image_id}" in (await canvas.reply_to(bobs))["text"]
    asked = await canvas.say(f"/delete #{image_id}")
    assert f"Deleted image #{image_id}" in (await canvas.reply_to(asked))["text"]
    edit = await canvas.fake.wait_for(
        "editMessageMedia", lambda c: int(c.params["message_id"]) == photo_message["message_id"])
    assert edit.params["media"]["caption"] == f"Image #{image_id} was deleted."
    shown = canvas.fake.messages[(photo_message["chat"]["id"], photo_message["message_id"])]
    assert "reply_markup" not in shown or not shown["reply_markup"]
    assert canvas.store_rows(f"SELECT * FROM images WHERE id = {image_id}") == []
    history = await canvas.say("/history")
    assert f"image #{image_id} " not in (await canvas.reply_to(history))["text"]
    # A job's command is answered "Working on it…" at once, which the refusal then replaces.
    for command, answer in ((f"/vary #{image_id}", "editMessageText"),
                            (f"/rate #{image_id} 5", "sendMessage"),
                            (f"/upscale #{image_id}", "editMessageText")):
        before = len(canvas.fake.calls)
        await canvas.say(command)
        await canvas.fake.wait_for(answer, lambda c: f"no image #{image_id}" in c.params["text"],
                                   after=before)


async def test_deleting_a_picture_of_an_album_takes_its_buttons_off_the_albums_keyboard(
        canvas: Canvas) -> None:
    sent = await canvas.say(f"/imagine a green square --n 2 {FAST}")
    await canvas.fake.wait_for("sendMediaGroup", lambda c: tg.replied_to(c) == sent["message_id"]
                               and c.result)
    keys = await canvas.fake.wait_for("sendMessage", lambda c: "reply_markup" in c.params
                                      and tg.replied_to(c) == sent["message_id"])
    rows = keys["reply_markup"]["inline_keyboard"]
    first, second = (int(row[0]["callback_data"].split(":")[1]) for row in rows[:2])
    shown = canvas.fake.messages[(keys.result["chat"]["id"], keys.result["message_id"])]

    def buttons() -> list[str]:
        return [button["callback_data"] for row in shown["reply_markup"]["inline_keyboard"]
                for button in row]

    await canvas.reply_to(await canvas.say(f"/delete {first}"))
    await canvas.fake.wait_for("editMessageText", lambda c: int(c.params["message_id"])
                               == keys.result["message_id"])
    assert shown["text"] == f"Images #{second}: vary or rate each one."
    assert buttons() and all(data.split(":")[1] == str(second) for data in buttons())

    await canvas.reply_to(await canvas.say(f"/delete {second}"))
    await canvas.fake.wait_for("editMessageText", lambda c: int(c.params["message_id"])
                               == keys.result["message_id"] and "deleted" in c.params["text"])
    assert shown["text"] == "These images were deleted." and not shown.get("reply_markup")


async def test_forgetme_asks_with_a_button_that_only_its_asker_may_press(
        canvas: Canvas) -> None:
    bob_chat = {**tg.PRIVATE, "id": tg.BOB["id"]}
    sent = await canvas.say(f"/imagine a green square {FAST}", user=tg.BOB, chat=bob_chat)
    await canvas.photo_for(sent)
    asked = await canvas.say("/forgetme", user=tg.BOB, chat=bob_chat)
    question = await canvas.reply_to(asked)
    [[button]] = question["reply_markup"]["inline_keyboard"]
    assert button["text"] == "Yes, forget me" and "cannot be undone" in question["text"]
    message = canvas.fake.messages[(bob_chat["id"], question.result["message_id"])]
    await canvas.fake.push(tg.button_press(message, button["callback_data"], user=tg.ALICE))
    refused = await canvas.fake.wait_for("answerCallbackQuery",
                                         lambda c: "for the one who sent" in c["text"])
    assert refused["show_alert"] is True
    bob = f"'{tg.BOB['id']}'"
    assert canvas.store_rows(f"SELECT * FROM users WHERE platform_user_id = {bob}")
    await canvas.fake.push(tg.button_press(message, button["callback_data"], user=tg.BOB))
    await canvas.fake.wait_for("answerCallbackQuery",
                               lambda c: "I have forgotten you" in c["text"])
    assert canvas.store_rows(f"SELECT * FROM users WHERE platform_user_id = {bob}") == []
    await canvas.fake.wait_for("editMessageText",
                               lambda c: "I have forgotten you" in c.params["text"])
    assert "I have forgotten you" in message["text"] and not message.get("reply_markup")


async def test_a_command_telegram_sends_again_runs_once(canvas: Canvas) -> None:
    """Telegram re-sends updates a bot did not confirm before it died: the same message again
    must not make a second job."""
    update = tg.message(f"/imagine a green square {FAST} --seed 77")
    await canvas.fake.push(update)
    sent = update["message"]
    await canvas.photo_for(sent)
    start = len(canvas.fake.calls)
    await canvas.fake.push(update)  # the same message, in a new update
    status = await canvas.fake.wait_for(
        "editMessageText", lambda c: "Already on it" in str(c.get("text")), after=start)
    assert "job #" in status["text"]
    await asyncio.sleep(1)
    photos = [c for c in canvas.fake.calls
              if c.method == "sendPhoto" and tg.replied_to(c) == sent["message_id"]]
    assert len(photos) == 1
    key = f"telegram:{sent['chat']['id']}:{sent['message_id']}"
    [row] = canvas.store_rows(
        f"SELECT id FROM jobs WHERE json_extract(origin, '$.request_key') = '{key}'")
    assert row

# ---- bad files ---------------------------------------------------------------------------


async def test_each_bad_file_gets_a_clear_reply(canvas: Canvas) -> None:
    fake = canvas.fake
    big = Image.effect_noise((300, 300), 64).convert("RGB")
    buffer = io.BytesIO()
    big.save(buffer, format="PNG")
    cases = [
        ({"document": document(fake, b"%PDF-1.4", "paper.pdf", "application/pdf")},
         "not a picture"),
        ({"document": document(fake, b"\x89PNG\r\n\x1a\n broken", "broken.png")},
         "not an image file I can read"),
        ({"photo": photo(fake, png(), size=MAX_IMAGE_BYTES + 1)}, "the limit is 0.2 MB"),
        ({"document": document(fake, png("white", (300, 300)), "huge.png")},
         "the limit is 65,536 pixels"),
    ]
    sent = [await canvas.say(caption="/vary", **media) for media, _ in cases]
    for message, (_, expected) in zip(sent, cases, strict=True):
        status = await canvas.reply_to(message)
        edit = await fake.wait_for("editMessageText", lambda c, s=status: c["message_id"]
                                   == s.result["message_id"])
        assert expected in edit["text"], edit["text"]
    oversized_file = cases[2][0]["photo"]["file_id"]
    assert not [c for c in fake.called("getFile") if c["file_id"] == oversized_file]

    first = await canvas.say(caption="/inpaint a red circle", media_group_id="g2",
                             photo=photo(fake, png("blue")))
    await canvas.say(media_group_id="g2", photo=photo(fake, png("white", (32, 32))))
    status = await canvas.reply_to(first)
    edit = await fake.wait_for("editMessageText", lambda c: c["message_id"]
                               == status.result["message_id"])
    assert "must be the same size" in edit["text"]

    still = await canvas.say(f"/imagine a white circle {FAST}", user=tg.BOB)
    await canvas.photo_for(still)  # and the bot goes on serving everyone


async def test_no_log_line_holds_the_token(canvas: Canvas) -> None:
    assert canvas.logs.lines, "the fixture records every log line"
    leaking = [line for line in canvas.logs.lines if tg.TOKEN in line
               or tg.TOKEN.split(":")[1] in line]
    assert not leaking
