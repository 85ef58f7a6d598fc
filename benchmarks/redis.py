"""Redis Streams against the bot's own engine, on this machine: images per second with 1 and 2
workers, and the extra time a job pays going through Redis.

Everything is real and local: a redis-server on a free port (append-only file on, synced to
disk every second as docker-compose.yml runs it, or with `--fsync always` at every write),
`canvas worker` processes of one thread each, and `canvas console --json` as the bot.

1. throughput: `--jobs` piped `/imagine` commands (`--steps` each, distinct seeds) with 1, then
   2 workers; images per second from the first answer to the last image. Goal: 2 workers at
   least 1.8 times 1 worker (each worker has its own core; the bot is mostly idle).
2. latency: `--rounds` jobs of one step sent one at a time (the next once the last image is
   out), through the bot's own engine and through Redis with one worker; the median time from
   the command to its image. Generation dominates it, so also:
3. the protocol alone: `--probes` jobs sent one at a time through the bot's end of Redis
   (RedisHub, an EngineHandle) to a worker's end (RedisLink) whose engine answers each job at
   once with a one-PNG result, against the same through the engine's own pipe (a child
   process that echoes). The difference in the median round trip is what Redis costs a job.
   Goal: under 5 ms.

    python -m benchmarks.redis
    python -m benchmarks.redis --jobs 16 --rounds 10     # quicker
    python -m benchmarks.redis --skip-probe              # parts 1 and 2
    python -m benchmarks.redis --only-latency --rounds 60 [--fsync always]
    python -m benchmarks.redis --device cuda --skip-probe   # two workers on one GPU vs one
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


DEVICE = "cpu"  # --device: where the engines draw (cuda: every worker on the one GPU)


def config(folder: Path, redis_url: str = "", max_batch: int = 1) -> Path:
    folder.mkdir(exist_ok=True)
    settings = {"storage": {"db": "canvas.db", "images": "images"},
                "engine": {"device": DEVICE, "max_batch": max_batch},
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


ECHO = """
import sys
from engine import protocol
for line in sys.stdin.buffer:
    job = protocol.decode(line)
    image = protocol.ImageBlob(sys.argv[1], 0, 64, 64)
    sys.stdout.buffer.write(protocol.encode(protocol.Result(job.job_id, (image,), 0.0, "base")))
    sys.stdout.buffer.flush()
"""


async def round_trips(handle, jobs: int) -> float:
    """Median seconds from handing the engine a job to its result arriving."""
    import asyncio

    from engine import protocol
    from engine.params import Params

    times = []
    for job_id in range(1, jobs + 1):
        began = time.perf_counter()
        await handle.submit(protocol.Job(job_id, Params(prompt="x", seed=job_id)))
        while not isinstance(await asyncio.wait_for(handle.events.get(), 30), protocol.Result):
            pass
        times.append(time.perf_counter() - began)
    return statistics.median(times[5:])


async def protocol_probe(folder: Path, redis_url: str, jobs: int) -> tuple[float, float]:
    """(through a pipe, through Redis): median round trip of a job answered at once."""
    import asyncio
    import queue
    import threading

    from engine import protocol
    from engine.blobs import LocalBlobs
    from engine.client import EngineHandle
    from engine.pool import EnginePool
    from engine.transport.redis import RedisHub
    from engine.transport.redis_worker import RedisLink

    blobs = LocalBlobs(folder / "bot-blobs")
    png = (ROOT / "engine" / "shapes" / "model" / "model_index.json").read_bytes()  # any bytes
    key = blobs.put(png, ".png")

    class Pipe:  # a child process that answers each job at once, as an engine's pipe would
        description = "echo"

        async def open(self) -> None:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-c", ECHO, key, stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE, cwd=ROOT, env={**os.environ,
                                                               "PYTHONPATH": str(ROOT)})
            self.ready = protocol.Ready("echo", "base", "cpu", "float32", max_batch=1)

        async def send(self, message) -> None:
            self.process.stdin.write(protocol.encode(message))
            await self.process.stdin.drain()

        async def receive(self):
            if self.ready is not None:
                ready, self.ready = self.ready, None
                return ready
            line = await self.process.stdout.readline()
            return protocol.decode(line) if line else None

        async def close(self, timeout: float) -> int | None:
            self.process.stdin.close()
            return await self.process.wait()

        async def kill(self) -> int | None:
            if self.process.returncode is None:
                self.process.kill()
            return await self.process.wait()

    piped = EngineHandle(Pipe())
    await piped.start()
    through_pipe = await round_trips(piped, jobs)
    await piped.stop()

    worker_blobs = LocalBlobs(folder / "worker-blobs")
    worker_blobs.put(png, ".png")
    link = RedisLink(redis_url, "probe", "cpu", worker_blobs, lease=10)
    inbox: queue.Queue = queue.Queue()
    link.start(inbox)

    def echo() -> None:
        while not isinstance(job := inbox.get(), protocol.Shutdown):
            worker_blobs.put(png, ".png")  # the worker deletes a result's file once sent
            link.send(protocol.Result(job.job_id, (protocol.ImageBlob(key, 0, 64, 64),),
                                      0.0, "base"))

    threading.Thread(target=echo, daemon=True).start()
    link.send(protocol.Ready("echo", "base", "cpu", "float32", max_batch=1))
    pool = EnginePool([], RedisHub(redis_url, blobs, lease=10))
    joined = asyncio.get_running_loop().create_future()
    pool.on_join = joined.set_result
    await pool.start()
    handle = await asyncio.wait_for(joined, 30)
    said, relay = handle.events, asyncio.Queue()

    async def settled() -> None:  # the bot settles each event once stored; here at once
        while True:
            event = await said.get()
            pool.settle(event)
            await relay.put(event)

    task = asyncio.create_task(settled())
    handle.events = relay
    try:
        through_redis = await round_trips(handle, jobs)
    finally:
        task.cancel()
        inbox.put(protocol.Shutdown())
        link.stop()
        await pool.stop()
    return through_pipe, through_redis


def probe(folder: Path, server: RedisServer, probes: int) -> float:
    """Part 3, printed: what Redis adds to a job's round trip, in seconds."""
    import asyncio

    pipe, through_redis = asyncio.run(protocol_probe(folder, server.url, probes))
    print(f"a job answered at once, median round trip of {probes}: engine pipe "
          f"{1000 * pipe:.2f} ms, Redis {1000 * through_redis:.2f} ms: "
          f"{1000 * (through_redis - pipe):+.2f} ms a job (goal: under 5 ms)", flush=True)
    return through_redis - pipe


