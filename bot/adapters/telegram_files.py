"""Pictures users send to the Telegram bot: which message parts carry them, a size check from
Telegram's own metadata before anything is downloaded, and albums gathered into one command.

Telegram delivers an album (media group) as separate messages with the same `media_group_id`;
only one of them carries the caption, so the parts are held until no new part has arrived for
a moment and then handled together.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable

from telegram import Document, Message, PhotoSize
from telegram.error import TelegramError

from bot.service import Attachment

log = logging.getLogger(__name__)

Media = PhotoSize | Document

# What the bot's own captions end with: "… · image #12".
IMAGE_ID = re.compile(r"image #(\d+)")


class FileProblem(Exception):
    """A file the user sent cannot be used; the message is the reply."""


def media_of(message: Message) -> tuple[Media, str] | None:
    """The picture a message carries (the largest size of a photo, or a document) and a
    filename for it, or None."""
    if message.photo:
        return message.photo[-1], "photo.jpg"
    if message.document:
        return message.document, message.document.file_name or "document"
    return None


def image_id_in(message: Message, bot_id: int) -> int | None:
    """The image id in the caption of one of the bot's own result messages."""
    if message.from_user is None or message.from_user.id != bot_id:
        return None
    found = IMAGE_ID.findall(message.caption or message.text or "")
    return int(found[-1]) if found else None


async def download(media: Media, filename: str, max_bytes: int, what: str) -> Attachment:
    """Fetch one picture, refusing it before download when Telegram says it is too large
    or not an image at all. Decoding and the pixel limit are the service's business."""
    mime = getattr(media, "mime_type", None)
    if mime and not mime.startswith("image/"):
        raise FileProblem(f"The {what} you sent is a {mime} file, not a picture. Please send "
                          "a PNG, JPEG or WebP.")
    if media.file_size and media.file_size > max_bytes:
        raise FileProblem(f"The {what} is {_mb(media.file_size)}; the limit is "
                          f"{_mb(max_bytes)}.")
    try:
        file = await media.get_file()
        data = await file.download_as_bytearray()
    except TelegramError as error:
        log.info("could not download a %s: %s", what, error)
        raise FileProblem(f"I could not download the {what} from Telegram ({error}). "
                          "Please try sending it again.") from None
    if len(data) > max_bytes:  # metadata can be missing
        raise FileProblem(f"The {what} is {_mb(len(data))}; the limit is {_mb(max_bytes)}.")
    return Attachment(bytes(data), filename)


def _mb(size: int) -> str:
    return f"{size / 1_000_000:.1f} MB"


class Albums:
    """Collects the parts of each album and hands them, sorted, to `handler` once no new
    part has come for `wait` seconds."""

    def __init__(self, handler: Callable[[list[Message]], Awaitable[None]],
                 wait: float = 1.0) -> None:
        self.handler = handler
        self.wait = wait
        self._parts: dict[str, list[Message]] = {}
        self._timers: dict[str, asyncio.Task] = {}

    def add(self, message: Message) -> None:
        group = str(message.media_group_id)
        self._parts.setdefault(group, []).append(message)
        timer = self._timers.get(group)
        if timer is not None:
            timer.cancel()
        self._timers[group] = asyncio.create_task(self._flush_later(group))

    async def _flush_later(self, group: str) -> None:
        await asyncio.sleep(self.wait)
        self._timers.pop(group, None)
        parts = sorted(self._parts.pop(group, []), key=lambda m: m.message_id)
        try:
            await self.handler(parts)
        except Exception:
            log.exception("could not handle an album")

    async def close(self) -> None:
        timers = list(self._timers.values())
        for timer in timers:
            timer.cancel()
        await asyncio.gather(*timers, return_exceptions=True)
        self._timers.clear()
        self._parts.clear()
