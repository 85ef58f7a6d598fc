"""How one interaction is answered, the same for slash commands and buttons.

Discord cancels an interaction not answered within 3 seconds, and a deferred response keeps the
ephemerality chosen when it was deferred. So, as the big image bots do:

- everything that can be checked without waiting (option values, admin rights, attachment type,
  size and pixel count, mask size, all from the interaction payload) is checked first, and a
  problem is the interaction's one response, ephemeral ("only you can see this");
- a job command is then deferred publicly ("Magic Canvas is thinking…") and that message is
  edited with the queue position and progress, so the channel sees the work happening;
- a problem found only after that (a damaged image once downloaded, a full queue) deletes the
  public placeholder and is sent as an ephemeral follow-up;
- commands that only read or write the database (/rate, /queue, /history, …) are deferred
  ephemerally and answered by editing that response: their answers are for the user alone.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from pathlib import PurePath
from typing import Any

import discord

from bot import commands as cmd
from bot.config import LimitSettings
from bot.service import Attachment, Reply, Service, User

log = logging.getLogger(__name__)

PLATFORM = "discord"
IMAGE_TYPES = {"image/png", "image/jpeg", "image/webp", "image/gif", "image/bmp"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp"}


def service_of(interaction: discord.Interaction) -> Service:
    return interaction.client.service  # type: ignore[attr-defined]  # a CanvasClient


def user_of(interaction: discord.Interaction) -> User:
    member = interaction.user
    return User(PLATFORM, str(member.id), member.display_name)


def _age_restricted(channel: Any) -> bool:
    """A channel, or a thread in one, marked age-restricted (discord.py: is_nsfw())."""
    is_nsfw = getattr(channel, "is_nsfw", None)
    return bool(is_nsfw()) if callable(is_nsfw) else False


def origin_of(interaction: discord.Interaction, message_id: int | None) -> dict[str, Any]:
    """Where to deliver a job's result, stored with the job. The token is a short-lived
    credential: it is kept in the database, never logged."""
    return {
        "application_id": str(interaction.application_id),
        "token": interaction.token,
        "interaction_id": str(interaction.id),
        "request_key": f"discord:{interaction.id}",
        "message_id": str(message_id) if message_id else None,
        "channel_id": str(interaction.channel_id) if interaction.channel_id else None,
        "guild_id": str(interaction.guild_id) if interaction.guild_id else None,
        # An age-restricted channel: pictures the safety checker flags come as spoilers.
        "nsfw": _age_restricted(interaction.channel),
        "user_id": str(interaction.user.id),
        "created_at": interaction.created_at.timestamp(),
    }


async def on_app_command_error(interaction: discord.Interaction,
                               error: discord.app_commands.AppCommandError) -> None:
    """The command tree's error handler: an option value discord.py could not convert (a choice
    that is not on the list, from a forged or stale interaction) is refused like any bad value;
    anything else is our fault. Without this the user would get no answer at all."""
    if isinstance(error, discord.app_commands.TransformerError):
        value = str(error.value)
        value = value if len(value) <= 40 else value[:39] + "…"
        text = (f"I can't use {value!r} for that option; please pick one of the choices "
                "Discord offers.")
    else:
        log.error("discord: command failed", exc_info=error)
        text = "Sorry, something went wrong on my side. Please try again in a moment."
    try:
        await refuse(interaction, text)
    except discord.HTTPException as failure:
        log.warning("could not answer a failed command (%s)", failure.status)


async def refuse(interaction: discord.Interaction, text: str) -> None:
    """A user-fixable problem, shown only to the user, as the first response or a follow-up."""
    if interaction.response.is_done():
        await interaction.followup.send(text, ephemeral=True)
    else:
        await interaction.response.send_message(text, ephemeral=True)


# ---- attachments -----------------------------------------------------------------------------


def attachment_problem(attachment: discord.Attachment, what: str,
                       limits: LimitSettings) -> str | None:
    """What is wrong with an attachment judging by what Discord says about it (no download)."""
    content_type = (attachment.content_type or "").split(";")[0].strip().lower()
    suffix = PurePath(attachment.filename).suffix.lower()
    is_image = content_type in IMAGE_TYPES or (not content_type and suffix in IMAGE_SUFFIXES)
    if not is_image:
        shown = content_type or suffix or "an unknown kind of file"
        return (f"The {what} ({attachment.filename}) is {shown}, not a picture. "
                "Please attach a PNG, JPEG, WebP, GIF or BMP.")
    if attachment.size > limits.max_image_bytes:
        return (f"The {what} is {attachment.size / 1e6:.1f} MB; the limit is "
                f"{limits.max_image_bytes / 1e6:.1f} MB. Please attach a smaller picture.")
    if attachment.width and attachment.height:
        pixels = attachment.width * attachment.height
        if pixels > limits.max_image_pixels:
            return (f"The {what} is {attachment.width}×{attachment.height} pixels; the limit is "
                    f"{limits.max_image_pixels:,} pixels in all. Please attach a smaller one.")
    return None


def attachments_problem(image: discord.Attachment | None, mask: discord.Attachment | None,
                        limits: LimitSettings) -> str | None:
    for attachment, what in ((image, "image"), (mask, "mask")):
        if attachment is not None and (problem := attachment_problem(attachment, what, limits)):
            return problem
    if image and mask and image.width and mask.width and (
            (image.width, image.height) != (mask.width, mask.height)):
        return (f"The mask is {mask.width}×{mask.height} but the image is {image.width}×"
                f"{image.height}; they must be the same size (white in the mask = repaint).")
    return None


async def download(attachment: discord.Attachment | None) -> Attachment | None:
    if attachment is None:
        return None
    try:
        return Attachment(await attachment.read(), attachment.filename)
    except discord.HTTPException as error:
        raise cmd.CommandError(f"I could not download {attachment.filename} from Discord "
                               f"({error.status}); please attach it again.") from None


# ---- answering -------------------------------------------------------------------------------


async def run_job(interaction: discord.Interaction, request: cmd.Request | None, *,
                  image: discord.Attachment | None = None, mask: discord.Attachment | None = None,
                  submit: Callable[[User, dict], Awaitable[Reply]] | None = None) -> None:
    """Answer a command that queues a job: check, defer publicly, queue, show the position.
    `submit` replaces `service.handle(request)` (the Reroll button)."""
    service = service_of(interaction)
    if problem := attachments_problem(image, mask, service.settings.limits):
        await refuse(interaction, problem)
        return
    deferred = await interaction.response.defer(thinking=True)
    message_id = getattr(deferred, "message_id", None)
    user, origin = user_of(interaction), origin_of(interaction, message_id)
    try:
        if submit is not None:
            reply = await submit(user, origin)
        else:
            assert request is not None
            reply = await service.handle(user, request, image=await download(image),
                                         mask=await download(mask), origin=origin)
    except cmd.CommandError as error:
        reply = Reply(str(error), error=True)
    if reply.error:
        await _drop_placeholder(interaction)
        await interaction.followup.send(reply.text, ephemeral=True)
        return
    await _edit_placeholder(interaction, f"{reply.text} I'll update this message as it runs.")


async def run_quick(interaction: discord.Interaction, request: cmd.Request) -> None:
    """Answer a command that needs no job, for the user's eyes only."""
    await interaction.response.defer(ephemeral=True, thinking=True)
    reply = await service_of(interaction).handle(user_of(interaction), request,
                                                 origin=origin_of(interaction, None))
    if reply.confirm == "forgetme":
        from bot.adapters.discord_buttons import confirm_view  # (it imports this module)

        await interaction.edit_original_response(content=_fit(reply.text),
                                                 view=confirm_view(interaction.user.id))
        return
    await interaction.edit_original_response(content=_fit(reply.text))


async def _edit_placeholder(interaction: discord.Interaction, text: str) -> None:
    try:
        await interaction.edit_original_response(content=_fit(text))
    except discord.HTTPException as error:
        log.warning("could not show the queue position (%s)", error.status)


async def _drop_placeholder(interaction: discord.Interaction) -> None:
    try:
        await interaction.delete_original_response()
    except discord.HTTPException as error:
        log.warning("could not remove the thinking message (%s)", error.status)


def _fit(text: str, limit: int = 2000) -> str:
    """Discord refuses messages over 2000 characters."""
    return text if len(text) <= limit else text[: limit - 1] + "…"
