"""A fake Telegram Bot API server on 127.0.0.1 that the real python-telegram-bot talks to.

It serves queued updates to `getUpdates` (long polling), records every call with its parameters
and uploaded files, keeps the messages the bot sent (so edits can be checked, and "message is
not modified" is answered as Telegram does), serves files for `getFile`, and can answer the
next call of a method with an error such as a 429 with `retry_after`.

Only what the Magic Canvas adapter uses is implemented; anything else answers a 404 error, so
a call the fake does not know fails loudly instead of passing silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

TOKEN = "123456:FAKE-token-never-logged"
BOT = {"id": 999, "is_bot": True, "first_name": "Canvas", "username": "canvas_bot",
       "can_join_groups": True, "can_read_all_group_messages": False,
       "supports_inline_queries": False}
ALICE = {"id": 1001, "is_bot": False, "first_name": "Alice"}
BOB = {"id": 1002, "is_bot": False, "first_name": "Bob"}
ADMIN = {"id": 42, "is_bot": False, "first_name": "Ada"}
PRIVATE = {"id": 1001, "type": "private", "first_name": "Alice"}
GROUP = {"id": -100555, "type": "supergroup", "title": "Artists"}


@dataclass
class Call:
    """One request the bot made: method name, decoded parameters, uploaded files by field."""

    method: str
    params: dict[str, Any]
    files: dict[str, bytes]
    at: float = field(default_factory=time.monotonic)
    result: Any = None  # what the fake answered (a message, a list of them, True ...)
    error: str | None = None  # or the error it answered instead

    def __getitem__(self, key: str) -> Any:
        return self.params[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.params.get(key, default)

    def upload(self, name: str) -> bytes:
        """The bytes uploaded in field `name`, or referenced as `attach://<name>`."""
        if name in self.files:
            return self.files[name]
        reference = str(self.params.get(name, name))
        return self.files[reference.removeprefix("attach://")]


@dataclass
class Failure:
    status: int
    description: str
    retry_after: int | None = None
    when: Callable[[dict[str, Any]], bool] = lambda params: True


def _decode(value: str) -> Any:
    # PTB sends strings as they are and everything else JSON-encoded.
    try:
        return json.loads(value)
    except ValueError:
        return value


class FakeTelegram:
    """Start with `await fake.start()`; `fake.url` is what goes in `telegram.api_base_url`."""

    def __init__(self, token: str = TOKEN) -> None:
        self.token = token
        self.calls: list[Call] = []
        self.updates: list[dict[str, Any]] = []
        self.messages: dict[tuple[int, int], dict[str, Any]] = {}  # (chat id, message id)
        self.files: dict[str, tuple[str, bytes]] = {}  # file id -> (file path, bytes)
        self.failures: dict[str, list[Failure]] = {}
        self._update_ids = itertools.count(1)
        self._message_ids = itertools.count(500)
        self._file_ids = itertools.count(1)
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self.url = ""

    # ---- server --------------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/bot{token}/{method}", self._api)
        app.router.add_get("/file/bot{token}/{path:.+}", self._file)
        # No access log: request lines carry the token.
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _api(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            return _error(401, "Unauthorized")
        method = request.match_info["method"]
        params: dict[str, Any] = {}
        files: dict[str, bytes] = {}
        form = await request.post()
        for name, value in form.items():
            if isinstance(value, web.FileField):
                files[name] = value.file.read()
            else:
                params[name] = _decode(value)
        params.update({k: _decode(v) for k, v in request.query.items()})
        call = Call(method, params, files)
        response = await self._answer(call)
        if method != "getUpdates":
            await self._record(call)
        return response

    async def _answer(self, call: Call) -> web.Response:
        for failure in self.failures.get(call.method, []):
            if failure.when(call.params):
                self.failures[call.method].remove(failure)
                call.error = failure.description
                return _error(failure.status, failure.description, failure.retry_after)
        handler = getattr(self, f"_m_{call.method}", None)
        if handler is None:
            call.error = f"Not Found: method {call.method} is not faked"
            return _error(404, call.error)
        try:
            call.result = await handler(call.params, call.files)
        except _ApiError as error:
            call.error = error.description
            return _error(400, error.description)
        except Exception as error:  # a bug in the fake: say so in the recorded call
            call.error = f"fake server error: {error!r}"
            return _error(500, call.error)
        return web.json_response({"ok": True, "result": call.result})

    async def _file(self, request: web.Request) -> web.StreamResponse:
        if request.match_info["token"] != self.token:
            return web.Response(status=401)
        for path, data in self.files.values():
            if path == request.match_info["path"]:
                return web.Response(body=data)
        return web.Response(status=404)

    async def _record(self, call: Call) -> None:
        async with self._changed:
            self.calls.append(call)
            self._changed.notify_all()

    # ---- what tests do -------------------------------------------------------------------

    def fail_next(self, method: str, status: int = 429, description: str = "",
                  retry_after: int | None = None,
                  when: Callable[[dict[str, Any]], bool] = lambda params: True) -> None:
        """Answer the next call of `method` whose parameters satisfy `when` with an error
        instead of doing it."""
        if status == 429 and not description:
            description = f"Too Many Requests: retry after {retry_after}"
        self.failures.setdefault(method, []).append(
            Failure(status, description, retry_after, when))

    async def push(self, update: dict[str, Any]) -> dict[str, Any]:
        update = {"update_id": next(self._update_ids), **update}
        async with self._changed:
            self.updates.append(update)
            self._changed.notify_all()
        return update

    def add_file(self, data: bytes, path: str, size: int | None = None) -> dict[str, Any]:
        """Store a file the way Telegram holds one; returns its metadata (file_id ...)."""
        file_id = f"file-{next(self._file_ids)}"
        self.files[file_id] = (f"{file_id}/{path}", data)
        return {"file_id": file_id, "file_unique_id": f"u{file_id}",
                "file_size": len(data) if size is None else size}

    async def wait_for(self, method: str, where: Callable[[Call], bool] = lambda call: True,
                       *, after: int = 0, timeout: float = 30) -> Call:
        """The first call of `method` (from index `after` on) that satisfies `where`."""

        def found() -> Call | None:
            for call in self.calls[after:]:
                if call.method == method and where(call):
                    return call
            return None

        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(found), timeout)
            except TimeoutError:
                seen = "\n".join(f"  {c.method} {c.error or ''} {_short(c.params)}"
                                 for c in self.calls[after:])
                raise AssertionError(f"no {method} call as expected; calls:\n{seen}") from None
            return found()  # type: ignore[return-value]

    def called(self, method: str) -> list[Call]:
        return [call for call in self.calls if call.method == method]

    # ---- methods -------------------------------------------------------------------------

    async def _m_getMe(self, params: dict, files: dict) -> dict:
        return BOT

    async def _m_deleteWebhook(self, params: dict, files: dict) -> bool:
        return True

    async def _m_setWebhook(self, params: dict, files: dict) -> bool:
        return True

    async def _m_setMyCommands(self, params: dict, files: dict) -> bool:
        return True

    async def _m_answerCallbackQuery(self, params: dict, files: dict) -> bool:
        return True

    async def _m_getUpdates(self, params: dict, files: dict) -> list:
        offset = int(params.get("offset") or 0)
        timeout = min(float(params.get("timeout") or 0), 1.0)
        if offset:  # as Telegram does: an offset confirms every earlier update
            self.updates = [u for u in self.updates if u["update_id"] >= offset]

        def pending() -> list:
            return [u for u in self.updates if u["update_id"] >= offset]

        async with self._changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait_for(pending), timeout)
            return pending()

    async def _m_getFile(self, params: dict, files: dict) -> dict:
        file_id = params["file_id"]
        if file_id not in self.files:
            raise _ApiError("Bad Request: invalid file_id")
        path, data = self.files[file_id]
        return {"file_id": file_id, "file_unique_id": f"u{file_id}", "file_size": len(data),
                "file_path": path}

    async def _m_sendMessage(self, params: dict, files: dict) -> dict:
        return self._new_message(params, text=str(params["text"]))

    async def _m_sendPhoto(self, params: dict, files: dict) -> dict:
        return self._new_message(params, photo=self._photo(params.get("photo", "photo"), files),
                                 caption=params.get("caption"))

    async def _m_sendMediaGroup(self, params: dict, files: dict) -> list:
        return [self._new_message(params, photo=self._photo(item["media"], files),
                                  caption=item.get("caption"), media_group_id="album")
                for item in params["media"]]

    async def _m_editMessageText(self, params: dict, files: dict) -> dict:
        message = self._message(params)
        markup = params.get("reply_markup")
        if message.get("text") == str(params["text"]) and message.get("reply_markup") == markup:
            raise _ApiError("Bad Request: message is not modified: specified new message "
                            "content and reply markup are exactly the same")
        message["text"] = str(params["text"])
        _set_markup(message, markup)
        return message

    async def _m_editMessageReplyMarkup(self, params: dict, files: dict) -> dict:
        message = self._message(params)
        if message.get("reply_markup") == params.get("reply_markup"):
            raise _ApiError("Bad Request: message is not modified")
        _set_markup(message, params.get("reply_markup"))
        return message

    async def _m_editMessageMedia(self, params: dict, files: dict) -> dict:
        message = self._message(params)
        media = params["media"]
        message["photo"] = self._photo(media["media"], files)
        message["caption"] = media.get("caption")
        _set_markup(message, params.get("reply_markup"))
        return message

    async def _m_deleteMessage(self, params: dict, files: dict) -> bool:
        self._message(params)
        del self.messages[(int(params["chat_id"]), int(params["message_id"]))]
        return True

    # ---- helpers -------------------------------------------------------------------------

    def _photo(self, value: Any, files: dict[str, bytes]) -> list[dict[str, Any]]:
        data = files[str(value).removeprefix("attach://")]
        meta = self.add_file(data, f"photos/sent-{len(self.files)}.png")
        return [{**meta, "width": 256, "height": 256}]

    def _message(self, params: dict) -> dict[str, Any]:
        key = (int(params["chat_id"]), int(params["message_id"]))
        if key not in self.messages:
            raise _ApiError("Bad Request: message to edit not found")
        return self.messages[key]

    def _new_message(self, params: dict, **content: Any) -> dict[str, Any]:
        chat_id = int(params["chat_id"])
        chat = GROUP if chat_id == GROUP["id"] else {**PRIVATE, "id": chat_id}
        message = {"message_id": next(self._message_ids), "date": int(time.time()),
                   "chat": chat, "from": BOT,
                   **{k: v for k, v in content.items() if v is not None}}
        _set_markup(message, params.get("reply_markup"))
        self.messages[(chat_id, message["message_id"])] = message
        return message


class _ApiError(Exception):
    def __init__(self, description: str) -> None:
        super().__init__(description)
        self.description = description


def _short(params: dict[str, Any]) -> str:
    text = json.dumps(params, ensure_ascii=False, default=str)
    return text if len(text) < 300 else text[:299] + "…"


def _set_markup(message: dict[str, Any], markup: Any) -> None:
    if markup:
        message["reply_markup"] = markup
    else:
        message.pop("reply_markup", None)


def _error(status: int, description: str, retry_after: int | None = None) -> web.Response:
    body: dict[str, Any] = {"ok": False, "error_code": status, "description": description}
    if retry_after is not None:
        body["parameters"] = {"retry_after": retry_after}
    return web.json_response(body, status=status)


# ---- building updates as Telegram sends them ---------------------------------------------

_message_ids = itertools.count(1)


def message(text: str | None = None, *, user: dict = ALICE, chat: dict = PRIVATE,
            caption: str | None = None, photo: dict | None = None,
            document: dict | None = None, reply_to: dict | None = None,
            media_group_id: str | None = None) -> dict[str, Any]:
    """A user's message update. `photo` is file metadata from `add_file` plus width/height;
    `document` the same plus file_name/mime_type."""
    body: dict[str, Any] = {"message_id": next(_message_ids), "date": int(time.time()),
                            "chat": chat, "from": user}
    if text is not None:
        body["text"] = text
        if text.startswith("/"):
            length = len(text.split()[0])
            body["entities"] = [{"type": "bot_command", "offset": 0, "length": length}]
    if caption is not None:
        body["caption"] = caption
    if photo is not None:
        small = {**photo, "file_id": photo["file_id"] + "-thumb", "width": 90, "height": 90,
                 "file_size": 100}
        body["photo"] = [small, photo]
    if document is not None:
        body["document"] = document
    if reply_to is not None:
        body["reply_to_message"] = reply_to
    if media_group_id is not None:
        body["media_group_id"] = media_group_id
    return {"message": body}


def replied_to(call: Call) -> int | None:
    """The id of the message a call (sendPhoto, sendMessage ...) replied to, if any."""
    parameters = call.get("reply_parameters")
    return parameters.get("message_id") if isinstance(parameters, dict) else None


def button_press(sent: dict[str, Any], data: str, *, user: dict = ALICE) -> dict[str, Any]:
    """A callback query update: `user` pressed the button with `data` under message `sent`."""
    return {"callback_query": {"id": f"cb{next(_message_ids)}", "from": user,
                               "chat_instance": "ci", "message": sent, "data": data}}
