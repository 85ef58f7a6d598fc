"""The web gallery over a large store: how long its pages take to answer.

A real store (SQLite file, every migration) is filled with `--images` synthetic pictures
(prompts made of shape words, 50 users, a rating on one in five), the web app is started on a
free port exactly as `canvas run` starts it, and each page is fetched `--rounds` times over
HTTP by a signed-in admin and a signed-in user. Reported: the median and p95 milliseconds from
request to the last byte. Goal: the gallery page and a search under 100 ms.

    python -m benchmarks.web
    python -m benchmarks.web --images 20000 --rounds 10     # quicker
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp

from bot.cli import build_service
from bot.config import load_settings
from bot.store import Store
from bot.web.app import WebServer
from engine.params import Params
from tests.conftest import free_port, write_config

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black", "pink"]
SHAPES = ["circle", "square", "triangle", "star", "ring", "cross"]
WORDS = ["tiny", "huge", "soft", "glowing", "dusty", "shiny", "calm", "stormy", "old", "new"]
KINDS = ["txt2img"] * 8 + ["img2img", "inpaint"]


def fill(db: Path, images: int, users: int = 50, seed: int = 1) -> None:
    """`images` pictures, one per job, spread over `users` users, in one transaction."""
    rng = random.Random(seed)
    now = time.time()
    with sqlite3.connect(db) as connection:
        connection.executemany(
            "INSERT INTO users (platform, platform_user_id, name, created_at) VALUES (?,?,?,?)",
            [("telegram", str(1000 + n), f"user {n}", now) for n in range(users)])
        jobs, pictures, ratings = [], [], []
        for n in range(1, images + 1):
            prompt = (f"a {rng.choice(WORDS)} {rng.choice(COLOURS)} {rng.choice(SHAPES)} on a "
                      f"{rng.choice(COLOURS)} background")
            kind = rng.choice(KINDS)
            made = now - (images - n) * 30.0
            params = Params(kind=kind, prompt=prompt, seed=n, steps=20, cfg=7.0, n=1,
                            checkpoint="shapes").to_json()
            jobs.append((n, rng.randrange(users) + 1, kind, prompt, "shapes", params, params,
                         made - 5, made - 4, made, made, 1.0))
            pictures.append((n, n, 0, f"{n:064x}", n, 64, 64, "base", made))
            if rng.random() < 0.2:
                ratings.append((n, rng.randrange(users) + 1, rng.randint(1, 5), made))
        connection.executemany(
            """INSERT INTO jobs (id, user_id, kind, prompt, checkpoint, params, resolved,
                   queued_at, started_at, finished_at, delivered_at, engine_seconds, status)
               VALUES (?,?,?,?,?,?,?,?,?,?,?,?,'done')""", jobs)
        connection.executemany(
            """INSERT INTO images (id, job_id, idx, blob, seed, width, height, version,
                   created_at) VALUES (?,?,?,?,?,?,?,?,?)""", pictures)
        connection.executemany(
            "INSERT OR IGNORE INTO ratings (image_id, user_id, score, rated_at) VALUES (?,?,?,?)",
            ratings)


async def session_for(store: Store, service, platform: str, user: str) -> str:
    user_id = await store.ensure_user(platform, user)
    return await service.sign_ins.redeem(await service.sign_ins.new_link(user_id))


async def timed(http: aiohttp.ClientSession, url: str, cookie: str, rounds: int) -> list[float]:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        async with http.get(url, cookies={"canvas_session": cookie},
                            allow_redirects=False) as answer:
            await answer.read()
            assert answer.status == 200, (url, answer.status)
        times.append((time.perf_counter() - started) * 1000)
    return times


async def main(images: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        port = free_port()
        settings = load_settings(write_config(Path(folder),
                                              web={"listen": f"127.0.0.1:{port}"}))
        store = await Store.open(settings.storage.db)
        started = time.perf_counter()
        await asyncio.to_thread(fill, settings.storage.db, images)
        print(f"{images} synthetic images stored in {time.perf_counter() - started:.1f} s")
        service = build_service(settings, store)  # not started: no engine is needed here
        web = WebServer(service, settings)
        await web.start()
        admin = await session_for(store, service, "console", "console")
        user = await session_for(store, service, "telegram", "1007")
        base = f"http://127.0.0.1:{port}"
        pages = [
            ("gallery, admin", "/", admin),
            ("gallery, one user's", "/", user),
            ("gallery, page 200 (by id)", f"/?before={images - 200 * 24}", admin),
            ("search 'triangle'", "/?q=triangle", admin),
            ("search 'glowing purple star'", "/?q=glowing+purple+star", admin),
            ("search + filters", "/?q=red&kind=img2img&rating=4&version=base", admin),
            ("search, one user's", "/?q=blue+circle", user),
            ("image page", f"/image/{images // 2}", admin),
        ]
        async with aiohttp.ClientSession() as http:
            await timed(http, base + "/", admin, 3)  # warm the caches
            print(f"{'page':32} {'median ms':>10} {'p95 ms':>8}")
            for name, path, cookie in pages:
                times = sorted(await timed(http, base + path, cookie, rounds))
                p95 = times[max(0, round(0.95 * len(times)) - 1)]
                print(f"{name:32} {statistics.median(times):10.1f} {p95:8.1f}")
        await web.stop()
        await store.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=30)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.images, arguments.rounds))
