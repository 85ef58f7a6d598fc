"""The bot and `canvas worker` processes through a real redis-server, as an operator runs them:
`canvas console --json` with queue.url set and no engine of its own, workers on the bundled
model, and the faults that happen in real life: a worker killed mid-job, a job that kills every
worker that runs it, Redis killed and started again, the bot killed and started again, and no
worker online. Each user gets each picture once."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import redis
from PIL import Image

from bot import commands as cmd
from bot.cli import build_service
from bot.config import load_settings
from bot.service import User
from bot.store import Store
from tests.conftest import Recorder, job_row, write_config
from tests.redis_server import RedisServer
from tests.test_durability import read_until

LEASE = 1.0
SLOW = "--steps 100"  # several seconds on one thread: longer than a lease


@pytest.fixture
def server(tmp_path):
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.kill()


def redis_config(folder: Path, server: RedisServer, **sections) -> Path:
    return write_config(folder, queue={"url": server.url, "local_engine": False,
                                       "lease": LEASE},
                        engine={"max_batch": 1}, limits={"max_waiting_per_user": 10},
                        **sections)


class Workers:
    """`canvas worker` processes, each on one thread, with its log in the test's folder."""

    def __init__(self, config: Path, server: RedisServer) -> None:
        self.config = config
        self.redis = redis.Redis.from_url(server.url)
        self.processes: dict[str, subprocess.Popen] = {}

    def start(self, name: str, wait: bool = True) -> subprocess.Popen:
        log = (self.config.parent / f"{name}.log").open("ab")
        process = subprocess.Popen(
            [sys.executable, "-m", "bot", "worker", "--config", str(self.config),
             "--name", name], stdout=log, stderr=log, cwd=self.config.parent,
            env={**os.environ, "OMP_NUM_THREADS": "1"})
        self.processes[name] = process
        if wait:
            deadline = time.monotonic() + 120
            while name not in self.online() and time.monotonic() < deadline:
                assert process.poll() is None, self.log(name)
                time.sleep(0.1)
            assert name in self.online(), self.log(name)
        return process

    def online(self) -> dict[str, dict]:
        records = {}
        for key in self.redis.scan_iter("canvas:worker:*"):
            if (raw := self.redis.get(key)) is not None:
                record = json.loads(raw)
                records[record["name"]] = record
        return records

    def holding(self, job_id: int) -> str | None:
        """The worker whose inbox holds this job."""
        for key in self.redis.scan_iter("canvas:inbox:*"):
            for _, fields in self.redis.xrange(key):
                if json.loads(fields[b"m"]).get("job_id") == job_id:
                    return key.decode().removeprefix("canvas:inbox:").rsplit("-", 1)[0]
        return None

    def kill(self, name: str) -> None:
        process = self.processes.pop(name)
        process.send_signal(signal.SIGKILL)
        process.wait()

    def log(self, name: str) -> str:
        return (self.config.parent / f"{name}.log").read_text()[-3000:]

    def stop(self) -> None:
        for process in self.processes.values():
            process.terminate()
        for process in self.processes.values():
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()


@pytest.fixture
def workers_for(tmp_path, server):
    made: list[Workers] = []

    def make(config: Path) -> Workers:
        made.append(Workers(config, server))
        return made[-1]

    yield make
    for workers in made:
        workers.stop()


CONSOLES: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def no_console_left():
    """A test that fails half way leaves no bot running."""
    yield
    while CONSOLES:
        process = CONSOLES.pop()
        if process.poll() is None:
            process.kill()
            process.wait()


