"""The hostile-input corpus (tests/hostile.py) through the console, Telegram and Discord adapters.

Each item gets a clear reply or a job that delivers an image; nothing crashes (the console exits
0, the chat adapters keep answering); the SQLite store stays consistent (integrity check ok, no
job left queued or running, every done job has its images on disk, refused input leaves no job
and no stray upload); and an ordinary `/imagine a red circle` from another user still gets its
image afterwards (on the console, which has one user, it is the last line of the same run).

What the bot normalises rather than refuses:
- animated GIF: only the first frame is used, as RGB;
- CMYK JPEG and palette PNG: converted to RGB;
- 16-bit PNG: scaled to 8 bits (not clipped, which would turn it white), then RGB;
- palette PNG with transparency sent to /inpaint alone: its transparent part is the mask;
- EXIF-rotated JPEG: turned upright by its orientation tag before anything else;
- all-white mask: accepted, the whole picture is repainted (an all-black one is refused);
- null bytes and other control characters in text: removed (runs of whitespace collapse);
- emoji, right-to-left text (with its direction marks) and SQL-looking text: kept verbatim as the
  prompt and stored as given (every query is parameterised);
- on Discord, where options are typed fields, `--seed 1 --seed 2` typed in the prompt field is
  part of the prompt, not an option given twice; repeated and unknown options cannot be sent.
Refused with a reason: truncated, empty, non-image and decompression-bomb files, a mask of the
wrong size, an all-black mask, a prompt over the length limit, negative, huge, NaN and
infinite numbers, repeated and unknown options, and (Discord) a choice that is not on the list.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from PIL import Image

from bot.adapters.discord import DiscordAdapter
from bot.adapters.telegram import TelegramAdapter
from bot.config import Settings, load_settings
from bot.service import Service
from bot.store import Store
from engine.blobs import LocalBlobs
from engine.params import Params
from tests import fake_telegram as tg
from tests import hostile
from tests.conftest import fast_telegram_adapter, run_console, running_bot, write_config
from tests.fake_discord import BOT_TOKEN, GUILD_ID, FakeDiscord, Interaction, Message

LIMITS = {"max_waiting_per_user": 50}
ALICE, BOB = 111, 222  # Discord users

pytestmark = pytest.mark.filterwarnings(
    "ignore::telegram.warnings.PTBDeprecationWarning")


# ---- the store, checked the same way for every platform -----------------------------------


def _rows(db: Path, sql: str, *params: Any) -> list[sqlite3.Row]:
    with contextlib.closing(sqlite3.connect(db)) as connection:
        connection.row_factory = sqlite3.Row
        return connection.execute(sql, params).fetchall()


def job_of_image(db: Path, image_id: int) -> sqlite3.Row:
    [job] = _rows(db, "SELECT jobs.* FROM jobs JOIN images ON images.job_id = jobs.id "
                      "WHERE images.id = ?", image_id)
    return job


def assert_consistent(db: Path, images: Path, jobs: int) -> None:
    """Integrity ok; exactly `jobs` jobs, every one done with its images on disk; every upload
    the bot kept belongs to a job."""
    assert [tuple(r) for r in _rows(db, "PRAGMA integrity_check")] == [("ok",)]
    assert not _rows(db, "PRAGMA foreign_key_check")
    statuses = [r["status"] for r in _rows(db, "SELECT status FROM jobs")]
    assert statuses == ["done"] * jobs, statuses
    blobs = LocalBlobs(images / "blobs")
    kept = set()
    for job in _rows(db, "SELECT * FROM jobs"):
        files = [f["blob"] for f in _rows(db, "SELECT blob FROM images WHERE job_id = ?",
                                          job["id"])]
        assert len(files) == Params.from_json(job["resolved"]).n
        assert job["delivered_at"] is not None
        assert all(blobs.path(key).is_file() for key in files)
        params = Params.from_json(job["params"])
        kept |= {*files, *filter(None, (params.image, params.mask))}
    on_disk = {path.name for path in blobs.root.glob("*/*")} if blobs.root.exists() else set()
    assert on_disk == kept  # refused files leave nothing behind


async def settled(db: Path, timeout: float = 30) -> None:
    """Wait until every job's outcome has been delivered (written just after the send)."""
    for _ in range(int(timeout / 0.05)):
        if not _rows(db, "SELECT id FROM jobs WHERE delivered_at IS NULL"):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("some jobs were never delivered")


def assert_normalised(item: hostile.Upload, job: sqlite3.Row, images: Path) -> None:
    assert item.check is not None
    blobs, params = LocalBlobs(images / "blobs"), Params.from_json(job["params"])
    with Image.open(blobs.path(params.image)) as picture:
        if params.mask:
            with Image.open(blobs.path(params.mask)) as mask:
                item.check(picture.copy(), mask.copy())
        else:
            item.check(picture.copy(), None)


def assert_refusal(text: str, words: tuple[str, ...]) -> None:
    for word in words:
        assert word in text, (word, text)


