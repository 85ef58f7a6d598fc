"""What the Telegram bot shows: captions, inline keyboards whose buttons carry their whole state
(action and image id, so they keep working after a restart), and throttled status edits.

Callback data (at most 64 bytes): `v:<image>` vary (`v:<image>:s` subtle, `v:<image>:S` strong),
`r:<image>` reroll, `u:<image>` upscale, `s:<image>:<score>` rate.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from telegram import InlineKeyboardButton, InlineKeyboardMarkup
from telegram.error import TelegramError

from bot.commands import MAX_ID, MAX_SCORE
from bot.store import ImageRow, JobRow

log = logging.getLogger(__name__)

CAPTION_LIMIT = 1024
STAR = "⭐"
_BUTTON = re.compile(r"(v|r|u):([0-9]{1,19})(?::([sS]))?|s:([0-9]{1,19}):([0-9])")
_ACTIONS = {"v": "vary", "r": "reroll", "u": "upscale"}
_HOW = {"s": "subtle", "S": "strong"}


@dataclass(frozen=True)
class Button:
    action: str  # "vary", "reroll", "upscale" or "rate"
    image_id: int
    score: int | None = None
    how: str | None = None  # a vary's "subtle" or "strong"


def parse_button(data: str | None) -> Button | None:
    """The button's action, or None for a payload this bot never made."""
    match = _BUTTON.fullmatch(data or "")
    if match is None:
        return None
    if match[1]:
        image_id = int(match[2])
        if match[3] and match[1] != "v":
            return None
        button = Button(_ACTIONS[match[1]], image_id, how=_HOW.get(match[3] or ""))
    else:
        image_id, score = int(match[4]), int(match[5])
        if not 1 <= score <= MAX_SCORE:
            return None
        button = Button("rate", image_id, score)
    return button if 1 <= image_id <= MAX_ID else None


def caption(job: JobRow, image: ImageRow) -> str:
    """Prompt, seed, model version and image id; the id comes last, where a reply's /vary
    looks for it."""
    tail = f"\nseed {image.seed} · {image.version} · image #{image.id}"
    prompt = job.prompt if job.kind != "img2img" or job.prompt else "variation"
    room = CAPTION_LIMIT - len(tail)
    if len(prompt) > room:
        prompt = prompt[: room - 1] + "…"
    return prompt + tail


def _rating_row(image_id: int, prefix: str = "") -> list[InlineKeyboardButton]:
    return [InlineKeyboardButton(f"{prefix}{score}", callback_data=f"s:{image_id}:{score}")
            for score in range(1, MAX_SCORE + 1)]


def keyboard(image: ImageRow) -> InlineKeyboardMarkup:
    return InlineKeyboardMarkup([
        [InlineKeyboardButton("🔀 Subtle", callback_data=f"v:{image.id}:s"),
         InlineKeyboardButton("🔀 Strong", callback_data=f"v:{image.id}:S"),
         InlineKeyboardButton("🎲 Reroll", callback_data=f"r:{image.id}"),
         InlineKeyboardButton("⬆️ Upscale", callback_data=f"u:{image.id}")],
        _rating_row(image.id),
    ])


def album_keyboard(images: list[ImageRow]) -> InlineKeyboardMarkup:
    """One row per picture of an album (albums cannot carry keyboards themselves)."""
    rows = []
    for image in images:
        rows.append([InlineKeyboardButton(f"🔀 #{image.id}", callback_data=f"v:{image.id}"),
                     *_rating_row(image.id)])
    rows.append([InlineKeyboardButton("🎲 Reroll all", callback_data=f"r:{images[0].id}")])
    rows.append([InlineKeyboardButton(f"⬆️ #{image.id}", callback_data=f"u:{image.id}")
                 for image in images])
    return InlineKeyboardMarkup(rows)


def with_score(markup: InlineKeyboardMarkup | None, image_id: int,
               score: int) -> InlineKeyboardMarkup | None:
    """The same keyboard with `score` marked on the rating buttons of `image_id`."""
    if markup is None:
        return None
    rows = []
    for row in markup.inline_keyboard:
        new_row = []
        for button in row:
            rated = parse_button(button.callback_data if isinstance(button.callback_data, str)
                                 else None)
            if rated and rated.action == "rate" and rated.image_id == image_id:
                label = f"{STAR}{rated.score}" if rated.score == score else str(rated.score)
                button = InlineKeyboardButton(label, callback_data=button.callback_data)
            new_row.append(button)
        rows.append(new_row)
    return InlineKeyboardMarkup(rows)


def progress_text(job: JobRow, step: int, total: int) -> str:
    percent = 100 * step // total if total else 0
    return f"Generating job #{job.id}… {percent}%"


# ---- throttled status edits -----------------------------------------------------------------

Edit = Callable[[int, int, str], Awaitable[object]]  # (chat id, message id, text)


@dataclass
class _Status:
    chat_id: int
    message_id: int
    latest: str = ""
    shown: str = ""
    task: asyncio.Task | None = None


PRUNE_AT = 1024  # chats remembered before those whose pacing is over are forgotten


class StatusEdits:
    """Progress edits of status messages, paced per chat (Telegram allows about 20 messages a
    minute in a group, fewer bursts in private): at most one edit in flight per job, and it
    always shows the newest value. Progress is cosmetic: every error is logged and dropped."""

    def __init__(self, edit: Edit, group_interval: float = 3.0,
                 private_interval: float = 1.0) -> None:
        self.edit = edit
        self.group_interval = group_interval
        self.private_interval = private_interval
        self._jobs: dict[int, _Status] = {}
        self._next_slot: dict[int, float] = {}

    def reserve(self, chat_id: int) -> float:
        """Claim the chat's next edit slot; the seconds to wait for it."""
        now = time.monotonic()
        if len(self._next_slot) >= PRUNE_AT:  # a chat whose next slot has passed needs none
            self._next_slot = {chat: at for chat, at in self._next_slot.items() if at > now}
        slot = max(now, self._next_slot.get(chat_id, 0.0))
        interval = self.group_interval if chat_id < 0 else self.private_interval
        self._next_slot[chat_id] = slot + interval
        return slot - now

    def update(self, job_id: int, chat_id: int, message_id: int, text: str) -> None:
        status = self._jobs.get(job_id)
        if status is None:
            status = self._jobs[job_id] = _Status(chat_id, message_id)
        status.latest = text
        if status.task is None or status.task.done():
            status.task = asyncio.create_task(self._run(status))

    async def _run(self, status: _Status) -> None:
        while status.latest != status.shown:
            await asyncio.sleep(self.reserve(status.chat_id))
            text = status.latest
            try:
                await self.edit(status.chat_id, status.message_id, text)
            except TelegramError as error:  # not modified, flood wait, deleted message, ...
                log.info("progress edit skipped: %s", error)
            status.shown = text  # shown or given up on: do not retry the same value

    async def finish(self, job_id: int) -> None:
        """Stop editing a job's status (before its result or failure is sent)."""
        status = self._jobs.pop(job_id, None)
        if status is not None and status.task is not None and not status.task.done():
            status.task.cancel()
            await asyncio.gather(status.task, return_exceptions=True)

    async def close(self) -> None:
        for job_id in list(self._jobs):
            await self.finish(job_id)
