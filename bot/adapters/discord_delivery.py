"""Reaching the user later: progress edits, the finished pictures, failures.

Everything needed is in the job's stored origin (application id, interaction token, the
placeholder message, channel and user), so this works after a restart too. The interaction token
lives 15 minutes; after that (or if Discord refuses it) the result goes to the channel as an
ordinary bot message that mentions the user.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import discord

from bot.adapters.discord_buttons import result_view
from bot.images import png_for_chat
from bot.service import Service
from bot.store import ImageRow, JobRow

log = logging.getLogger(__name__)

TOKEN_LIFETIME = 15 * 60
TOKEN_MARGIN = 60  # stop using a token a minute early: a long upload must not cross the line
EDIT_INTERVAL = 2.0  # at most one progress edit per job this often
BAR_WIDTH = 12
# What a failed edit or delete may raise; such a failure is logged and otherwise ignored.
COSMETIC_ERRORS = (discord.HTTPException, aiohttp.ClientError, OSError, RuntimeError)


@dataclass
class _Edits:
    """One job's throttled progress edits: the newest value waits for its turn."""

    latest: tuple[int, int] | None = None
    last: float = -EDIT_INTERVAL
    task: asyncio.Task | None = field(default=None, repr=False)


class Delivery:
    def __init__(self, client: discord.Client, service: Service) -> None:
        self.client = client
        self.service = service
        self.clock: Callable[[], float] = time.time  # wall clock, as interaction times are
        self._edits: dict[int, _Edits] = {}

    # ---- the token ---------------------------------------------------------------------------

    def token_alive(self, origin: dict[str, Any]) -> bool:
        created = origin.get("created_at")
        return bool(origin.get("token")) and created is not None and (
            self.clock() < created + TOKEN_LIFETIME - TOKEN_MARGIN)

    def _webhook(self, origin: dict[str, Any]) -> discord.Webhook:
        return discord.Webhook.partial(int(origin["application_id"]), origin["token"],
                                       client=self.client)

    # ---- progress ----------------------------------------------------------------------------

    async def progress(self, job: JobRow, step: int, total: int) -> None:
        if not job.origin.get("message_id") or not self.token_alive(job.origin):
            return
        edits = self._edits.setdefault(job.id, _Edits())
        edits.latest = (step, total)
        if edits.task is None or edits.task.done():
            edits.task = asyncio.create_task(self._edit_progress(job, edits))

    async def _edit_progress(self, job: JobRow, edits: _Edits) -> None:
        while edits.latest is not None:
            wait = edits.last + EDIT_INTERVAL - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            (step, total), edits.latest = edits.latest, None
            edits.last = time.monotonic()
            try:
                await self._webhook(job.origin).edit_message(
                    int(job.origin["message_id"]), content=progress_text(job, step, total))
            except COSMETIC_ERRORS as error:  # cosmetic: never stops the job
                log.warning("progress edit for job %d failed (%s)", job.id, _why(error))

    def _stop_progress(self, job_id: int) -> None:
        edits = self._edits.pop(job_id, None)
        if edits and edits.task:
            edits.task.cancel()

    def close(self) -> None:
        for job_id in list(self._edits):
            self._stop_progress(job_id)

    # ---- outcomes ----------------------------------------------------------------------------

    async def deliver_images(self, job: JobRow, images: list[ImageRow]) -> None:
        self._stop_progress(job.id)
        pngs = await asyncio.to_thread(self._pngs, images)
        user = job.origin.get("user_id") or job.platform_user_id
        message: dict[str, Any] = {
            "content": f"<@{user}> {_done_text(job, images)}",
            "embed": result_embed(job, images, [name for name, _ in pngs]),
            "view": result_view([image.id for image in images]),
            "allowed_mentions": discord.AllowedMentions(users=[discord.Object(int(user))]),
        }
        posted = await self._follow_up(job, message, pngs)
        if posted is not None:
            await self._delete_placeholder(job)
            where = {"message": str(posted), "via": "followup"}
        else:
            where = {"message": str(await self._to_channel(job, message, pngs)),
                     "via": "channel"}
        try:
            await self.service.store.note_posted(job.id, {image.id: where for image in images})
        except Exception:  # the pictures are out: a lost note only means /delete can't edit
            log.exception("job %d: could not note where its pictures went", job.id)

    async def retract(self, job: JobRow, image: ImageRow) -> None:
        """A deleted picture: its message says so and shows only the job's pictures that are
        left (files sent again, with their embed and buttons), or none."""
        where = (job.origin.get("posted") or {}).get(str(image.id))
        if not where:
            return
        left = await self.service.store.images_for_job(job.id)
        edit: dict[str, Any] = {"content": f"Image #{image.id} was deleted."}
        if left:
            pngs = await asyncio.to_thread(self._pngs, left)
            edit.update(attachments=_files(pngs),
                        embed=result_embed(job, left, [name for name, _ in pngs]),
                        view=result_view([picture.id for picture in left]))
        else:
            edit.update(attachments=[], embeds=[], view=None)
        try:
            if where["via"] == "followup" and self.token_alive(job.origin):
                await self._webhook(job.origin).edit_message(int(where["message"]), **edit)
            elif job.origin.get("channel_id"):
                channel = self.client.get_partial_messageable(int(job.origin["channel_id"]))
                await channel.get_partial_message(int(where["message"])).edit(**edit)
        except discord.HTTPException as error:
            log.info("image %d: its message was not edited (%s)", image.id, error.status)

    async def deliver_failure(self, job: JobRow, message: str) -> None:
        self._stop_progress(job.id)
        origin = job.origin
        if origin.get("message_id") and self.token_alive(origin):
            try:
                await self._webhook(origin).edit_message(int(origin["message_id"]),
                                                         content=message)
                return
            except discord.HTTPException as error:
                log.info("job %d: could not edit the response (%s); posting in the channel",
                         job.id, error.status)
        user = origin.get("user_id") or job.platform_user_id
        await self._to_channel(job, {
            "content": f"<@{user}> {message}",
            "allowed_mentions": discord.AllowedMentions(users=[discord.Object(int(user))]),
        }, [])

    async def announce(self, origin: dict[str, Any], text: str) -> None:
        """News that belongs to no job (retraining): in the channel, to whoever asked."""
        user = origin["user_id"]
        channel = self.client.get_partial_messageable(int(origin["channel_id"]))
        await channel.send(f"<@{user}> {text}", allowed_mentions=discord.AllowedMentions(
            users=[discord.Object(int(user))]))

    async def _follow_up(self, job: JobRow, message: dict[str, Any],
                         pngs: list[tuple[str, bytes]]) -> int | None:
        """Send as a follow-up of the interaction: its message id; None if the token is too
        old or refused."""
        if not self.token_alive(job.origin):
            return None
        try:
            sent = await self._webhook(job.origin).send(**message, files=_files(pngs),
                                                        wait=True)
            return sent.id
        except discord.HTTPException as error:
            log.info("job %d: follow-up refused (%s); posting in the channel",
                     job.id, error.status)
            return None

    async def _to_channel(self, job: JobRow, message: dict[str, Any],
                          pngs: list[tuple[str, bytes]]) -> int:
        """An ordinary message in the command's channel: its id. Raises if that fails too, so
        the service tries again at the next start."""
        channel_id = job.origin.get("channel_id")
        if not channel_id:
            raise RuntimeError(f"job {job.id} has no channel to deliver to")
        channel = self.client.get_partial_messageable(int(channel_id))
        return (await channel.send(**message, files=_files(pngs))).id

    async def _delete_placeholder(self, job: JobRow) -> None:
        """The 'queued… 45%' message has done its job once the result is posted."""
        message_id = job.origin.get("message_id")
        if not message_id:
            return
        try:
            await self._webhook(job.origin).delete_message(int(message_id))
        except COSMETIC_ERRORS as error:
            log.info("job %d: could not remove the progress message (%s)", job.id, _why(error))

    def _pngs(self, images: list[ImageRow]) -> list[tuple[str, bytes]]:
        size = self.service.chat_image_size
        # SPOILER_: Discord hides the picture until clicked (one the safety checker flagged,
        # in a chat that allows those).
        return [(f"{'SPOILER_' if image.flagged else ''}canvas-{image.id}.png",
                 png_for_chat(self.service.image_file(image), size))
                for image in images]


