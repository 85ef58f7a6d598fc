"""The web app behind a reverse proxy: links point to web.public_url, the session cookie is
sent over https only, and /metrics asks a proxied request for its token."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from bot import commands as cmd
from bot.cli import build_service
from bot.config import load_settings
from bot.service import User
from bot.store import Store
from bot.web.app import WebServer
from tests.conftest import free_port, write_config


async def test_behind_https_links_use_the_public_url_and_the_cookie_is_secure(
        tmp_path: Path) -> None:
    port = free_port()
    settings = load_settings(write_config(
        tmp_path, web={"listen": f"127.0.0.1:{port}", "public_url": "https://pics.example/"}))
    store = await Store.open(settings.storage.db)
    service = build_service(settings, store)  # no engine: the web app needs none to sign in
    web = WebServer(service, settings)
    await web.start()
    try:
        reply = await service.handle(User("telegram", "77", "Tess"), cmd.Web())
        assert reply.private and reply.link.startswith("https://pics.example/signin/")
        token = reply.link.rsplit("/", 1)[1]
        async with aiohttp.ClientSession() as http:
            # What the proxy forwards: the same path, to the listen address.
            async with http.post(f"http://127.0.0.1:{port}/signin/{token}",
                                 headers={"X-Forwarded-For": "198.51.100.7"},
                                 allow_redirects=False) as answer:
                assert answer.status == 303 and answer.headers["Location"] == "/"
                cookie = answer.headers["Set-Cookie"]
            assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Lax" in cookie
            async with http.get(f"http://127.0.0.1:{port}/metrics",
                                headers={"X-Forwarded-For": "198.51.100.7"}) as answer:
                assert answer.status == 403  # no metrics_token is set: the proxy's side gets none
    finally:
        await web.stop()
        await store.close()