def start_console(config: Path, lines: list[str]) -> subprocess.Popen:
    """`canvas console --json` with its standard input left open, its log in bot.log."""
    process = subprocess.Popen(
        [sys.executable, "-m", "bot", "console", "--json", "--config", str(config)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=config.parent,
        stderr=(config.parent / "bot.log").open("a"))
    process.stdin.write("".join(line + "\n" for line in lines))
    process.stdin.flush()
    CONSOLES.append(process)
    return process


def finish(bot: subprocess.Popen, timeout: float = 240) -> list[dict]:
    """End of input: the console waits for its jobs, then exits; everything it said after."""
    out, _ = bot.communicate("", timeout=timeout)
    assert bot.returncode == 0
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def images_of(records: list[dict]) -> dict[int, list[dict]]:
    found: dict[int, list[dict]] = {}
    for record in records:
        if record["type"] == "image":
            found.setdefault(record["job"], []).append(record)
    return found


def wait_for_progress(bot: subprocess.Popen, job_id: int) -> list[dict]:
    records = []
    while True:
        records += read_until(bot.stdout, "progress")
        if records[-1]["job"] == job_id:
            return records


def test_two_workers_serve_and_a_killed_workers_job_is_made_once_by_the_other(
        tmp_path, server, workers_for):
    config = redis_config(tmp_path, server)
    workers = workers_for(config)
    workers.start("alpha")
    workers.start("beta")
    bot = start_console(config, ["/queue"] + [f"/imagine a red circle {SLOW} --seed {seed}"
                                              for seed in (1, 2)])
    [queue] = read_until(bot.stdout, "text")
    assert "Workers online" in queue["text"] or "No image workers" in queue["text"]
    records = wait_for_progress(bot, 1)
    deadline = time.monotonic() + 60  # the bot may see the second worker a moment later
    while workers.holding(2) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    victim, slow = workers.holding(1), workers.holding(2)
    assert {victim, slow} == {"alpha", "beta"}  # one job each: a worker has room for one
    workers.kill(victim)
    records += finish(bot)
    images = images_of(records)
    assert sorted(images) == [1, 2] and all(len(each) == 1 for each in images.values())
    assert images[1][0]["worker"] == images[2][0]["worker"] == slow
    with Image.open(images[1][0]["path"]) as png:
        assert png.size == (64, 64)
    # Job 2 ran longer than a lease on a worker that was only slow: it was not taken back
    # (its result would then have been dropped, and said so in that worker's log).
    assert "taken back" not in workers.log(slow)
    row = job_row(config.parent / "canvas.db", 1)
    assert (row["status"], row["worker"]) == ("done", slow) and row["delivered_at"]


def test_a_job_that_kills_three_workers_fails_with_a_clear_message(
        tmp_path, server, workers_for):
    config = redis_config(tmp_path, server)
    workers = workers_for(config)
    workers.start("w0")
    bot = start_console(config, [f"/imagine a deadly circle {SLOW} --seed 1"])
    for life in range(3):
        wait_for_progress(bot, 1)
        workers.kill(f"w{life}")
        workers.start(f"w{life + 1}")
    records = finish(bot)
    [failure] = [r for r in records if r["type"] == "error" and r.get("job") == 1]
    assert "stopped 3 image workers" in failure["error"]
    assert not images_of(records)
    assert job_row(config.parent / "canvas.db", 1)["status"] == "failed"


def test_no_worker_then_redis_restarted_then_the_bot_killed_loses_nothing(
        tmp_path, server, workers_for):
    config = redis_config(tmp_path, server)
    db = config.parent / "canvas.db"
    bot = start_console(config, ["/imagine a blue square --seed 3 --steps 4"])
    [queued] = read_until(bot.stdout, "text")
    assert "No image worker is online" in queued["text"] and "your job waits" in queued["text"]

    server.restart()  # killed and started again on its append-only file
    workers = workers_for(config)
    workers.start("alpha")
    first = read_until(bot.stdout, "image")
    assert images_of(first)[1][0]["worker"] == "alpha"

    bot.stdin.write(f"/imagine a green triangle {SLOW} --seed 4\n")
    bot.stdin.flush()
    wait_for_progress(bot, 2)
    bot.send_signal(signal.SIGKILL)  # the bot dies; the worker finishes job 2 meanwhile
    bot.wait()
    deadline = time.monotonic() + 120
    while workers.holding(2) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert job_row(db, 2)["status"] == "running"  # the result is in Redis, not yet stored

    again = start_console(config, [])
    records = finish(again)
    [image] = images_of(records)[2]
    assert image["worker"] == "alpha"
    row = job_row(db, 2)
    assert row["status"] == "done" and row["delivered_at"]
    assert server_events(server) == 0  # every event settled


def test_redis_coming_back_empty_mid_job_still_gives_the_picture_once(
        tmp_path, server, workers_for):
    config = redis_config(tmp_path, server)
    workers = workers_for(config)
    workers.start("alpha")
    bot = start_console(config, [f"/imagine a red circle {SLOW} --seed 5"])
    wait_for_progress(bot, 1)
    server.restart(wipe=True)  # no persistence: the job's entry and every group are gone
    records = finish(bot)
    [image] = images_of(records)[1]
    assert image["worker"] == "alpha"
    assert job_row(config.parent / "canvas.db", 1)["status"] == "done"
    # The worker lived through it: its job was not made a second time elsewhere or by it.
    assert "its result is dropped" not in (config.parent / "alpha.log").read_text()


def server_events(server: RedisServer) -> int:
    return redis.Redis.from_url(server.url).xlen("canvas:events")


def test_a_new_version_reaches_every_worker_including_one_that_starts_later(
        tmp_path, server, workers_for):
    config = redis_config(tmp_path, server)
    workers = workers_for(config)
    workers.start("alpha")
    workers.start("beta")
    make = [f"/imagine a red circle --seed {seed} --steps 6" for seed in range(4)]
    rate = [f"/rate {image} 5" for image in range(1, 5)]
    bot = start_console(config, make)
    made = [read_until(bot.stdout, "image") for _ in range(4)]
    assert len(made) == 4
    bot.stdin.write("".join(line + "\n" for line in [*rate, "/retrain --steps 20"]))
    bot.stdin.flush()
    while "Retraining finished" not in read_until(bot.stdout, "text")[-1]["text"]:
        pass
    workers.start("gamma")
    same = "/imagine a purple circle --seed 9 --steps 6"
    bot.stdin.write("".join(line + "\n" for line in [same] * 6))
    bot.stdin.flush()
    records = read_until(bot.stdout, "image")
    while len([job for job in images_of(records) if job > 4]) < 6:
        records += read_until(bot.stdout, "image")
    after = [image for job, [image] in images_of(records).items() if job > 4]
    assert {image["model_version"] for image in after} == {"v1"}
    by_worker = {image["worker"]: image["path"] for image in after}
    assert "gamma" in by_worker and len(by_worker) >= 2
    pixels = [np.asarray(Image.open(path)).astype(int) for path in by_worker.values()]
    assert all(np.abs(p - pixels[0]).max() <= 1 for p in pixels)

    bot.stdin.write("".join(line + "\n" for line in ["/model use base", *[same] * 6]))
    records = finish(bot)
    back = [image for job, [image] in images_of(records).items() if job > 10]
    assert len(back) == 6 and {image["model_version"] for image in back} == {"base"}
    assert len({image["worker"] for image in back}) >= 2


async def test_a_worker_found_while_the_bot_starts_is_fed_its_jobs(tmp_path, server,
                                                                  workers_for, monkeypatch):
    """The bot finds a worker that is already online while its engines start, and reads the
    store before it handles any engine's news: a worker that joined in between must still be
    handed jobs. (It was not: the job waited for ever.) The store's read is made slow here so
    the worker surely joins in between."""
    config = redis_config(tmp_path, server)
    workers_for(config).start("alpha")
    settings = load_settings(config)
    store = await Store.open(settings.storage.db)
    read_undelivered = store.undelivered_jobs

    async def after_the_worker_joined():
        await asyncio.sleep(4 * LEASE)
        return await read_undelivered()

    monkeypatch.setattr(store, "undelivered_jobs", after_the_worker_joined)
    service = build_service(settings, store)
    recorder = Recorder()
    service.register("test", recorder)
    await service.start()
    try:
        assert service.engines.online == 1  # the worker joined before the store was read
        reply = await service.handle(User("test", "1", "ann"),
                                     cmd.parse("/imagine a red circle --steps 2"))
        await recorder.wait(reply.job_id, timeout=60)
        [image] = recorder.images[reply.job_id]
        assert image.width == 64
    finally:
        await service.stop()
        await store.close()
