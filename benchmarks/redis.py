"""Redis Streams against the bot's own engine, on this machine: images per second with 1 and 2
workers, and the extra time a job pays going through Redis.

Everything is real and local: a redis-server on a free port (append-only file on, fsync every
write), `canvas worker` processes of one thread each, and `canvas console --json` as the bot.

1. throughput: `--jobs` piped `/imagine` commands (`--steps` each, distinct seeds) with 1, then
   2 workers; images per second from the first answer to the last image. Goal: 2 workers at
   least 1.8 times 1 worker (each worker has its own core; the bot is mostly idle).
2. latency: `--rounds` jobs of one step sent one at a time (the next once the last image is
   out), through the bot's own engine and through Redis with one worker; the median time from
   the command to its image. The difference is what Redis costs a job. Goal: under 5 ms.

    python -m benchmarks.redis
    python -m benchmarks.redis --jobs 16 --rounds 10     # quicker
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from tests.redis_server import RedisServer

ROOT = Path(__file__).resolve().parent.parent


def config(folder: Path, redis_url: str = "", max_batch: int = 1) -> Path:
    settings = {"storage": {"db": "canvas.db", "images": "images"},
                "engine": {"device": "cpu", "max_batch": max_batch},
                "limits": {"max_queue": 1000}}
    if redis_url:
        settings["queue"] = {"url": redis_url, "local_engine": False}
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


def start_worker(config_path: Path, name: str) -> subprocess.Popen:
    log = (config_path.parent / f"{name}.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "bot", "worker", "--config", str(config_path), "--name", name],
        cwd=ROOT, stdout=log, stderr=log, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 180
    while "serving through Redis" not in (config_path.parent / f"{name}.log").read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"worker {name} did not start")
        time.sleep(0.1)
    return process


class Console:
    def __init__(self, config_path: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bot", "console", "--json", "--config", str(config_path)],
            cwd=config_path.parent, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            stderr=(config_path.parent / "bot.log").open("w"),
            env={**os.environ, "OMP_NUM_THREADS": "1"})

    def say(self, *lines: str) -> None:
        self.process.stdin.write("".join(line + "\n" for line in lines))
        self.process.stdin.flush()

    def next_image(self) -> tuple[float, dict]:
        while line := self.process.stdout.readline():
            record = json.loads(line)
            if record["type"] == "image":
                return time.perf_counter(), record
            if record["type"] == "error":
                raise RuntimeError(record)
        raise RuntimeError("the console stopped")

    def close(self) -> None:
        self.process.communicate("", timeout=600)


def throughput(folder: Path, server: RedisServer, workers: int, jobs: int, steps: int) -> float:
    path = config(folder, server.url)
    started = [start_worker(path, f"w{index}") for index in range(workers)]
    try:
        console = Console(path)
        console.say("/help")  # the bot is up once it answers
        console.process.stdout.readline()
        began = time.perf_counter()
        console.say(*[f"/imagine a red circle --steps {steps} --seed {seed}"
                      for seed in range(jobs)])
        done = [console.next_image()[0] for _ in range(jobs)]
        console.close()
        return jobs / (done[-1] - began)
    finally:
        for process in started:
            process.terminate()
            process.wait(30)


def latency(folder: Path, redis_url: str, rounds: int) -> float:
    path = config(folder, redis_url)
    worker = start_worker(path, "solo") if redis_url else None
    try:
        console = Console(path)
        times = []
        for seed in range(rounds + 2):  # the first two warm up
            sent = time.perf_counter()
            console.say(f"/imagine a blue square --steps 1 --seed {seed}")
            got, _ = console.next_image()
            times.append(got - sent)
        console.close()
        return statistics.median(times[2:])
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(30)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.redis")
    parser.add_argument("--jobs", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="canvas-redis-bench-"))
    server = RedisServer(folder / "redis").start()
    try:
        rates = {}
        for workers in (1, 2):
            run = folder / f"throughput-{workers}"
            run.mkdir()
            server.restart()
            rates[workers] = throughput(run, server, workers, args.jobs, args.steps)
            print(f"{workers} worker(s): {rates[workers]:.2f} images/s "
                  f"({args.jobs} jobs of {args.steps} steps)", flush=True)
        print(f"2 workers / 1 worker: {rates[2] / rates[1]:.2f} (goal: at least 1.8)")
        local_folder, redis_folder = folder / "latency-local", folder / "latency-redis"
        local_folder.mkdir()
        redis_folder.mkdir()
        local = latency(local_folder, "", args.rounds)
        through_redis = latency(redis_folder, server.url, args.rounds)
        extra = 1000 * (through_redis - local)
        print(f"one-step job, command to image, median of {args.rounds}: bot's own engine "
              f"{1000 * local:.1f} ms, through Redis {1000 * through_redis:.1f} ms: "
              f"{extra:+.1f} ms a job (goal: under 5 ms)")
        return 0 if rates[2] >= 1.8 * rates[1] and extra < 5 else 1
    finally:
        server.kill()


if __name__ == "__main__":
    sys.exit(main())
