"""The web gallery in a real browser: headless Chromium driven by Playwright, against the bot
as `canvas run` starts it (the real service, engine and store, with the Telegram adapter
talking to the fake Bot API on 127.0.0.1). Users sign in with the link /web sends them."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from bot.cli import build_service
from bot.config import Settings, load_settings
from bot.service import Service
from bot.store import Store
from bot.web.app import WebServer
from tests import fake_telegram as tg
from tests.browser import chromium, chromium_path
from tests.conftest import (
    LogLines,
    capture_logs,
    fast_telegram_adapter,
    free_port,
    until,
    write_config,
)

pytestmark = [
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.filterwarnings("ignore::telegram.warnings.PTBDeprecationWarning"),
]

FAST = "--steps 4"
ADMIN_CHAT = {**tg.PRIVATE, "id": tg.ADMIN["id"], "first_name": "Ada"}
LINK = re.compile(r"http://127\.0\.0\.1:\d+/signin/[A-Za-z0-9_-]+")
# CANVAS_SCREENSHOTS=folder: the tests also save the README's screenshots there.
SCREENSHOTS = os.environ.get("CANVAS_SCREENSHOTS")


@dataclass
class Site:
    fake: tg.FakeTelegram
    service: Service
    settings: Settings
    url: str
    browser: Any
    logs: LogLines

    def rows(self, sql: str, params: tuple = ()) -> list[tuple]:
        with contextlib.closing(sqlite3.connect(self.settings.storage.db)) as db:
            return db.execute(sql, params).fetchall()

    def write(self, sql: str, params: tuple = ()) -> None:
        with contextlib.closing(sqlite3.connect(self.settings.storage.db)) as db:
            db.execute(sql, params)
            db.commit()

    async def say(self, text: str, user: dict = tg.ALICE, chat: dict = tg.PRIVATE
                  ) -> dict[str, Any]:
        return (await self.fake.push(tg.message(text, user=user, chat=chat)))["message"]

    async def picture(self, prompt: str, user: dict = tg.ALICE, chat: dict = tg.PRIVATE) -> int:
        """Ask for a picture in Telegram; its image id once it has arrived."""
        sent = await self.say(f"/imagine {prompt} {FAST}", user, chat)
        call = await self.fake.wait_for(
            "sendPhoto", lambda c: tg.replied_to(c) == sent["message_id"] and c.result,
            timeout=120)
        return int(str(call["caption"]).rsplit("image #", 1)[1])

    async def link_for(self, user: dict = tg.ALICE, chat: dict = tg.PRIVATE) -> str:
        """The sign-in link /web sends the user."""
        seen = len(self.fake.called("sendMessage"))
        await self.say("/web", user, chat)
        call = await self.fake.wait_for(
            "sendMessage", lambda c: c in self.fake.called("sendMessage")[seen:]
            and int(c.params["chat_id"]) == user["id"] and LINK.search(c.params["text"]))
        return LINK.search(call.params["text"]).group(0)

    async def signed_in(self, user: dict = tg.ALICE) -> Any:
        """A browser context (its own cookies) signed in as `user` through the link."""
        context = await self.browser.new_context()
        page = await context.new_page()
        await page.goto(await self.link_for(user, {**tg.PRIVATE, "id": user["id"]}))
        await page.click("#signin")
        await page.wait_for_url(f"{self.url}/")
        return page


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def site(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Site]:
    chromium_path()  # skips, saying why, where there is no browser
    folder = tmp_path_factory.mktemp("web")
    fake = tg.FakeTelegram()
    await fake.start()
    port = free_port()
    config = write_config(folder, telegram={"token": tg.TOKEN, "api_base_url": fake.url},
                          admins={"telegram": [tg.ADMIN["id"]]},
                          web={"listen": f"127.0.0.1:{port}", "metrics_token": "metrics-secret"})
    settings = load_settings(config)
    with capture_logs() as logs:
        store = await Store.open(settings.storage.db)
        service = build_service(settings, store)
        adapter = fast_telegram_adapter(service, settings)
        web = WebServer(service, settings)
        for component in (adapter, web, service):
            await component.start()
        try:
            async with chromium() as browser:
                yield Site(fake, service, settings, f"http://127.0.0.1:{port}", browser, logs)
        finally:
            for component in (adapter, web, service):
                await component.stop()
            await store.close()
            await fake.stop()


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def pictures(site: Site) -> dict[str, int]:
    """Alice's pictures (one varied from another) and one of Bob's, by what they show."""
    made = {prompt: await site.picture(prompt) for prompt in (
        "a red circle on a blue background", "a yellow triangle on a green background")}
    made["bob"] = await site.picture("a white square on a black background", tg.BOB,
                                     {**tg.PRIVATE, "id": tg.BOB["id"]})
    sent = await site.say(f"/vary #{made['a red circle on a blue background']} --strength 0.5")
    call = await site.fake.wait_for(
        "sendPhoto", lambda c: tg.replied_to(c) == sent["message_id"] and c.result, timeout=120)
    made["varied"] = int(str(call["caption"]).rsplit("image #", 1)[1])
    return made


async def tile_ids(page: Any) -> list[int]:
    return [int(value) for value in await page.locator(".tile").evaluate_all(
        "tiles => tiles.map(t => t.dataset.image)")]


# ---- sign-in -----------------------------------------------------------------------------


async def test_without_a_session_nothing_is_shown(site: Site, pictures: dict[str, int]
                                                  ) -> None:
    context = await site.browser.new_context()
    page = await context.new_page()
    for path in ("/", f"/image/{pictures['bob']}", "/models", "/status",
                 f"/image/{pictures['bob']}/picture.png"):
        await page.goto(site.url + path)
        assert page.url == f"{site.url}/signin", path
        body = await page.inner_text("body")
        assert "Send /web to the bot" in body and "#" not in body
    async with aiohttp.ClientSession() as http:
        form = {"score": "1", "csrf": "guess"}
        async with http.post(f"{site.url}/image/{pictures['bob']}/rate", data=form) as answer:
            assert answer.status == 401
    assert site.rows("SELECT * FROM ratings") == []
    await context.close()


async def test_a_web_link_signs_you_in_to_your_own_pictures(site: Site,
                                                            pictures: dict[str, int]) -> None:
    page = await site.signed_in(tg.ALICE)
    shown = await tile_ids(page)
    alices = [pictures["varied"], pictures["a yellow triangle on a green background"],
              pictures["a red circle on a blue background"]]
    assert shown == alices  # newest first, and none of Bob's
    assert "a yellow triangle on a green background" in await page.inner_text(".tiles")
    loaded = await page.locator(".tile img").evaluate_all(
        "images => Promise.all(images.map(i => i.decode().then(() => i.naturalWidth, () => 0)))")
    assert all(width >= 64 for width in loaded)  # every thumbnail decoded
    kept = list((site.settings.storage.images / "thumbs").glob("*.webp"))
    assert len(kept) >= len(alices)  # made once, kept for the next look
    await page.goto(f"{site.url}/image/{pictures['bob']}")
    assert "not yours to see" in await page.inner_text("main")
    await page.context.close()


async def test_a_link_in_a_group_is_sent_privately(site: Site) -> None:
    asked = await site.say("/web", tg.ALICE, tg.GROUP)
    answer = await site.fake.wait_for(
        "sendMessage", lambda c: tg.replied_to(c) == asked["message_id"])
    assert "private message" in answer.params["text"]
    assert "signin" not in answer.params["text"]
    private = await site.fake.wait_for(
        "sendMessage", lambda c: int(c.params["chat_id"]) == tg.ALICE["id"]
        and LINK.search(c.params["text"]) and c.at >= answer.at - 5)
    assert private.params["link_preview_options"]["is_disabled"] is True

    # Telegram refuses a bot's first message to someone who never opened a chat with it.
    site.fake.fail_next("sendMessage", 403, "Forbidden: bot can't initiate conversation "
                                             "with a user")
    asked = await site.say("/web", tg.BOB, tg.GROUP)
    answer = await site.fake.wait_for(
        "sendMessage", lambda c: tg.replied_to(c) == asked["message_id"])
    assert "can't write to you privately yet" in answer.params["text"]
    assert "@canvas_bot" in answer.params["text"] and "signin" not in answer.params["text"]


async def test_a_used_or_expired_link_is_refused_politely(site: Site) -> None:
    context = await site.browser.new_context()
    page = await context.new_page()
    link = await site.link_for(tg.ALICE)
    await page.goto(link)
    await page.click("#signin")
    await page.wait_for_url(f"{site.url}/")
    await page.goto(link)
    assert "has been used already" in await page.inner_text("main")

    late = await site.link_for(tg.ALICE)
    site.write("UPDATE web_links SET expires_at = 0 WHERE used_at IS NULL")
    fresh = await context.new_page()
    await fresh.context.clear_cookies()
    await fresh.goto(late)
    assert "has expired" in await fresh.inner_text("main")
    assert await fresh.locator("#signin").count() == 0
    await context.close()


# ---- the gallery -------------------------------------------------------------------------


async def test_search_and_filters_find_what_they_say(site: Site, pictures: dict[str, int]
                                                     ) -> None:
    page = await site.signed_in(tg.ALICE)
    await page.fill("input[name=q]", "triangle")
    await page.click("button[type=submit] >> text=Show")
    assert await tile_ids(page) == [pictures["a yellow triangle on a green background"]]

    await page.goto(f"{site.url}/")
    everything = await tile_ids(page)
    await page.select_option("select[name=kind]", "img2img")
    await page.click("button[type=submit] >> text=Show")
    assert await tile_ids(page) == [pictures["varied"]]

    tomorrow = (dt.date.today() + dt.timedelta(days=1)).isoformat()
    for query, expected in ((f"since={tomorrow}", []),
                            (f"until={tomorrow}&platform=telegram", everything),
                            ("platform=discord", []), ("model=shapes", everything),
                            ("model=shapes-sd3", []), ("version=v9", [])):
        await page.goto(f"{site.url}/?{query}")
        assert await tile_ids(page) == expected, query
        if not expected:
            assert "No pictures match." in await page.inner_text("main")
    await page.goto(f"{site.url}/")
    await page.select_option("select[name=kind]", "")

    for hostile in ("'; DROP TABLE jobs; --", 'red" OR 1=1 --', "*", "NEAR(a b)"):
        await page.goto(f"{site.url}/")
        await page.fill("input[name=q]", hostile)
        await page.click("button[type=submit] >> text=Show")
        assert await page.locator("main h1").count() == 1, hostile  # an ordinary page
    assert site.rows("SELECT COUNT(*) FROM jobs")[0][0] >= 4
    for query in ("before=99999999999999999999999", "since=nonsense&until=9999-12-31",
                  "rating=%00%27", "user=1", "page=1e308"):
        answer = await page.goto(f"{site.url}/?{query}")
        assert answer.status == 200, query
    bob = site.rows("SELECT id FROM users WHERE platform_user_id = ?", (str(tg.BOB["id"]),))
    await page.goto(f"{site.url}/?user={bob[0][0]}")
    assert pictures["bob"] not in await tile_ids(page)  # a user filter is for admins only
    await page.context.close()


async def test_the_image_page_shows_the_picture_and_stores_a_rating(
        site: Site, pictures: dict[str, int]) -> None:
    page = await site.signed_in(tg.ALICE)
    varied, source = pictures["varied"], pictures["a red circle on a blue background"]
    await page.goto(f"{site.url}/image/{varied}")
    assert await page.inner_text("#prompt") == "a red circle on a blue background"
    assert "shapes, version base" in await page.inner_text("#model")
    assert await page.locator("#parent a").get_attribute("href") == f"/image/{source}"
    assert await page.locator("#picture").evaluate("i => i.naturalWidth") >= 64
    await page.click("button[aria-label='Rate 4 of 5']")
    await page.wait_for_url(f"{site.url}/image/{varied}")
    assert await page.inner_text("#my-rating") == "4/5"
    alice = site.rows("SELECT id FROM users WHERE platform_user_id = ?",
                      (str(tg.ALICE["id"]),))[0][0]
    assert site.rows("SELECT score FROM ratings WHERE image_id = ? AND user_id = ?",
                     (varied, alice)) == [(4,)]
    await page.goto(f"{site.url}/image/{source}")
    assert await page.locator("#children a").get_attribute("href") == f"/image/{varied}"
    async with page.expect_download() as download:
        await page.click("text=Download the PNG")
    assert (await download.value).suggested_filename == f"canvas-{source}.png"
    await page.context.close()


async def test_a_form_without_its_csrf_token_is_refused(site: Site, pictures: dict[str, int]
                                                        ) -> None:
    page = await site.signed_in(tg.ALICE)
    target = pictures["a yellow triangle on a green background"]
    answer = await page.request.post(f"{site.url}/image/{target}/rate",
                                     form={"score": "1", "csrf": "not-the-token"})
    assert answer.status == 403 and "expired" in await answer.text()
    assert site.rows("SELECT * FROM ratings WHERE image_id = ?", (target,)) == []
    await page.context.close()


# ---- the admins' pages -------------------------------------------------------------------


async def test_a_user_who_is_not_an_admin_is_refused_the_admin_pages(site: Site) -> None:
    page = await site.signed_in(tg.ALICE)
    for path in ("/models", "/status"):
        answer = await page.goto(site.url + path)
        assert answer.status == 403
        assert "Only the bot's admins" in await page.inner_text("main")
    csrf = await page.locator("input[name=csrf]").first.get_attribute("value")
    answer = await page.request.post(f"{site.url}/models/use",
                                     form={"csrf": csrf, "model": "shapes", "version": "base"})
    assert answer.status == 403
    assert "Models" not in await page.inner_text("header nav")
    await page.context.close()


async def test_an_admin_watches_a_retraining_and_switches_versions(
        site: Site, pictures: dict[str, int]) -> None:
    for image_id in pictures.values():
        sent = await site.say(f"/rate {image_id} 5", tg.ADMIN, ADMIN_CHAT)
        await site.fake.wait_for("sendMessage", lambda c, s=sent: tg.replied_to(c)
                                 == s["message_id"])
    await site.say("/retrain --steps 6 --rank 2", tg.ADMIN, ADMIN_CHAT)
    await site.fake.wait_for("sendMessage",
                             lambda c: "Retraining finished" in c.params.get("text", ""),
                             timeout=120)
    page = await site.signed_in(tg.ADMIN)
    assert pictures["bob"] in await tile_ids(page)  # admins see everyone's
    if SCREENSHOTS:
        await page.screenshot(path=str(Path(SCREENSHOTS) / "web-gallery.png"), full_page=True)
    await page.goto(f"{site.url}/models")
    shapes = page.locator("section[data-model=shapes]")
    assert await shapes.locator("li.version.active").get_attribute("data-version") == "v1"
    line = shapes.locator(".run svg polyline[data-series=v1]")
    assert await line.get_attribute("data-points") == "6"  # the loss at every step
    if SCREENSHOTS:
        await page.screenshot(path=str(Path(SCREENSHOTS) / "web-models.png"), full_page=True)
    await shapes.locator("button[aria-label='Use base of shapes']").click()
    assert "Now using base" in await page.inner_text("p.said")
    assert await shapes.locator("li.version.active").get_attribute("data-version") == "base"
    assert site.rows("""SELECT model_versions.name FROM active_versions JOIN model_versions
                        ON model_versions.id = active_versions.version_id
                        WHERE active_versions.base_model = 'shapes'""") == [("base",)]

    await site.say("/retrain --steps 400 --rank 2", tg.ADMIN, ADMIN_CHAT)
    await until(lambda: site.service.learning.progress is not None
                and site.service.learning.progress.run_id == site.service.learning.run_id)
    await page.goto(f"{site.url}/models")
    assert "Retraining v2: step" in await page.inner_text("p.running")  # live, refreshing
    assert await page.locator("meta[http-equiv=refresh]").count() == 1
    await site.say("/retrain cancel", tg.ADMIN, ADMIN_CHAT)
    await until(lambda: site.service.learning.run_id is None)

    await page.goto(f"{site.url}/status")
    assert "online" in await page.inner_text("ul.engines")
    assert "Nothing is waiting or running." in await page.inner_text("main")
    slow = [await site.say(f"/imagine a {colour} star on a black background --steps 100 --n 4")
            for colour in ("red", "blue", "pink")]
    await until(lambda: len(site.service.admission.order()) == len(slow))
    order = site.service.admission.order()
    await page.goto(f"{site.url}/status")
    rows = await page.locator("table.queue tbody tr").all_inner_texts()
    assert [int(row.split()[1]) for row in rows] == order  # as they will be served
    assert "generating" in rows[0] and "a red star on a black background" in rows[0]
    for job_id in order:
        await site.say(f"/cancel {job_id}")
    await until(lambda: not site.service.admission.order())
    await page.reload()
    hour = await page.inner_text("#hour")
    assert int(hour.split()[0]) >= len(pictures)
    assert await page.locator("svg polyline[data-series=images]").count() == 1
    await page.context.close()


async def test_metrics_answer_this_host_or_the_token(site: Site) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{site.url}/metrics") as answer:
            assert answer.status == 200
            text = await answer.text()
        assert re.search(r"^canvas_engines_online 1\.0$", text, re.M)
        assert re.search(r'^canvas_wait_seconds\{quantile="0\.5"\} ', text, re.M)
        proxied = {"X-Forwarded-For": "203.0.113.9"}
        async with http.get(f"{site.url}/metrics", headers=proxied) as answer:
            assert answer.status == 403
        with_token = {**proxied, "Authorization": "Bearer metrics-secret"}
        async with http.get(f"{site.url}/metrics", headers=with_token) as answer:
            assert answer.status == 200


async def test_no_token_reaches_the_log_or_a_page(site: Site) -> None:
    link = await site.link_for(tg.ALICE)
    token = link.rsplit("/", 1)[1]
    context = await site.browser.new_context()
    page = await context.new_page()
    await page.goto(link)
    await page.click("#signin")
    await page.wait_for_url(f"{site.url}/")
    cookie = next(c for c in await context.cookies() if c["name"] == "canvas_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax"
    html = await page.content()
    logged = "\n".join(site.logs.lines)
    for secret in (token, cookie["value"], tg.TOKEN, "metrics-secret"):
        assert secret not in logged and secret not in html
    assert "GET <signin_link> 200" in logged  # requests are logged, by route
    await context.close()



async def test_a_deleted_picture_leaves_the_gallery(site: Site, pictures: dict[str, int]) -> None:
    page = await site.signed_in(tg.ALICE)
    gone = pictures["a yellow triangle on a green background"]
    assert gone in await tile_ids(page)
    asked = await site.say(f"/delete {gone}")
    await site.fake.wait_for("sendMessage", lambda c: tg.replied_to(c) == asked["message_id"])
    await page.reload()
    assert gone not in await tile_ids(page)
    answer = await page.goto(f"{site.url}/image/{gone}")
    assert answer.status == 404
    thumb = await page.request.get(f"{site.url}/image/{gone}/thumb.webp")
    assert thumb.status == 404
    await page.context.close()
