"""A fake Discord on 127.0.0.1 that the real discord.py talks to: REST (aiohttp) and a gateway
websocket, enough for a slash-command bot.

It does what Discord does for such a bot: login (`/users/@me`, `/oauth2/applications/@me`),
command sync (kept, and used to type the options of the interactions it sends), the gateway
handshake (hello, identify, ready, heartbeat acks), `INTERACTION_CREATE` for slash commands
(options, attachments served from its own "CDN") and button presses, and the responses:
interaction callbacks, edits and deletes of the original response, follow-up webhooks (JSON
or multipart with files) and channel messages. Everything is recorded as messages a test reads
like a user would see them. Interaction tokens expire 15 minutes after the interaction's
snowflake time, as on Discord; `expire()` ends one early. The 3-second limit on the first
response is not enforced; instead each interaction records how long its callback took.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

DISCORD_EPOCH_MS = 1_420_070_400_000
TOKEN_LIFETIME = 15 * 60
EPHEMERAL = 1 << 6
LOADING = 1 << 7
OPTION_TYPES = {3: str, 4: int, 5: bool, 10: float, 11: "attachment"}

APPLICATION_ID = 900_000_000_000_000_001
BOT_USER_ID = 900_000_000_000_000_002
GUILD_ID = 900_000_000_000_000_003
CHANNEL_ID = 900_000_000_000_000_004
BOT_TOKEN = "fake-bot-token"


_COUNTER = itertools.count()


def snowflake(at: float | None = None) -> int:
    ms = int((time.time() if at is None else at) * 1000)
    return ((ms - DISCORD_EPOCH_MS) << 22) | (next(_COUNTER) % 4096)


def snowflake_time(value: int | str) -> float:
    return ((int(value) >> 22) + DISCORD_EPOCH_MS) / 1000


def user_payload(user_id: int, name: str, bot: bool = False) -> dict[str, Any]:
    return {"id": str(user_id), "username": name, "global_name": name, "discriminator": "0",
            "avatar": None, "bot": bot, "public_flags": 0}


@dataclass
class File:
    filename: str
    content_type: str | None
    data: bytes


@dataclass
class Message:
    id: int
    channel_id: int
    content: str = ""
    flags: int = 0
    embeds: list[dict] = field(default_factory=list)
    components: list[dict] = field(default_factory=list)
    files: list[File] = field(default_factory=list)
    mentions: list[str] = field(default_factory=list)
    edits: list[dict] = field(default_factory=list)  # each PATCH's body, in order, with its time
    deleted: bool = False
    via: str = ""  # "callback", "followup" or "channel"

    @property
    def ephemeral(self) -> bool:
        return bool(self.flags & EPHEMERAL)

    @property
    def custom_ids(self) -> list[str]:
        return [button["custom_id"] for row in self.components for button in row["components"]
                if "custom_id" in button]

    def payload(self) -> dict[str, Any]:
        return {
            "id": str(self.id), "channel_id": str(self.channel_id), "type": 0,
            "content": self.content, "flags": self.flags, "embeds": self.embeds,
            "components": self.components, "author": user_payload(BOT_USER_ID, "canvas", True),
            "attachments": [
                {"id": str(snowflake()), "filename": f.filename, "size": len(f.data),
                 "url": f"https://cdn.invalid/{f.filename}", "proxy_url": "",
                 "content_type": f.content_type} for f in self.files],
            "timestamp": "2025-01-01T00:00:00+00:00", "edited_timestamp": None, "tts": False,
            "pinned": False, "mention_everyone": False, "mentions": [], "mention_roles": [],
            "application_id": str(APPLICATION_ID), "webhook_id": str(APPLICATION_ID),
        }


@dataclass
class Interaction:
    id: int
    token: str
    user_id: int
    sent_at: float
    callback: dict[str, Any] | None = None
    callback_after: float | None = None  # seconds from dispatch to the callback
    original: Message | None = None
    followups: list[Message] = field(default_factory=list)
    expired: bool = False

    @property
    def created_at(self) -> float:
        return snowflake_time(self.id)


class FakeDiscord:
    def __init__(self) -> None:
        self.commands: dict[str, dict[str, Any]] = {}  # synced commands by name
        self.syncs: list[tuple[int | None, list[str]]] = []  # (guild id or None, names)
        self.interactions: dict[str, Interaction] = {}  # by token
        self.messages: dict[int, Message] = {}
        self.uploads: dict[str, File] = {}  # what the "CDN" serves
        self.requests: list[str] = []  # "METHOD path", tokens replaced
        self.identified = asyncio.Event()
        self._changed = asyncio.Event()
        self._sockets: list[web.WebSocketResponse] = []
        self._runner: web.AppRunner | None = None
        self.port = 0

    # ---- server ------------------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application(client_max_size=50 * 1024 * 1024, middlewares=[self._record])
        api = "/api/v10"
        app.router.add_get(f"{api}/users/@me", self._me)
        app.router.add_get(f"{api}/oauth2/applications/@me", self._application)
        app.router.add_put(f"{api}/applications/{{app}}/commands", self._sync)
        app.router.add_put(f"{api}/applications/{{app}}/guilds/{{guild}}/commands", self._sync)
        app.router.add_post(f"{api}/interactions/{{id}}/{{token}}/callback", self._callback)
        app.router.add_post(f"{api}/webhooks/{{app}}/{{token}}", self._followup)
        app.router.add_patch(f"{api}/webhooks/{{app}}/{{token}}/messages/{{message}}", self._edit)
        app.router.add_delete(f"{api}/webhooks/{{app}}/{{token}}/messages/{{message}}",
                              self._delete)
        app.router.add_post(f"{api}/channels/{{channel}}/messages", self._channel_message)
        app.router.add_patch(f"{api}/channels/{{channel}}/messages/{{message}}",
                             self._edit_in_channel)
        app.router.add_get("/cdn/{name}", self._cdn)
        app.router.add_get("/gateway", self._gateway)
        app.router.add_get("/gateway/", self._gateway)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        for socket in self._sockets:
            await socket.close()
        if self._runner:
            await self._runner.cleanup()

    @property
    def api_base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    @property
    def gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/gateway"

    @web.middleware
    async def _record(self, request: web.Request, handler: Callable) -> web.StreamResponse:
        path = request.path
        for interaction in self.interactions.values():
            path = path.replace(interaction.token, "<token>")
        self.requests.append(f"{request.method} {path}")
        try:
            return await handler(request)
        finally:
            self._changed.set()

    # ---- login and sync ----------------------------------------------------------------------

    def _authorised(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bot {BOT_TOKEN}"

    async def _me(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return _error(401, 0, "401: Unauthorized")
        return _json({**user_payload(BOT_USER_ID, "canvas", True), "flags": 0,
                                  "verified": True, "mfa_enabled": False})

    async def _application(self, request: web.Request) -> web.Response:
        return _json({
            "id": str(APPLICATION_ID), "name": "Magic Canvas", "description": "", "icon": None,
            "bot_public": True, "bot_require_code_grant": False, "verify_key": "0" * 64,
            "owner": user_payload(1, "owner"), "flags": 0, "rpc_origins": [],
        })

    async def _sync(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return _error(401, 0, "401: Unauthorized")
        body = await request.json()
        guild = request.match_info.get("guild")
        self.syncs.append((int(guild) if guild else None, [c["name"] for c in body]))
        answer = []
        for command in body:
            self.commands[command["name"]] = command
            answer.append({**command, "id": str(snowflake()), "version": "1",
                           "application_id": str(APPLICATION_ID),
                           **({"guild_id": guild} if guild else {})})
        return _json(answer)

    # ---- gateway -----------------------------------------------------------------------------

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        self._sockets.append(socket)
        await socket.send_json({"op": 10, "d": {"heartbeat_interval": 41_250}})
        async for frame in socket:
            if frame.type != WSMsgType.TEXT:
                break
            message = json.loads(frame.data)
            if message["op"] == 1:
                await socket.send_json({"op": 11})
            elif message["op"] == 2:
                await socket.send_json({"op": 0, "t": "READY", "s": 1, "d": {
                    "v": 10, "user": user_payload(BOT_USER_ID, "canvas", True), "guilds": [],
                    "session_id": secrets.token_hex(8), "resume_gateway_url": self.gateway_url,
                    "application": {"id": str(APPLICATION_ID), "flags": 0},
                }})
                self.identified.set()
        self._sockets.remove(socket)
        return socket

    async def _dispatch(self, payload: dict[str, Any]) -> None:
        if not self._sockets:
            raise AssertionError("the bot is not connected to the gateway")
        await self._sockets[-1].send_json({"op": 0, "t": "INTERACTION_CREATE", "s": None,
                                           "d": payload})

    # ---- what a user does --------------------------------------------------------------------

    def upload(self, data: bytes, filename: str, content_type: str | None = "image/png",
               size: tuple[int, int] | None = None) -> dict[str, Any]:
        """An attachment as Discord describes it in an interaction (served by the fake CDN)."""
        key = f"{secrets.token_hex(4)}-{filename}"
        self.uploads[key] = File(filename, content_type, data)
        attachment = {"id": str(snowflake()), "filename": filename, "size": len(data),
                      "url": f"http://127.0.0.1:{self.port}/cdn/{key}",
                      "proxy_url": f"http://127.0.0.1:{self.port}/cdn/{key}"}
        if content_type:
            attachment["content_type"] = content_type
        if size:
            attachment["width"], attachment["height"] = size
        return attachment

    async def slash(self, name: str, user: int, *, age: float = 0,
                    age_restricted: bool = False, **options: Any) -> Interaction:
        """Run `/name option=value…` as `user`, typed by the synced command's option types.
        `age` makes the interaction that many seconds old (its token expires sooner);
        `age_restricted`: the channel is marked so (Discord's "nsfw")."""
        command = self.commands[name]
        known = {option["name"]: option for option in command.get("options", [])}
        sent, attachments = [], {}
        for key, value in options.items():
            option = known[key]  # KeyError: the bot did not sync such an option
            if option["type"] == 11:
                attachments[value["id"]] = value
                value = value["id"]
            else:
                value = OPTION_TYPES[option["type"]](value)  # type: ignore[operator]
            sent.append({"name": key, "type": option["type"], "value": value})
        data = {"id": str(snowflake()), "name": name, "type": 1, "options": sent}
        if attachments:
            data["resolved"] = {"attachments": attachments}
        return await self._interact(2, data, user, age, age_restricted=age_restricted)

    async def autocomplete(self, name: str, user: int, option: str, typed: str) -> Interaction:
        """Type `typed` into `option` of `/name`; the bot answers with choices (callback 8)."""
        data = {"id": str(snowflake()), "name": name, "type": 1, "options": [
            {"name": option, "type": 3, "value": typed, "focused": True}]}
        return await self._interact(4, data, user, 0)

    async def press(self, message: Message, custom_id: str, user: int, *,
                    forged: bool = False) -> Interaction:
        """Press the button with `custom_id` under `message` (`forged`: a custom_id the message
        does not have, as a crafted client could send)."""
        assert forged or custom_id in message.custom_ids, (custom_id, message.custom_ids)
        data = {"custom_id": custom_id, "component_type": 2}
        return await self._interact(3, data, user, 0, message.payload())

    async def _interact(self, kind: int, data: dict[str, Any], user: int, age: float,
                        message: dict[str, Any] | None = None,
                        age_restricted: bool = False) -> Interaction:
        interaction = Interaction(snowflake(time.time() - age), secrets.token_urlsafe(48), user,
                                  time.monotonic())
        self.interactions[interaction.token] = interaction
        payload = {
            "id": str(interaction.id), "application_id": str(APPLICATION_ID), "type": kind,
            "data": data, "token": interaction.token, "version": 1, "guild_id": str(GUILD_ID),
            "channel_id": str(CHANNEL_ID),
            "channel": {"id": str(CHANNEL_ID), "type": 0, "name": "art",
                        "guild_id": str(GUILD_ID), "position": 0, "permission_overwrites": [],
                        "nsfw": age_restricted, "parent_id": None},
            "member": {"user": user_payload(user, f"user{user}"), "roles": [], "deaf": False,
                       "mute": False, "joined_at": "2024-01-01T00:00:00+00:00", "flags": 0,
                       "permissions": "2248473465835073"},
            "app_permissions": "2248473465835073", "locale": "en-US",
            "attachment_size_limit": 10_485_760, "entitlements": [],
            "authorizing_integration_owners": {"0": str(GUILD_ID)}, "context": 0,
        }
        if message is not None:
            payload["message"] = message
        await self._dispatch(payload)
        return interaction

    def expire(self, interaction: Interaction) -> None:
        """End the interaction's token now, as if 15 minutes had passed."""
        interaction.expired = True

    async def wait_for(self, condition: Callable[[], Any], timeout: float = 30) -> Any:
        """Wait until `condition()` is truthy (checked after every request); return it."""
        deadline = time.monotonic() + timeout
        while not (result := condition()):
            self._changed.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("timed out waiting for Discord traffic")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(left, 0.5))
        return result

    def channel_messages(self) -> list[Message]:
        return [m for m in self.messages.values() if m.via == "channel"]

    # ---- responses from the bot --------------------------------------------------------------

    def _live(self, token: str) -> Interaction | None:
        interaction = self.interactions.get(token)
        if interaction is None or interaction.expired or (
                time.time() > interaction.created_at + TOKEN_LIFETIME):
            return None
        return interaction

    async def _callback(self, request: web.Request) -> web.Response:
        interaction = self.interactions.get(request.match_info["token"])
        if interaction is None or str(interaction.id) != request.match_info["id"]:
            return _error(404, 10062, "Unknown interaction")
        if interaction.callback is not None:
            return _error(400, 40060, "Interaction has already been acknowledged.")
        body, files = await _read_body(request)
        interaction.callback = body
        interaction.callback_after = time.monotonic() - interaction.sent_at
        data = body.get("data") or {}
        kind = body["type"]
        if kind == 8:  # autocomplete choices: no message
            return _json({"interaction": {"id": str(interaction.id), "type": 4}})
        flags = data.get("flags", 0) | (LOADING if kind == 5 else 0)
        message = self._new_message(data, files, "callback", flags=flags)
        interaction.original = message
        return _json({
            "interaction": {"id": str(interaction.id), "type": 2,
                            "response_message_id": str(message.id),
                            "response_message_loading": kind == 5,
                            "response_message_ephemeral": bool(flags & EPHEMERAL)},
            "resource": {"type": kind},
        })

    async def _followup(self, request: web.Request) -> web.Response:
        interaction = self._live(request.match_info["token"])
        if interaction is None:
            return _error(401, 50027, "Invalid Webhook Token")
        body, files = await _read_body(request)
        message = self._new_message(body, files, "followup", flags=body.get("flags", 0))
        interaction.followups.append(message)
        return _json(message.payload())

    async def _edit(self, request: web.Request) -> web.Response:
        interaction = self._live(request.match_info["token"])
        if interaction is None:
            return _error(401, 50027, "Invalid Webhook Token")
        message = self._webhook_message(interaction, request.match_info["message"])
        if message is None:
            return _error(404, 10008, "Unknown Message")
        _edited(message, *await _read_body(request))
        message.flags &= ~LOADING
        return _json(message.payload())

    async def _edit_in_channel(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return _error(401, 0, "401: Unauthorized")
        message = self.messages.get(int(request.match_info["message"]))
        if message is None or message.channel_id != int(request.match_info["channel"]):
            return _error(404, 10008, "Unknown Message")
        _edited(message, *await _read_body(request))
        return _json(message.payload())

    async def _delete(self, request: web.Request) -> web.Response:
        interaction = self._live(request.match_info["token"])
        if interaction is None:
            return _error(401, 50027, "Invalid Webhook Token")
        message = self._webhook_message(interaction, request.match_info["message"])
        if message is None:
            return _error(404, 10008, "Unknown Message")
        message.deleted = True
        return web.Response(status=204)

    async def _channel_message(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return _error(401, 0, "401: Unauthorized")
        body, files = await _read_body(request)
        message = self._new_message(body, files, "channel",
                                    channel_id=int(request.match_info["channel"]))
        return _json(message.payload())

    async def _cdn(self, request: web.Request) -> web.Response:
        upload = self.uploads.get(request.match_info["name"])
        if upload is None:
            return web.Response(status=404)
        return web.Response(body=upload.data, content_type=upload.content_type or
                            "application/octet-stream")

    def _webhook_message(self, interaction: Interaction, key: str) -> Message | None:
        if key == "@original":
            message = interaction.original
        else:
            message = self.messages.get(int(key)) if key.isdigit() else None
            if message not in [interaction.original, *interaction.followups]:
                return None
        return None if message is None or message.deleted else message

    def _new_message(self, body: dict[str, Any], files: list[File], via: str, *, flags: int = 0,
                     channel_id: int = CHANNEL_ID) -> Message:
        mentions = [str(user) for user in (body.get("allowed_mentions") or {}).get("users", [])]
        message = Message(snowflake(), channel_id, body.get("content") or "", flags,
                          body.get("embeds") or [], body.get("components") or [], files,
                          mentions, via=via)
        self.messages[message.id] = message
        return message


async def _read_body(request: web.Request) -> tuple[dict[str, Any], list[File]]:
    """JSON, or multipart with `payload_json` and `files[n]` parts."""
    if not request.can_read_body:
        return {}, []
    if request.content_type != "multipart/form-data":
        return await request.json(), []
    body: dict[str, Any] = {}
    files: list[File] = []
    reader = await request.multipart()
    while (part := await reader.next()) is not None:
        data = await part.read()  # type: ignore[union-attr]
        if part.name == "payload_json":  # type: ignore[union-attr]
            body = json.loads(data)
        else:
            files.append(File(part.filename or "", part.headers.get("Content-Type"),  # type: ignore[union-attr]
                              bytes(data)))
    return body, files


def _json(data: Any, status: int = 200) -> web.Response:
    # discord.py reads a body as JSON only when the content type is exactly application/json.
    return web.Response(body=json.dumps(data).encode(), status=status,
                        headers={"Content-Type": "application/json"})


def _error(status: int, code: int, message: str) -> web.Response:
    return _json({"code": code, "message": message}, status=status)


def _edited(message: Message, body: dict[str, Any], files: list) -> None:
    """An edit, as Discord applies it: what the body names changes (no attachments: none)."""
    message.edits.append({**body, "at": time.monotonic()})
    if "content" in body:
        message.content = body["content"] or ""
    for key in ("embeds", "components"):
        if key in body:
            setattr(message, key, body[key] or [])
    if files or "attachments" in body:
        message.files = files
