"""The Telegram adapter, on python-telegram-bot: messages and button presses in, Requests to the
service; replies, progress edits, photos and albums out.

A command is answered at once with a status message, which is edited as the job waits and runs
and removed when the pictures arrive. Everything a later delivery needs (chat, status message,
the user's message) goes in the job's `origin`, stored with the job, so results still reach the
chat after a restart; buttons carry their action and image id, so they keep working too.

Requests go through PTB's AIORateLimiter, which paces messages per chat and waits out 429s.

Updates come by long polling, or, with `telegram.webhook_url` set, by webhook: PTB's own
webhook server (tornado) listens on `telegram.webhook_listen` and accepts only posts that carry
the secret token Telegram was given.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit

from telegram import (
    BotCommand,
    BotCommandScopeChat,
    BotCommandScopeDefault,
    CallbackQuery,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    InputFile,
    InputMediaPhoto,
    LinkPreviewOptions,
    Message,
    ReplyParameters,
    Update,
)
from telegram.error import BadRequest, Forbidden, NetworkError, TelegramError
from telegram.ext import (
    AIORateLimiter,
    Application,
    CallbackQueryHandler,
    ContextTypes,
    MessageHandler,
    filters,
)

from bot import commands as cmd
from bot.adapters.telegram_files import Albums, FileProblem, download, image_id_in, media_of
from bot.adapters.telegram_ui import (
    StatusEdits,
    album_keyboard,
    caption,
    keyboard,
    parse_button,
    progress_text,
    with_score,
)
from bot.config import Settings, split_host_port
from bot.images import deleted_notice, png_for_chat
from bot.service import Attachment, Service, User
from bot.store import ImageRow, JobRow

log = logging.getLogger(__name__)

PLATFORM = "telegram"
ADMIN_COMMANDS = ("retrain", "model")
WORKING = "Working on it…"
TELEGRAM_NOTE = (
    "\n\nOn Telegram: reply /vary to one of my pictures, or send a picture with the caption "
    "/vary. For /inpaint send an album of two (the picture, then the mask), or one PNG with "
    "transparency sent as a file. Pictures sent as photos are recompressed by Telegram; "
    "send them as files to keep every pixel.")
DELIVERY_TRIES = 3
ALBUM_KEYS = "keys"  # in a job's `posted`: the message holding an album's buttons
UPDATES = ["message", "callback_query"]  # the update types the adapter handles


def api_urls(api_base_url: str, file_base_url: str) -> tuple[str, str]:
    """PTB's base URLs (the token is appended) for a Bot API server's root URL; a URL that
    already ends in /bot, or holds {token}, is taken as it is."""
    def prefix(url: str, default: str) -> str:
        if not url:
            return default
        return url if url.endswith("/bot") or "{token}" in url else f"{url}/bot"

    api = prefix(api_base_url, "https://api.telegram.org/bot")
    if file_base_url:
        files = file_base_url if file_base_url.endswith("/bot") or "{token}" in file_base_url \
            else f"{file_base_url}/file/bot"
    elif api_base_url:  # a self-hosted server serves files too
        files = api.removesuffix("/bot") + "/file/bot"
    else:
        files = "https://api.telegram.org/file/bot"
    return api, files


class TelegramAdapter:
    """Serves one bot token. `start()` returns once polling (or the webhook server) runs."""

    album_wait = 1.0  # seconds without a new album part before the album is handled

    def __init__(self, service: Service, settings: Settings) -> None:
        self.service = service
        self.settings = settings
        # httpx logs every request URL at INFO, and the URL holds the token; PTB's own debug
        # lines print the base URL with it. Keep both above those levels.
        logging.getLogger("httpx").setLevel(logging.WARNING)
        logging.getLogger("telegram").setLevel(max(logging.INFO,
                                                   logging.getLogger("telegram").level))
        api, files = api_urls(settings.telegram.api_base_url, settings.telegram.file_base_url)
        self.app = (
            Application.builder().token(settings.telegram.token).base_url(api)
            .base_file_url(files).rate_limiter(AIORateLimiter(max_retries=3))
            .concurrent_updates(True).build()
        )
        self.app.add_handler(MessageHandler(filters.UpdateType.MESSAGE, self._on_message))
        self.app.add_handler(CallbackQueryHandler(self._on_button))
        self.app.add_error_handler(self._on_error)
        self.status = StatusEdits(self._edit_text)
        self.albums = Albums(self._on_album, self.album_wait)
        self._tasks: set[asyncio.Task] = set()
        service.register(PLATFORM, self)

    @property
    def bot(self) -> Any:
        return self.app.bot

    # ---- start and stop ------------------------------------------------------------------

    async def start(self) -> None:
        self.albums.wait = self.album_wait
        await self.app.initialize()
        await self._register_commands()
        await self.app.start()
        if self.settings.telegram.webhook_url:
            await self._start_webhook()
        else:  # start_polling also deletes a webhook left from an earlier run
            await self.app.updater.start_polling(allowed_updates=UPDATES)
            log.info("telegram: serving as @%s by long polling", self.bot.username)

    async def _start_webhook(self) -> None:
        """PTB's webhook server on webhook_listen; it calls setWebhook itself. The webhook is
        left set at stop, so Telegram keeps updates until the next start."""
        settings = self.settings.telegram
        host, port = split_host_port(settings.webhook_listen)
        # The server answers on the public URL's own path, so a reverse proxy can forward
        # requests unchanged. The path need not be secret: every post must carry the secret
        # token, and without a configured one a random one is made at each start (Telegram
        # gets it with setWebhook), so forged posts are refused with 403 either way.
        # PTB puts the path into a tornado route, a regular expression: escape it. It adds
        # `/?` to the end, so the path is taken without its trailing slash.
        path = re.escape(urlsplit(settings.webhook_url).path.rstrip("/"))
        secret = settings.webhook_secret or secrets.token_urlsafe(32)  # only A-Z a-z 0-9 _ -
        try:
            await self.app.updater.start_webhook(
                listen=host, port=port, url_path=path, webhook_url=settings.webhook_url,
                secret_token=secret, allowed_updates=UPDATES, drop_pending_updates=False)
        except OSError as error:  # the port is taken, or the host is not an address here
            raise RuntimeError(f"telegram.webhook_listen: cannot listen on "
                               f"{settings.webhook_listen}: {error.strerror or error}") from None
        log.info("telegram: serving as @%s by webhook, listening on %s",
                 self.bot.username, settings.webhook_listen)

    async def stop(self) -> None:
        if self.app.updater.running:  # polling or the webhook server, whichever runs
            await self.app.updater.stop()
        if self.app.running:
            await self.app.stop()
        await self.albums.close()
        await self.status.close()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.app.shutdown()

    async def _register_commands(self) -> None:
        everyone = [BotCommand(name, text) for name, text in cmd.COMMANDS.items()
                    if name not in ADMIN_COMMANDS]
        await self.bot.set_my_commands(everyone, scope=BotCommandScopeDefault())
        every = [BotCommand(name, text) for name, text in cmd.COMMANDS.items()]
        for admin in sorted(self.settings.admins.telegram):
            try:  # fails until the admin has opened a chat with the bot
                await self.bot.set_my_commands(every, scope=BotCommandScopeChat(int(admin)))
            except TelegramError as error:
                log.info("telegram: admin commands not shown to %s: %s", admin, error)

    # ---- incoming messages ---------------------------------------------------------------

    async def _on_message(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        message = update.message
        if message is None or message.from_user is None or message.from_user.is_bot:
            return
        if message.media_group_id:
            self.albums.add(message)
        else:
            await self._command([message])

    async def _on_album(self, parts: list[Message]) -> None:
        await self._command(parts)

    async def _command(self, parts: list[Message]) -> None:
        texts = [(m, m.text or m.caption or "") for m in parts]
        found = next(((m, t) for m, t in texts if t.startswith("/")), None)
        if found is None:
            return  # an album or message without a command: not for us
        message, text = found
        addressed = text.split(maxsplit=1)[0].partition("@")[2]
        if addressed and addressed.lower() != (self.bot.username or "").lower():
            return  # `/imagine@OtherBot`
        try:
            request = cmd.parse(text, max_prompt_chars=self.service.settings.limits
                                .max_prompt_chars)
        except cmd.CommandError as error:
            await self._reply(message, str(error))
            return
        try:
            if isinstance(request, cmd.Upscale) and request.image_id is None \
                    and message.reply_to_message is not None:
                found = image_id_in(message.reply_to_message, self.bot.id)
                request = replace(request, image_id=found) if found else request
            if isinstance(request, cmd.Imagine | cmd.Vary | cmd.Inpaint | cmd.Upscale):
                await self._job_command(message, parts, request)
            else:
                reply = await self.service.handle(_user(message), request,
                                                  origin=_origin(message, None))
                text = reply.text + (TELEGRAM_NOTE if isinstance(request, cmd.Help) else "")
                if reply.private:
                    await self._reply_privately(message, text)
                elif reply.confirm == "forgetme":
                    button = InlineKeyboardButton("Yes, forget me",
                                                  callback_data=f"f:{message.from_user.id}")
                    await self._reply(message, text,
                                      reply_markup=InlineKeyboardMarkup([[button]]))
                else:
                    await self._reply(message, text)
        except Exception:
            log.exception("telegram: could not answer a command")
            await self._reply(message, "Sorry, something went wrong on my side. Please try "
                                       "again in a moment.")

    async def _job_command(self, message: Message, parts: list[Message],
                           request: cmd.Imagine | cmd.Vary | cmd.Inpaint | cmd.Upscale
                           ) -> None:
        status = await message.reply_text(WORKING, do_quote=True)
        origin = _origin(message, status)
        image = mask = None
        try:
            if isinstance(request, cmd.Vary) and request.image_id is None:
                request, image = await self._vary_source(message, parts, request)
            elif isinstance(request, cmd.Inpaint):
                image, mask = await self._inpaint_sources(message, parts)
        except FileProblem as problem:
            await self._set_status(status, str(problem))
            return
        reply = await self.service.handle(_user(message), request, image=image, mask=mask,
                                          origin=origin)
        # A queued job can be done and its status message removed before this edit gets its
        # turn (all calls wait in the rate limiter): then "Queued" must not follow the picture.
        await self._set_status(status, reply.text, resend=not reply.queued)

    async def _vary_source(self, message: Message, parts: list[Message],
                           request: cmd.Vary) -> tuple[cmd.Vary, Attachment | None]:
        """What /vary without an id means here: an attached picture, or the picture the
        command replies to (one of ours by its id, anyone else's by its file)."""
        attached = self._media(parts)
        if attached:
            return request, await self._fetch(attached[0], "image")
        replied = message.reply_to_message
        if replied is not None:
            image_id = image_id_in(replied, self.bot.id)
            if image_id is not None:
                return replace(request, image_id=image_id), None
            media = media_of(replied)
            if media:
                return request, await self._fetch(media, "image")
        return request, None

    async def _inpaint_sources(self, message: Message, parts: list[Message]
                               ) -> tuple[Attachment | None, Attachment | None]:
        attached = self._media(parts)
        if not attached and message.reply_to_message is not None:
            attached = self._media([message.reply_to_message])
        if len(attached) > 2:
            raise FileProblem("For /inpaint send exactly two pictures: the picture, then the "
                              "mask (white = repaint).")
        image = await self._fetch(attached[0], "image") if attached else None
        mask = await self._fetch(attached[1], "mask") if len(attached) > 1 else None
        return image, mask

    @staticmethod
    def _media(parts: list[Message]) -> list[tuple[Any, str]]:
        return [media for part in parts if (media := media_of(part))]

    async def _fetch(self, media: tuple[Any, str], what: str) -> Attachment:
        return await download(*media, self.service.settings.limits.max_image_bytes, what)

    # ---- buttons -------------------------------------------------------------------------

    async def _on_button(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        query = update.callback_query
        if query is None:
            return
        message = query.message if isinstance(query.message, Message) else None
        if isinstance(query.data, str) and query.data.startswith("f:") and message is not None:
            await self._on_forget(query, message)
            return
        button = parse_button(query.data if isinstance(query.data, str) else None)
        if button is None or message is None:
            await _answer(query, "Sorry, I don't know that button. Try /help.")
            return
        if not _on_keyboard(message, query.data):
            # Telegram passes on whatever data a client sends: a press counts only for a
            # button the message really has, so nobody can act on images by forged ids.
            await _answer(query, "Sorry, that is not one of this message's buttons.")
            return
        user = User(PLATFORM, str(query.from_user.id), query.from_user.full_name)
        if button.action == "rate":
            reply = await self.service.handle(user, cmd.Rate(button.image_id, button.score or 0))
            await _answer(query, reply.text, alert=reply.error)
            if not reply.error:
                await self._mark_score(message, button.image_id, button.score or 0)
            return
        status = await message.reply_text(f"{user.name}: {WORKING}", do_quote=True)
        origin = _origin(message, status, request_key=f"telegram:press:{query.id}")
        if button.action == "vary":
            reply = await self.service.handle(user, cmd.varied(button.image_id, button.how),
                                              origin=origin)
        elif button.action == "upscale":
            reply = await self.service.handle(user, cmd.Upscale(button.image_id), origin=origin)
        else:
            reply = await self.service.reroll(user, button.image_id, origin)
        await _answer(query, reply.text, alert=reply.error)
        await self._set_status(status, f"{user.name}: {reply.text}")

    async def _on_forget(self, query: CallbackQuery, message: Message) -> None:
        """The "Yes, forget me" button: it works for the one who asked, once."""
        if not _on_keyboard(message, query.data):
            await _answer(query, "Sorry, that is not one of this message's buttons.")
            return
        if query.data != f"f:{query.from_user.id}":
            await _answer(query, "This button is for the one who sent /forgetme.", alert=True)
            return
        user = User(PLATFORM, str(query.from_user.id), query.from_user.full_name)
        reply = await self.service.handle(user, cmd.ForgetMe(confirm=True))
        await _answer(query, reply.text[:200], alert=reply.error)
        try:
            await message.edit_text(reply.text, reply_markup=None)
        except TelegramError as error:
            log.info("forget-me message not edited: %s", error)

    async def _mark_score(self, message: Message, image_id: int, score: int) -> None:
        markup = with_score(message.reply_markup, image_id, score)
        try:
            await message.edit_reply_markup(reply_markup=markup)
        except TelegramError as error:  # "not modified" when the same score is pressed again
            log.info("rating keyboard not updated: %s", error)

    # ---- the Deliverer the service calls -------------------------------------------------

    async def progress(self, job: JobRow, step: int, total: int) -> None:
        chat_id, status_id = job.origin.get("chat_id"), job.origin.get("status_id")
        if chat_id is not None and status_id is not None:
            self.status.update(job.id, chat_id, status_id, progress_text(job, step, total))

    async def deliver_images(self, job: JobRow, images: list[ImageRow]) -> None:
        await self.status.finish(job.id)
        chat_id = job.origin.get("chat_id")
        if chat_id is None or not images:
            log.warning("job %d has no chat to deliver to", job.id)
            return
        pngs = await asyncio.gather(*(asyncio.to_thread(
            png_for_chat, self.service.image_file(image), self.service.chat_image_size)
            for image in images))
        where = _where(job)
        if len(images) == 1:
            sent = [await _retrying(lambda: self.bot.send_photo(
                chat_id, InputFile(pngs[0], filename=f"canvas-{images[0].id}.png"),
                caption=caption(job, images[0]), reply_markup=keyboard(images[0]),
                has_spoiler=images[0].flagged, **where))]
        else:
            # Bytes, not InputFile: PTB then attaches each file by its own name.
            album = [InputMediaPhoto(png, caption=caption(job, image),
                                     filename=f"canvas-{image.id}.png",
                                     has_spoiler=image.flagged)
                     for image, png in zip(images, pngs, strict=True)]
            sent = list(await _retrying(lambda: self.bot.send_media_group(chat_id, album,
                                                                          **where)))
            keys = await _retrying(lambda: self.bot.send_message(
                chat_id, _album_text(images), reply_markup=album_keyboard(images), **where))
        posted: dict[int | str, int] = {
            image.id: message.message_id for image, message in zip(images, sent, strict=False)}
        if len(images) > 1:
            posted[ALBUM_KEYS] = keys.message_id
        try:
            await self.service.store.note_posted(job.id, posted)
        except Exception:  # the pictures are out: a lost note only means /delete can't edit
            log.exception("job %d: could not note where its pictures went", job.id)
        await self._drop_status(job)

    async def retract(self, job: JobRow, image: ImageRow) -> None:
        """A deleted picture: its photo is replaced by a notice, its buttons removed."""
        message_id = (job.origin.get("posted") or {}).get(str(image.id))
        chat_id = job.origin.get("chat_id")
        if message_id is None or chat_id is None:
            return
        notice = InputMediaPhoto(deleted_notice(), caption=f"Image #{image.id} was deleted.",
                                 filename="deleted.png")
        try:
            await self.bot.edit_message_media(notice, chat_id, message_id, reply_markup=None)
        except TelegramError as error:  # too old to edit, or already gone
            log.info("image %d: its message was not edited (%s)", image.id, error)
        keys_id = (job.origin.get("posted") or {}).get(ALBUM_KEYS)
        if keys_id is not None:
            await self._rekey_album(job, chat_id, keys_id)

    async def _rekey_album(self, job: JobRow, chat_id: int, message_id: int) -> None:
        """An album's keyboard, without the buttons of its deleted pictures."""
        left = await self.service.store.images_for_job(job.id)
        try:
            if left:
                await self.bot.edit_message_text(_album_text(left), chat_id, message_id,
                                                 reply_markup=album_keyboard(left))
            else:
                await self.bot.edit_message_text("These images were deleted.", chat_id,
                                                 message_id, reply_markup=None)
        except TelegramError as error:
            log.info("job %d: its album's buttons were not edited (%s)", job.id, error)

    async def deliver_failure(self, job: JobRow, message: str) -> None:
        await self.status.finish(job.id)
        chat_id, status_id = job.origin.get("chat_id"), job.origin.get("status_id")
        if chat_id is None:
            return
        if status_id is not None:
            try:
                await self.bot.edit_message_text(message, chat_id, status_id)
                return
            except BadRequest as error:  # the status message is gone: say it anew
                log.info("failure not shown in the status message: %s", error)
        await _retrying(lambda: self.bot.send_message(chat_id, message, **_where(job)))

    async def announce(self, origin: dict[str, Any], text: str) -> None:
        """News that belongs to no job (retraining), in the chat where it was asked for."""
        thread = origin.get("thread_id")
        await _retrying(lambda: self.bot.send_message(
            origin["chat_id"], text, **({"message_thread_id": thread} if thread else {})))

    async def _drop_status(self, job: JobRow) -> None:
        status_id = job.origin.get("status_id")
        if status_id is None:
            return
        try:
            await self.bot.delete_message(job.origin["chat_id"], status_id)
        except TelegramError as error:  # cosmetic: too old to delete, already gone, ...
            log.info("status message of job %d not removed: %s", job.id, error)

    # ---- small helpers -------------------------------------------------------------------

    async def _edit_text(self, chat_id: int, message_id: int, text: str) -> object:
        return await self.bot.edit_message_text(text, chat_id, message_id)

    async def _set_status(self, status: Message, text: str, resend: bool = True) -> None:
        """Edit a status message to the immediate reply; if that fails, say it anew (unless
        `resend` is off and the message is gone)."""
        self.status.reserve(status.chat_id)
        try:
            await status.edit_text(text)
        except BadRequest as error:
            if "not modified" in error.message:
                return
            if not resend and "not found" in error.message:
                log.info("status not edited (%s); the job's outcome follows", error)
                return
            log.info("status not edited (%s); replying instead", error)
            await self.bot.send_message(status.chat_id, text)
        except TelegramError as error:
            log.info("status not edited (%s); replying instead", error)
            await self.bot.send_message(status.chat_id, text)

    async def _reply(self, message: Message, text: str, **options: Any) -> None:
        try:
            await message.reply_text(text, do_quote=True, **options)
        except TelegramError as error:
            log.info("could not reply in chat %s: %s", message.chat_id, error)

    async def _reply_privately(self, message: Message, text: str) -> None:
        """A reply for the user alone (a sign-in link): in their private chat with the bot,
        never in a group. Without a link preview, whose fetch would use the link up."""
        quiet = LinkPreviewOptions(is_disabled=True)
        if message.chat.type == "private":
            await self._reply(message, text, link_preview_options=quiet)
            return
        user = _user(message)
        try:
            await self.bot.send_message(int(user.user_id), text, link_preview_options=quiet)
        except TelegramError as error:
            log.info("could not write to a user privately: %s", error)
            await self._reply(message, "I can't write to you privately yet: open a chat with "
                              f"me (@{self.bot.username}), press Start, then send the "
                              "command there.")
            return
        await self._reply(message, "I sent it to you in a private message.")

    async def _on_error(self, update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
        log.error("telegram: error while handling an update: %s", context.error,
                  exc_info=context.error)


def _album_text(images: list[ImageRow]) -> str:
    return f"Images {', '.join(f'#{image.id}' for image in images)}: vary or rate each one."


def _on_keyboard(message: Message, data: object) -> bool:
    markup = message.reply_markup
    return markup is not None and any(button.callback_data == data
                                      for row in markup.inline_keyboard for button in row)


def _user(message: Message) -> User:
    tg_user = message.from_user
    assert tg_user is not None  # checked by _on_message
    return User(PLATFORM, str(tg_user.id), tg_user.full_name)


def _origin(message: Message, status: Message | None,
            request_key: str | None = None) -> dict[str, Any]:
    """Where a job's outcome goes. `request_key` names the request (by default the user's
    message) so a command Telegram sends again is not run twice."""
    return {"chat_id": message.chat_id, "status_id": status.message_id if status else None,
            "message_id": message.message_id,
            "request_key": request_key or f"telegram:{message.chat_id}:{message.message_id}",
            "thread_id": message.message_thread_id if message.is_topic_message else None}


def _where(job: JobRow) -> dict[str, Any]:
    """Reply to the message that asked, in its forum topic; still send if it was deleted."""
    where: dict[str, Any] = {}
    if job.origin.get("message_id") is not None:
        where["reply_parameters"] = ReplyParameters(job.origin["message_id"],
                                                    allow_sending_without_reply=True)
    if job.origin.get("thread_id") is not None:
        where["message_thread_id"] = job.origin["thread_id"]
    return where


async def _answer(query: CallbackQuery, text: str, alert: bool = False) -> None:
    try:
        await query.answer(text[:200], show_alert=alert)
    except TelegramError as error:  # too late (queries expire) or flood: the action stands
        log.info("callback not answered: %s", error)


async def _retrying(send: Any) -> Any:
    """Send, retrying network trouble a few times (429s are waited out by the rate limiter).
    A refusal (bad request, blocked) is raised at once: the service retries at next start."""
    for attempt in range(DELIVERY_TRIES):
        try:
            return await send()
        except (BadRequest, Forbidden):
            raise
        except NetworkError as error:
            if attempt == DELIVERY_TRIES - 1:
                raise
            log.info("telegram: sending failed (%s); retrying", error)
            await asyncio.sleep(1 + attempt)
    return None