def _why(error: Exception) -> str:
    return str(getattr(error, "status", "")) or type(error).__name__


def _files(pngs: list[tuple[str, bytes]]) -> list[discord.File]:
    return [discord.File(io.BytesIO(data), filename=name) for name, data in pngs]


def progress_text(job: JobRow, step: int, total: int) -> str:
    share = step / total if total else 0
    filled = round(share * BAR_WIDTH)
    bar = "█" * filled + "░" * (BAR_WIDTH - filled)
    return (f"🎨 Job #{job.id}: **{_short(job.prompt, 200)}**\n"
            f"`{bar}` {100 * share:.0f}% (step {step} of {total})")


def _done_text(job: JobRow, images: list[ImageRow]) -> str:
    ids = ", ".join(f"#{image.id}" for image in images)
    noun = "image" if len(images) == 1 else "images"
    return f"job #{job.id} is done: {noun} {ids}."


def result_embed(job: JobRow, images: list[ImageRow], names: list[str]) -> discord.Embed:
    embed = discord.Embed(title=_short(job.prompt or "(no prompt)", 256), colour=0x5865F2)
    embed.add_field(name="Seed" if len(images) == 1 else "Seeds",
                    value=", ".join(str(image.seed) for image in images))
    embed.add_field(name="Image" if len(images) == 1 else "Images",
                    value=", ".join(f"#{image.id}" for image in images))
    embed.add_field(name="Model", value=_short(images[0].version, 1024) if images else "?")
    if job.params.negative:
        embed.add_field(name="Negative", value=_short(job.params.negative, 1024), inline=False)
    if len(names) == 1 and not images[0].flagged:  # an embed's picture is never blurred
        embed.set_image(url=f"attachment://{names[0]}")
    size = f"{images[0].width}×{images[0].height}" if images else ""
    embed.set_footer(text=f"job #{job.id} · {size} · {job.kind}")
    return embed


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