def latencies(folder: Path, server: RedisServer, rounds: int) -> float:
    """Part 2: the extra milliseconds a one-step job pays through Redis. Both bots run side
    by side, idle but for the job at hand, and take turns, so a change in the machine's speed
    weighs on both alike; the figure is the median of the paired differences."""
    local_path = config(folder / "latency-local")
    redis_path = config(folder / "latency-redis", server.url)
    worker = start_worker(redis_path, "solo")
    try:
        consoles = {"local": Console(local_path), "redis": Console(redis_path)}
        times: dict[str, list[float]] = {name: [] for name in consoles}
        for seed in range(rounds + 2):  # the first two warm up
            for name, console in consoles.items():
                sent = time.perf_counter()
                console.say(f"/imagine a blue square --steps 1 --seed {seed}")
                got, _ = console.next_image()
                times[name].append(got - sent)
        for console in consoles.values():
            console.close()
    finally:
        worker.terminate()
        worker.wait(30)
    local, remote = (times[name][2:] for name in ("local", "redis"))
    extra = 1000 * statistics.median(b - a for a, b in zip(local, remote, strict=True))
    print(f"one-step job, command to image, {rounds} rounds taking turns: bot's own engine "
          f"{1000 * statistics.median(local):.1f} ms, through Redis (appendfsync "
          f"{server.fsync}) {1000 * statistics.median(remote):.1f} ms (medians): "
          f"{extra:+.1f} ms a job, the median difference (goal: under 5 ms)", flush=True)
    return extra


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.redis")
    parser.add_argument("--jobs", type=int, default=48)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--probes", type=int, default=200)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="where the engines draw; cuda: 1 and 2 workers on the one GPU")
    parser.add_argument("--only-probe", action="store_true", help="just part 3")
    parser.add_argument("--skip-probe", action="store_true", help="parts 1 and 2 only")
    parser.add_argument("--only-latency", action="store_true", help="just part 2")
    parser.add_argument("--fsync", choices=("always", "everysec"), default="everysec",
                        help="Redis' appendfsync: everysec, as docker-compose.yml runs it "
                             "(default), or always, a disk sync at every write")
    args = parser.parse_args()
    global DEVICE
    DEVICE = args.device
    folder = Path(tempfile.mkdtemp(prefix="canvas-redis-bench-"))
    server = RedisServer(folder / "redis", args.fsync).start()
    try:
        if args.only_probe:
            return 0 if probe(folder, server, args.probes) < 0.005 else 1
        if args.only_latency:
            latencies(folder, server, args.rounds)
            return 0
        rates = {}
        for workers in (1, 2):
            run = folder / f"throughput-{workers}"
            run.mkdir()
            server.restart()
            rates[workers] = throughput(run, server, workers, args.jobs, args.steps)
            print(f"{workers} worker(s): {rates[workers]:.2f} images/s "
                  f"({args.jobs} jobs of {args.steps} steps)", flush=True)
        print(f"2 workers / 1 worker: {rates[2] / rates[1]:.2f} (goal: at least 1.8)")
        latencies(folder, server, args.rounds)
        # Last: the probe's own Redis clients must not share the cores with the parts above.
        protocol = probe(folder, server, args.probes) if not args.skip_probe else 0.0
        return 0 if rates[2] >= 1.8 * rates[1] and protocol < 0.005 else 1
    finally:
        server.kill()


if __name__ == "__main__":
    sys.exit(main())
