"""The Telegram adapter with a webhook: the real python-telegram-bot sets the webhook on a fake Bot
API server (tests/fake_telegram.py) and serves PTB's own webhook server on 127.0.0.1; the tests
post updates to it as Telegram would, with and without the secret token."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from bot.adapters.telegram import TelegramAdapter
from bot.cli import build_service
from bot.config import Settings, load_settings
from bot.service import Service
from bot.store import Store
from tests import fake_telegram as tg
from tests.conftest import LogLines, capture_logs, running_bot, write_config

pytestmark = [
    pytest.mark.asyncio(loop_scope="module"),
    # PTB's own AIORateLimiter reads RetryAfter.retry_after, deprecated in PTB 22.2.
    pytest.mark.filterwarnings("ignore::telegram.warnings.PTBDeprecationWarning"),
]

HOOK_URL = "https://example.invalid/canvas-hook"
SECRET = "canvas-webhook-secret_42"
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"


@dataclass
class Hooked:
    fake: tg.FakeTelegram
    adapter: TelegramAdapter
    settings: Settings
    hook: str  # where the bot's webhook server takes posts
    logs: LogLines

    async def post(self, update: dict[str, Any], secret: str | None = SECRET,
                   url: str | None = None) -> int:
        """POST an update as Telegram does; the HTTP status the webhook server answered."""
        return await post(url or self.hook, update, secret)


async def post(url: str, update: dict[str, Any], secret: str | None) -> int:
    headers = {SECRET_HEADER: secret} if secret is not None else {}
    async with aiohttp.ClientSession() as session, session.post(
            url, json={"update_id": 1, **update}, headers=headers) as response:
        return response.status


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def webhook_config(folder: Path, fake: tg.FakeTelegram, port: int, secret: str) -> Settings:
    return load_settings(write_config(
        folder, telegram={"token": tg.TOKEN, "api_base_url": fake.url, "webhook_url": HOOK_URL,
                          "webhook_listen": f"127.0.0.1:{port}", "webhook_secret": secret}))


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def hooked(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Hooked]:
    fake = tg.FakeTelegram()
    await fake.start()
    port = free_port()
    settings = webhook_config(tmp_path_factory.mktemp("webhook"), fake, port, SECRET)
    try:
        with capture_logs() as logs:
            async with running_bot(settings, TelegramAdapter) as (_, _, adapter):
                yield Hooked(fake, adapter, settings, f"http://127.0.0.1:{port}/canvas-hook",
                             logs)
    finally:
        await fake.stop()


def replies_to(fake: tg.FakeTelegram, sent: dict[str, Any]) -> list[tg.Call]:
    return [call for call in fake.called("sendMessage")
            if tg.replied_to(call) == sent["message_id"]]


async def test_start_sets_the_webhook_with_url_and_secret(hooked: Hooked) -> None:
    (call,) = hooked.fake.called("setWebhook")
    assert call["url"] == HOOK_URL
    assert call["secret_token"] == SECRET
    assert call["allowed_updates"] == ["message", "callback_query"]
    assert call.get("drop_pending_updates", False) is False
    assert not hooked.fake.called("deleteWebhook")  # that is what long polling does


async def test_a_posted_update_is_answered(hooked: Hooked) -> None:
    update = tg.message("/help")
    assert await hooked.post(update) == 200
    sent = update["message"]
    answer = await hooked.fake.wait_for(
        "sendMessage", lambda call: (call.get("reply_parameters") or {}).get("message_id")
        == sent["message_id"], timeout=10)
    assert "/imagine" in answer["text"]
    # Telegram posts to the URL as it was set; a trailing slash is accepted too.
    again = tg.message("/help")
    assert await hooked.post(again, url=hooked.hook + "/") == 200
    await hooked.fake.wait_for("sendMessage", lambda call: (call.get("reply_parameters") or {})
                               .get("message_id") == again["message"]["message_id"], timeout=10)


async def test_posts_without_the_secret_are_refused(hooked: Hooked) -> None:
    forged = [tg.message("/help"), tg.message("/help"), tg.message("/help")]
    assert await hooked.post(forged[0], secret="wrong-secret") == 403
    assert await hooked.post(forged[1], secret=None) == 403
    assert await hooked.post(forged[2], url=hooked.hook + "-other") == 404
    # A genuine update posted afterwards is answered; the forged ones never were.
    genuine = tg.message("/help")
    assert await hooked.post(genuine) == 200
    await hooked.fake.wait_for("sendMessage", lambda call: (call.get("reply_parameters") or {})
                               .get("message_id") == genuine["message"]["message_id"], timeout=10)
    for update in forged:
        assert not replies_to(hooked.fake, update["message"])


async def test_no_log_line_holds_the_token_or_the_secret(hooked: Hooked) -> None:
    assert hooked.logs.lines, "the fixture records every log line"
    secrets = (tg.TOKEN, tg.TOKEN.split(":")[1], SECRET)
    assert not [line for line in hooked.logs.lines if any(s in line for s in secrets)]


async def test_without_a_configured_secret_each_start_makes_a_random_one(
        tmp_path: Path) -> None:
    fake = tg.FakeTelegram()
    await fake.start()
    port = free_port()
    settings = webhook_config(tmp_path, fake, port, "")
    store = await Store.open(settings.storage.db)
    service: Service = build_service(settings, store)  # not started: no engine needed
    made = []
    try:
        for _ in range(2):
            adapter = TelegramAdapter(service, settings)
            await adapter.start()
            try:
                secret = fake.called("setWebhook")[-1]["secret_token"]
                made.append(secret)
                hook = f"http://127.0.0.1:{port}/canvas-hook"
                assert await post(hook, tg.message("hello"), None) == 403
                assert await post(hook, tg.message("hello"), "") == 403
                assert await post(hook, tg.message("hello"), secret) == 200
            finally:
                await adapter.stop()
    finally:
        await store.close()
        await fake.stop()
    assert len(made) == 2 and made[0] != made[1]
    assert all(len(secret) >= 32 for secret in made)