def expected_jobs(discord: bool = False) -> int:
    files = sum(item.accepted for item in hostile.uploads())
    texts = sum(item.accepted for item in hostile.typed())
    if discord:
        texts += sum(1 for item in hostile.typed() if item.discord_stored is not None)
    return files + texts + 1  # and the final /imagine


# ---- (a) the console ----------------------------------------------------------------------


def test_the_console_answers_every_hostile_line_and_goes_on(tmp_path: Path) -> None:
    config = write_config(tmp_path, limits=LIMITS)
    uploads, lines = hostile.uploads(), []
    for number, item in enumerate(uploads):
        folder = tmp_path / f"upload{number}"
        folder.mkdir()
        (folder / item.filename).write_bytes(item.image)
        line = f"{item.command} --image {folder / item.filename}"
        if item.mask is not None:
            (folder / "mask.png").write_bytes(item.mask)
            line += f" --mask {folder / 'mask.png'}"
        lines.append(line)
    typed = hostile.typed()
    lines += [item.text for item in typed]
    lines.append(f"/imagine {hostile.FINAL_PROMPT} --steps {hostile.STEPS}")

    run = run_console(config, lines, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr, run.stderr
    replies = run.replies
    assert len(replies) == len(lines), replies
    db = tmp_path / "canvas.db"

    for item, reply in zip([*uploads, *typed], replies, strict=False):
        if item.accepted:
            assert reply["type"] == "text" and reply["text"].startswith("Queued job #"), (
                item.name, reply)
            [image] = run.images(reply["job"])
            assert Path(image["path"]).is_file() and run.failure(reply["job"]) is None
            [job] = _rows(db, "SELECT * FROM jobs WHERE id = ?", reply["job"])
            if isinstance(item, hostile.Upload):
                assert_normalised(item, job, tmp_path / "images")
            else:
                assert job["prompt"] == item.stored, item.name
        else:
            assert reply["type"] == "error", (item.name, reply)
            assert_refusal(reply["error"], item.refused)

    final = replies[-1]
    assert run.images(final["job"]), run.stderr
    assert_consistent(db, tmp_path / "images", expected_jobs())


# ---- (b) Telegram -------------------------------------------------------------------------


class TelegramBot:
    def __init__(self, fake: tg.FakeTelegram, settings: Settings, store: Store,
                 service: Service, adapter: TelegramAdapter) -> None:
        self.fake, self.settings, self.store = fake, settings, store
        self.service, self.adapter = service, adapter

    async def say(self, text: str | None = None, **message: Any) -> dict[str, Any]:
        return (await self.fake.push(tg.message(text, **message)))["message"]

    def texts(self, sent: dict[str, Any]) -> list[str]:
        """Every text the bot showed in answer to `sent`: replies and their edits."""
        replies = [c for c in self.fake.calls if c.method == "sendMessage" and c.result
                   and tg.replied_to(c) == sent["message_id"]]
        ids = {c.result["message_id"] for c in replies}
        edits = [c for c in self.fake.calls if c.method == "editMessageText"
                 and c.get("message_id") in ids]
        return [str(c["text"]) for c in replies + edits]

    async def refusal(self, sent: dict[str, Any], words: tuple[str, ...]) -> str:
        for _ in range(600):
            for text in self.texts(sent):
                if all(word in text for word in words):
                    return text
            await asyncio.sleep(0.05)
        raise AssertionError(f"no answer with {words} among {self.texts(sent)}")

    async def image(self, sent: dict[str, Any]) -> int:
        """The id of the image the bot sent in answer to `sent`."""
        call = await self.fake.wait_for(
            "sendPhoto", lambda c: tg.replied_to(c) == sent["message_id"] and c.result,
            timeout=60)
        Image.open(io.BytesIO(call.upload("photo"))).verify()
        return int(str(call["caption"]).rsplit("image #", 1)[1])



@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def telegram(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[TelegramBot]:
    folder = tmp_path_factory.mktemp("hostile-telegram")
    fake = tg.FakeTelegram()
    await fake.start()
    settings = load_settings(write_config(
        folder, telegram={"token": tg.TOKEN, "api_base_url": fake.url}, limits=LIMITS))
    try:
        async with running_bot(settings, fast_telegram_adapter) as (store, service, adapter):
            yield TelegramBot(fake, settings, store, service, adapter)
    finally:
        await fake.stop()


def _document(fake: tg.FakeTelegram, data: bytes, name: str, mime: str) -> dict[str, Any]:
    return {**fake.add_file(data, f"documents/{name}"), "file_name": name, "mime_type": mime}


@pytest.mark.asyncio(loop_scope="module")
async def test_telegram_answers_every_hostile_message_and_goes_on(telegram: TelegramBot) -> None:
    fake = telegram.fake
    sent: list[tuple[Any, dict[str, Any]]] = []
    for number, item in enumerate(hostile.uploads()):
        document = _document(fake, item.image, item.filename, item.mime)
        if item.mask is None:
            sent.append((item, await telegram.say(caption=item.command, document=document)))
            continue
        group = f"hostile{number}"  # an album: the picture, then the mask
        first = await telegram.say(caption=item.command, document=document,
                                   media_group_id=group)
        await telegram.say(document=_document(fake, item.mask, "mask.png", "image/png"),
                           media_group_id=group)
        sent.append((item, first))
    for item in hostile.typed():
        sent.append((item, await telegram.say(item.text)))

    db = telegram.settings.storage.db
    for item, message in sent:
        if item.accepted:
            job = job_of_image(db, await telegram.image(message))
            if isinstance(item, hostile.Upload):
                assert_normalised(item, job, telegram.settings.storage.images)
            else:
                assert job["prompt"] == item.stored, item.name
        else:
            await telegram.refusal(message, item.refused)
            assert not [c for c in fake.called("sendPhoto")
                        if tg.replied_to(c) == message["message_id"]], item.name

    final = await telegram.say(f"/imagine {hostile.FINAL_PROMPT} --steps {hostile.STEPS}",
                               user=tg.BOB, chat={**tg.PRIVATE, "id": tg.BOB["id"]})
    job = job_of_image(db, await telegram.image(final))
    assert job["prompt"] == hostile.FINAL_PROMPT
    await telegram.service.drained("telegram")
    await settled(db)
    assert_consistent(db, telegram.settings.storage.images, expected_jobs())
    assert not [t for _, m in sent for t in telegram.texts(m) if "went wrong" in t]


# ---- (c) Discord --------------------------------------------------------------------------


class DiscordBot:
    def __init__(self, fake: FakeDiscord, settings: Settings, store: Store, service: Service,
                 adapter: DiscordAdapter) -> None:
        self.fake, self.settings, self.store = fake, settings, store
        self.service, self.adapter = service, adapter

    async def refusal(self, asked: Interaction) -> Message:
        """The ephemeral message an interaction that was refused ends with."""
        def done() -> Message | None:
            if asked.followups:
                return asked.followups[0]
            original = asked.original
            if original is not None and asked.callback and asked.callback["type"] == 4:
                return original
            return None
        return await self.fake.wait_for(done)

    async def image(self, asked: Interaction) -> int:
        result = await self.fake.wait_for(
            lambda: next((m for m in asked.followups if m.files), None), timeout=60)
        Image.open(io.BytesIO(result.files[0].data)).verify()
        return int(result.custom_ids[0].split(":")[2])


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def discord(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[DiscordBot]:
    folder = tmp_path_factory.mktemp("hostile-discord")
    fake = FakeDiscord()
    await fake.start()
    settings = load_settings(write_config(
        folder, discord={"token": BOT_TOKEN, "api_base_url": fake.api_base_url,
                         "gateway_url": fake.gateway_url, "guild_ids": [GUILD_ID]},
        limits=LIMITS))
    try:
        async with running_bot(settings, DiscordAdapter) as (store, service, adapter):
            yield DiscordBot(fake, settings, store, service, adapter)
    finally:
        await fake.stop()


async def _slash_upload(fake: FakeDiscord, item: hostile.Upload) -> Interaction:
    # No width/height in the attachment (Discord omits them at times): every file is
    # downloaded and judged by the bot itself.
    image = fake.upload(item.image, item.filename, item.mime)
    if item.command.startswith("/vary"):
        return await fake.slash("vary", ALICE, image=image, strength=0.1)
    options: dict[str, Any] = {"prompt": "a red circle", "steps": hostile.STEPS, "image": image}
    if item.mask is not None:
        options["mask"] = fake.upload(item.mask, "mask.png")
    return await fake.slash("inpaint", ALICE, **options)


@pytest.mark.asyncio(loop_scope="module")
async def test_discord_answers_every_hostile_interaction_and_goes_on(discord: DiscordBot) -> None:
    fake = discord.fake
    asked: list[tuple[Any, Interaction]] = []
    for item in hostile.uploads():
        asked.append((item, await _slash_upload(fake, item)))
    for item in hostile.typed():
        if item.discord is not None:
            asked.append((item, await fake.slash(item.discord_command, ALICE, **item.discord)))

    db = discord.settings.storage.db
    for item, interaction in asked:
        if isinstance(item, hostile.Upload):
            accepted, stored = item.accepted, None
        else:
            stored = item.discord_stored or item.stored
            accepted = stored is not None
        if accepted:
            job = job_of_image(db, await discord.image(interaction))
            if isinstance(item, hostile.Upload):
                assert_normalised(item, job, discord.settings.storage.images)
            else:
                assert job["prompt"] == stored, item.name
        else:
            answer = await discord.refusal(interaction)
            assert answer.ephemeral, (item.name, answer)
            words = item.refused
            if isinstance(item, hostile.Typed) and item.discord_refused is not None:
                words = item.discord_refused
            assert_refusal(answer.content, words)
            assert not [m for m in interaction.followups if m.files], item.name

    final = await fake.slash("imagine", BOB, prompt=hostile.FINAL_PROMPT, steps=hostile.STEPS)
    job = job_of_image(db, await discord.image(final))
    assert job["prompt"] == hostile.FINAL_PROMPT
    await discord.service.drained("discord")
    await settled(db)
    assert_consistent(db, discord.settings.storage.images, expected_jobs(discord=True))
    assert not [m for _, i in asked for m in i.followups if "went wrong" in m.content]
