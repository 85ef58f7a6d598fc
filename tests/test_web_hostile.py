"""Hostile and odd requests to the web app get ordinary answers (a 4xx page, never a 500), and
the log stays clean. Raw HTTP over a socket, so nothing is tidied up by a client first."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio

from bot.cli import build_service
from bot.config import load_settings
from bot.service import Service
from bot.store import Store
from bot.web.app import WebServer
from tests.conftest import LogLines, capture_logs, free_port, write_config

pytestmark = pytest.mark.asyncio(loop_scope="module")


@dataclass
class Site:
    port: int
    service: Service
    db: Path
    session: str
    csrf: str
    logs: LogLines

    async def ask(self, head: bytes, body: bytes = b"") -> tuple[int, bytes]:
        """Send `head` (request line and headers, CRLF-separated, no blank line) and `body`;
        the status and the whole answer."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        writer.write(head + b"\r\nConnection: close\r\nContent-Length: "
                     + str(len(body)).encode() + b"\r\n\r\n" + body)
        await writer.drain()
        answer = await reader.read()
        writer.close()
        return int(answer.split(b" ", 2)[1]), answer

    def signed_in(self, line: str, *extra: str) -> bytes:
        headers = [line, f"Host: 127.0.0.1:{self.port}", f"Cookie: canvas_session={self.session}",
                   *extra]
        return "\r\n".join(headers).encode()


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def site(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Site]:
    folder = tmp_path_factory.mktemp("hostile-web")
    port = free_port()
    settings = load_settings(write_config(folder, web={"listen": f"127.0.0.1:{port}",
                                                       "metrics_token": "tok"}))
    with capture_logs() as logs:
        store = await Store.open(settings.storage.db)
        service = build_service(settings, store)  # no engine: the pages read the store
        web = WebServer(service, settings)
        await web.start()
        user = await store.ensure_user("console", "console")
        session = await service.sign_ins.redeem(await service.sign_ins.new_link(user))
        viewer = await service.sign_ins.viewer(session)
        _stored_oddities(settings.storage.db, user)
        try:
            yield Site(port, service, settings.storage.db, session, viewer.csrf, logs)
        finally:
            await web.stop()
            await store.close()


def _stored_oddities(db: Path, user_id: int) -> None:
    """An image an older version kept without its file, and a version whose training
    diverged (its final loss is not a number, so SQLite holds NULL)."""
    now = time.time()
    with contextlib.closing(sqlite3.connect(db)) as connection:
        connection.execute(
            """INSERT INTO jobs (id, user_id, kind, prompt, checkpoint, params, queued_at, status)
               VALUES (1, ?, 'txt2img', 'an old picture', 'shapes', '{}', ?, 'done')""",
            (user_id, now))
        connection.execute(
            """INSERT INTO images (id, job_id, idx, blob, seed, width, height, version,
                   created_at) VALUES (1, 1, 0, '', 1, 64, 64, 'base', ?)""", (now,))
        connection.execute(
            """INSERT INTO model_versions (name, base_model, parent_id, adapter, created_at)
               VALUES ('v1', 'shapes', NULL, 'ab.safetensors', ?)""", (now,))
        connection.commit()


async def test_odd_ids_and_missing_files_are_not_found(site: Site) -> None:
    for path in ("/image/%C2%B2", "/image/" + "9" * 5000, "/image/-1", "/image/1/thumb.webp",
                 "/image/1/picture.png", "/image/1/download"):
        status, answer = await site.ask(site.signed_in(f"GET {path} HTTP/1.1"))
        assert status == 404, path
    status, answer = await site.ask(site.signed_in("GET /image/1 HTTP/1.1"))
    assert status == 200 and b"an old picture" in answer


async def test_bad_forms_and_tokens_are_refused_not_crashed_on(site: Site) -> None:
    form = "Content-Type: application/x-www-form-urlencoded"
    cases = [
        (site.signed_in("POST /signout HTTP/1.1", form), b"csrf=%C3%A9", 403),
        (site.signed_in("POST /image/1/rate HTTP/1.1", form), b"csrf=\xff\xfe&score=\xff", 400),
        (site.signed_in("POST /image/1/rate HTTP/1.1",
                        "Content-Type: application/x-www-form-urlencoded; charset=bogus"),
         b"csrf=x", 400),
        (site.signed_in("POST /image/1/rate HTTP/1.1", "Content-Type: multipart/form-data; "
                        "boundary=zz"), b"--zz\r\nbroken", 400),
        (site.signed_in("POST /image/1/rate HTTP/1.1", form),
         f"csrf={site.csrf}&score=9".encode(), 400),
        (b"POST /signin/abcdefghijklmnopqrstuvwxyz HTTP/1.1\r\nHost: 127.0.0.1\r\n"
         b"Sec-Fetch-Site: cross-site", b"", 403),
        (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: canvas_session=\xff\xfe", b"", 303),
        (b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer \xc3\xa9", b"", 200),
        (b"GET /metrics HTTP/1.1\r\nHost: pictures.example.org\r\n"
         b"Authorization: Bearer \xff", b"", 403),
        (b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Real-IP: 203.0.113.5", b"", 403),
        (b"GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer tok", b"", 200),
    ]
    for head, body, expected in cases:
        status, answer = await site.ask(head, body)
        assert status == expected, (head, body, answer[:300])


async def test_a_request_the_parser_refuses_leaves_no_traceback(site: Site) -> None:
    status, _ = await site.ask(b"GET /signin/\xff\xfe HTTP/1.1\r\nHost: 127.0.0.1")
    assert status in (400, 404)
    status, _ = await site.ask(b"GARBAGE\x00 / HTTP/9")
    assert status == 400
    # aiohttp notes the parser's refusal itself; our access log must not fail on it.
    assert not [line for line in site.logs.lines
                if "Unhandled exception" in line or "bot/web" in line]


async def test_the_models_page_shows_a_version_whose_loss_was_not_a_number(site: Site) -> None:
    status, answer = await site.ask(site.signed_in("GET /models HTTP/1.1"))
    assert status == 200
    assert "loss —".encode() in answer and b"v1" in answer
