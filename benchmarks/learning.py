"""The learning loop, measured: users who like purple teach the bundled model to draw purple.

Generate `a circle` over many seeds, rate the purple ones 5 and the rest 1, /retrain, and
generate `a circle` over new seeds: the share of purple circles should rise, while
`a red circle` still comes out red. Also measured: how much slower an /imagine is while the
engine is training.

    python -m benchmarks.learning [--images 64] [--model bundled:shapes]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from PIL import Image

from bot import commands as cmd
from bot.cli import blobs_of, build_service
from bot.config import load_settings
from bot.service import Service, User
from bot.store import ImageRow, JobRow, Store
from engine.params import Params
from engine.shapes import checker

USER = User("console", "bench")


class Collector:
    """A Deliverer that hands each job's outcome to whoever waits for it."""

    def __init__(self) -> None:
        self.outcomes: dict[int, asyncio.Future] = {}
        self.news: list[str] = []

    def future(self, job_id: int) -> asyncio.Future:
        return self.outcomes.setdefault(job_id, asyncio.get_running_loop().create_future())

    async def progress(self, job: JobRow, step: int, total: int) -> None:
        pass

    async def deliver_images(self, job: JobRow, images: list[ImageRow]) -> None:
        self.future(job.id).set_result(images)

    async def deliver_failure(self, job: JobRow, message: str) -> None:
        self.future(job.id).set_exception(RuntimeError(message))

    async def announce(self, origin: dict[str, Any], text: str) -> None:
        self.news.append(text)


async def open_service(folder: Path, engine: dict[str, Any]) -> tuple[Store, Service]:
    """A service, not started yet, on a fresh data folder with these engine settings and no
    queue limits (a benchmark sends more than any user may)."""
    config = folder / "config.yaml"
    config.write_text(yaml.safe_dump({
        "engine": engine,
        "storage": {"db": "canvas.db", "images": "images"},
        "limits": {"max_waiting_per_user": 10_000, "max_queue": 10_000}}))
    settings = load_settings(config)
    store = await Store.open(settings.storage.db, blobs_of(settings))
    return store, build_service(settings, store)


@dataclass
class Experiment:
    """A bot on a fresh data folder, driven the way a chat would drive it."""

    service: Service
    store: Store
    collector: Collector

    @classmethod
    async def start(cls, folder: Path, model: str = "bundled:shapes",
                    max_batch: int = 4) -> Experiment:
        store, service = await open_service(folder, {"model": model, "max_batch": max_batch})
        collector = Collector()
        service.register("console", collector)
        await service.start()
        return cls(service, store, collector)

    async def stop(self) -> None:
        await self.service.stop()
        await self.store.close()

    async def say(self, text: str) -> str:
        reply = await self.service.handle(USER, cmd.parse(text))
        if reply.error:
            raise RuntimeError(reply.text)
        return reply.text

    async def imagine(self, prompt: str, seeds: range) -> list[tuple[ImageRow, str | None]]:
        """Images for `prompt` at each seed, each with the colour the checker sees."""
        job_ids = []
        for seed in seeds:
            reply = await self.service.handle(
                USER, cmd.Imagine(Params(kind="txt2img", prompt=prompt, seed=seed)))
            job_ids.append(reply.job_id)
        results = []
        for job_id in job_ids:
            [image] = await self.collector.future(job_id)
            with Image.open(self.service.image_file(image)) as picture:
                results.append((image, checker.read(picture).colour))
        return results

    async def rate_by_colour(self, images: list[tuple[ImageRow, str | None]],
                             liked: str) -> None:
        for image, colour in images:
            await self.say(f"/rate {image.id} {5 if colour == liked else 1}")

    async def retrain(self, options: str = "") -> float:
        """Retrain and wait for it; returns the seconds it took."""
        began = time.perf_counter()
        await self.say(f"/retrain {options}")
        await self.service.learning.idle()
        for _ in range(100):  # the outcome is announced in the background: give it a moment
            outcome = [news for news in self.collector.news if "Retraining " in news
                       and ("finished" in news or "failed" in news or "cancelled" in news)]
            if outcome:
                break
            await asyncio.sleep(0.05)
        if not outcome or "finished" not in outcome[0]:
            raise RuntimeError(f"retraining did not finish: {self.collector.news}")
        return time.perf_counter() - began

    async def latency(self, prompt: str, seed: int) -> float:
        began = time.perf_counter()
        await self.imagine(prompt, range(seed, seed + 1))
        return time.perf_counter() - began


def share(images: list[tuple[ImageRow, str | None]], colour: str) -> float:
    return sum(1 for _, seen in images if seen == colour) / len(images)


async def main(images: int, model: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        bot = await Experiment.start(Path(folder), model)
        try:
            before = await bot.imagine("a circle", range(10_000, 10_000 + images))
            red_before = await bot.imagine("a red circle", range(15_000, 15_000 + images // 2))
            await bot.rate_by_colour(before, "purple")
            idle = [await bot.latency("a red circle", 20_000 + i) for i in range(8)]

            await bot.say("/retrain")
            busy = []
            while bot.service.learning.run_id is not None:
                busy.append(await bot.latency("a red circle", 21_000 + len(busy)))
            await bot.service.learning.idle()
            train_seconds = (await bot.service.learning.versions.versions(
                bot.service.learning.default_model))[-1].seconds

            after = await bot.imagine("a circle", range(30_000, 30_000 + images))
            red_after = await bot.imagine("a red circle", range(40_000, 40_000 + images // 2))
        finally:
            await bot.stop()
    print(f"{'':28} {'before':>8} {'after':>8}")
    print(f"{'purple share of a circle':28} {share(before, 'purple'):8.0%} "
          f"{share(after, 'purple'):8.0%}   ({images} seeds each, new seeds after)")
    print(f"{'red share of a red circle':28} {share(red_before, 'red'):8.0%} "
          f"{share(red_after, 'red'):8.0%}   ({len(red_after)} seeds each)")
    print(f"colours before: {dict(Counter(c for _, c in before))}")
    print(f"colours after:  {dict(Counter(c for _, c in after))}")
    print(f"retraining took {train_seconds:.1f} s in the engine")
    idle_s, busy_s = statistics.median(idle), statistics.median(busy or [float('nan')])
    print(f"one /imagine: {idle_s:.2f} s idle, {busy_s:.2f} s during retraining "
          f"(median of {len(idle)} and {len(busy)}): {busy_s / idle_s:.1f}x slower")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--model", default="bundled:shapes")
    args = parser.parse_args()
    asyncio.run(main(args.images, args.model))
