"""Load test through Telegram: many users at once, one heavy user against a light one.

The fake Telegram Bot API server of the tests (tests/fake_telegram.py) runs in this process on
127.0.0.1; the bot runs as its own process (`python -m bot run`) pointed at it through
`telegram.api_base_url`, on the bundled model, with its engine process as usual. Nothing else
is reached.

Three parts, one bot process:

1. fairness, alone: a light user sends one `/imagine` every few seconds; time from the
   command to its photo.
2. fairness, flooded: the same while a heavy user keeps as many jobs waiting as the per-user
   limit allows (a new one as soon as one is answered), each a bigger job than the light
   user's.
3. load: `--users` users send `--commands` `/imagine ... --steps 4` each (`--steps`),
   spread over `--spread` seconds, most in private chats and a few in groups. Every command
   must get its photo or a clear refusal ("busy", or the per-user limit), exactly one photo
   per command, and nothing may be left unanswered after `--timeout` seconds.

The RSS of the bot process and of its engine child is sampled every 0.5 s from /proc
throughout; the peaks are reported per part.

With `--redis-workers N` the bot has no engine of its own: a real redis-server is started
(tests/redis_server.py: append-only, a free port of 127.0.0.1), the bot gets a `queue:` section
(`local_engine: false`, `lease: --lease`) and N `python -m bot worker --name w<i>` processes
serve its jobs through Redis Streams. The fairness parts are then skipped unless
`--light-commands` is given (> 0); the engine column of the memory table counts the workers.
`--kill-worker-at S` SIGKILLs worker w0 S seconds into the load part: the bot takes back its
jobs once its lease lapses and the other workers must still answer every command exactly
once. The summary says how many jobs each worker did (the `worker` column of the bot's jobs).

    python -m benchmarks.load                  # 200 users x 3 commands
    python -m benchmarks.load --users 20       # a quick run
    python -m benchmarks.load --redis-workers 2 --kill-worker-at 20

Exit status 0 when every command was answered exactly once, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import re
import signal
import sqlite3
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests import fake_telegram as tg

ROOT = Path(__file__).resolve().parent.parent
LIGHT = "/imagine a red circle on a blue background --steps 4"
HEAVY = "/imagine a green square on a yellow background"
PROMPTS = [f"/imagine a {colour} {shape} on a {background} background"
           for colour, shape, background in [
               ("red", "circle", "blue"), ("yellow", "square", "green"),
               ("blue", "triangle", "white"), ("green", "circle", "black"),
               ("white", "square", "red"), ("black", "triangle", "yellow")]]
QUEUED = re.compile(r"Queued job #(\d+)")
BUSY = "busy"
LIMIT = "the limit is"
FAILED = re.compile(r"job #\d+ (failed|was cancelled)")

# ---- commands and what the bot answered to each ------------------------------------------


@dataclass
class Command:
    part: str
    user_id: int
    chat_id: int
    message_id: int
    sent_at: float
    status_id: int | None = None
    texts: list[str] = field(default_factory=list)
    deliveries: list[float] = field(default_factory=list)  # sendPhoto / sendMediaGroup times

    @property
    def outcome(self) -> str:
        if self.deliveries:
            return "photo" if len(self.deliveries) == 1 else "duplicate photos"
        if any(BUSY in text for text in self.texts):
            return "busy"
        if any(LIMIT in text for text in self.texts):
            return "per-user limit"
        if any(FAILED.search(text) for text in self.texts):
            return "failed"
        if any(QUEUED.search(text) for text in self.texts):
            return "unanswered (queued, no photo)"
        return "unanswered (no reply)" if not self.texts else "unanswered (other reply)"

    @property
    def settled(self) -> bool:
        return not self.outcome.startswith("unanswered")

    @property
    def latency(self) -> float | None:
        return self.deliveries[0] - self.sent_at if self.deliveries else None


class LoadTelegram(tg.FakeTelegram):
    """The test fake, told about many chats, and matching each call the bot makes to the
    command it answers instead of keeping every call (and every PNG) in memory."""

    def __init__(self) -> None:
        super().__init__()
        self.groups: dict[int, dict[str, Any]] = {}
        self.commands: dict[tuple[int, int], Command] = {}
        self.by_status: dict[tuple[int, int], Command] = {}
        self.methods: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.stray: list[str] = []  # texts the bot sent that answer no known command

    async def send(self, part: str, user_id: int, text: str, group: int | None = None
                   ) -> Command:
        user = {"id": user_id, "is_bot": False, "first_name": f"User{user_id}"}
        if group is None:
            chat = {"id": user_id, "type": "private", "first_name": f"User{user_id}"}
        else:
            chat = self.groups.setdefault(
                group, {"id": group, "type": "supergroup", "title": f"Group {group}"})
        update = tg.message(text, user=user, chat=chat)
        body = update["message"]
        command = Command(part, user_id, chat["id"], body["message_id"], time.monotonic())
        self.commands[(chat["id"], body["message_id"])] = command
        await self.push(update)
        return command

    async def _record(self, call: tg.Call) -> None:
        self.methods[call.method] += 1
        if call.error:
            self.errors[f"{call.method}: {call.error}"] += 1
        else:
            self._match(call)
        async with self._changed:
            self._changed.notify_all()

    def _match(self, call: tg.Call) -> None:
        chat = call.get("chat_id")
        if chat is None:
            return
        chat = int(chat)
        replied = call.get("reply_parameters")
        command = None
        if isinstance(replied, dict):
            command = self.commands.get((chat, int(replied.get("message_id", 0))))
        if call.method == "sendMessage":
            if command is not None and command.status_id is None:
                command.status_id = call.result["message_id"]
                self.by_status[(chat, command.status_id)] = command
                command.texts.append(str(call["text"]))
            elif command is not None:
                command.texts.append(str(call["text"]))
            else:
                self.stray.append(str(call["text"]))
        elif call.method == "editMessageText":
            command = self.by_status.get((chat, int(call["message_id"])))
            if command is not None:
                command.texts.append(str(call["text"]))
        elif call.method in ("sendPhoto", "sendMediaGroup"):
            if command is not None:
                command.deliveries.append(call.at)
            else:
                self.stray.append(f"{call.method} replying to nothing known")

    def _photo(self, value: Any, files: dict[str, bytes]) -> list[dict[str, Any]]:
        # Check that a PNG arrived, but do not keep it.
        data = files[str(value).removeprefix("attach://")]
        if not data.startswith(b"\x89PNG"):
            raise ValueError("not a PNG")
        file_id = f"sent-{next(self._file_ids)}"
        return [{"file_id": file_id, "file_unique_id": f"u{file_id}",
                 "file_size": len(data), "width": 256, "height": 256}]

    def _new_message(self, params: dict, **content: Any) -> dict[str, Any]:
        message = super()._new_message(params, **content)
        chat_id = int(params["chat_id"])
        if chat_id in self.groups:
            message["chat"] = self.groups[chat_id]
        if "photo" in content:  # nothing edits or deletes photos here: do not keep them
            self.messages.pop((chat_id, message["message_id"]), None)
        return message

    async def until(self, done: Callable[[], bool], deadline: float) -> bool:
        async with self._changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait_for(done),
                                       max(0.0, deadline - time.monotonic()))
        return done()


# ---- the bot process and its memory ------------------------------------------------------


def rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            found += [int(child) for child in (task / "children").read_text().split()]
    return found


def descendants(pid: int) -> list[int]:
    found, todo = [], children(pid)
    while todo:
        child = todo.pop()
        found.append(child)
        todo += children(child)
    return found


@dataclass
class Memory:
    """RSS samples (time, bot kB, engine and its children kB)."""

    pid: int
    samples: list[tuple[float, int, int]] = field(default_factory=list)
    others: Callable[[], list[int]] = list  # more engine processes (remote workers)

    async def run(self, every: float = 0.5) -> None:
        while True:
            bot = rss_kb(self.pid)
            engine = sum(rss_kb(child) for child in descendants(self.pid))
            engine += sum(rss_kb(other) + sum(rss_kb(child) for child in descendants(other))
                          for other in self.others())
            self.samples.append((time.monotonic(), bot, engine))
            await asyncio.sleep(every)

    def peaks(self, start: float = 0.0, end: float = float("inf")) -> tuple[int, int, int]:
        chosen = [s for s in self.samples if start <= s[0] <= end] or [(0.0, 0, 0)]
        return (max(s[1] for s in chosen), max(s[2] for s in chosen),
                max(s[1] + s[2] for s in chosen))

    def last(self) -> tuple[int, int]:
        return self.samples[-1][1:] if self.samples else (0, 0)


class Bot:
    """`python -m bot run` with a config of our own, in a folder of its own."""

    def __init__(self, folder: Path, fake: LoadTelegram, max_queue: int, per_user: int,
                 max_batch: int, queue: dict[str, Any] | None = None) -> None:
        self.folder = folder
        self.log = folder / "bot.log"
        self.config = folder / "config.yaml"
        config: dict[str, Any] = {
            "engine": {"model": "bundled:shapes", "device": "cpu", "max_batch": max_batch},
            "storage": {"db": "canvas.db", "images": "images"},
            "telegram": {"token": fake.token, "api_base_url": fake.url},
            "limits": {"max_queue": max_queue, "max_waiting_per_user": per_user},
        }
        if queue is not None:
            config["queue"] = queue
        self.config.write_text(yaml.safe_dump(config))
        self.process: asyncio.subprocess.Process | None = None

    async def start(self, timeout: float = 180) -> int:
        with self.log.open("wb") as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bot", "run", "--config", str(self.config),
                cwd=ROOT, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while "serving on" not in self.log_text():
            if self.process.returncode is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the bot did not start; its log:\n{self.tail()}")
            await asyncio.sleep(0.2)
        return self.process.pid

    async def stop(self, timeout: float = 60) -> int | None:
        if self.process is None or self.process.returncode is not None:
            return self.process.returncode if self.process else None
        self.process.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(self.process.wait(), timeout)
        except TimeoutError:
            print(f"the bot did not stop within {timeout:.0f} s of SIGTERM; killing it")
            self.process.kill()
            await self.process.wait()
            return None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def problems(self) -> list[str]:
        return [line for line in self.log_text().splitlines()
                if " ERROR " in line or " CRITICAL " in line or "Traceback" in line]


class Workers:
    """`python -m bot worker --name w<i>` processes serving the bot through Redis."""

    def __init__(self, folder: Path, config: Path) -> None:
        self.folder = folder
        self.config = config
        self.processes: dict[str, asyncio.subprocess.Process] = {}
        self.killed: list[str] = []

    def log(self, name: str) -> Path:
        return self.folder / f"{name}.log"

    def log_text(self, name: str) -> str:
        path = self.log(name)
        return path.read_text(errors="replace") if path.exists() else ""

    def pids(self) -> list[int]:
        return [p.pid for p in self.processes.values() if p.returncode is None]

    async def start(self, count: int, timeout: float = 180) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        for index in range(count):
            name = f"w{index}"
            with self.log(name).open("wb") as log:
                self.processes[name] = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "bot", "worker", "--config", str(self.config),
                    "--name", name, cwd=ROOT, env=env, stdin=asyncio.subprocess.DEVNULL,
                    stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        for name, process in self.processes.items():
            while "serving through Redis" not in self.log_text(name):
                if process.returncode is not None or time.monotonic() > deadline:
                    tail = "\n".join(self.log_text(name).splitlines()[-30:])
                    raise RuntimeError(f"worker {name} did not come online (exit status "
                                       f"{process.returncode}); its log:\n{tail}")
                await asyncio.sleep(0.2)

    def kill(self, name: str) -> None:
        process = self.processes.get(name)
        if process is not None and process.returncode is None:
            process.kill()
            self.killed.append(name)

    async def stop(self, timeout: float = 30) -> dict[str, int | None]:
        """SIGTERM to each one still running, then SIGKILL after `timeout` seconds; the exit
        status of each (None: it had to be killed)."""
        for process in self.processes.values():
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
        codes: dict[str, int | None] = {}
        deadline = time.monotonic() + timeout
        for name, process in self.processes.items():
            try:
                codes[name] = await asyncio.wait_for(
                    process.wait(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                print(f"worker {name} did not stop within {timeout:.0f} s of SIGTERM; "
                      "killing it")
                process.kill()
                await process.wait()
                codes[name] = None
        return codes

    def problems(self, name: str) -> list[str]:
        return [line for line in self.log_text(name).splitlines()
                if " ERROR " in line or " CRITICAL " in line or "Traceback" in line]


async def kill_later(workers: Workers, name: str, after: float) -> None:
    await asyncio.sleep(after)
    if name in workers.processes and workers.processes[name].returncode is None:
        print(f"  {after:g} s into the load: SIGKILL to worker {name} "
              f"(pid {workers.processes[name].pid})", flush=True)
        workers.kill(name)


def jobs_by_worker(db: Path) -> list[tuple[str, str, int]]:
    """(worker, status, jobs) from the bot's database; worker '' is the bot's own engine."""
    if not db.exists():
        return []
    with contextlib.closing(sqlite3.connect(db)) as link:
        return link.execute("SELECT worker, status, COUNT(*) FROM jobs GROUP BY worker, status"
                            " ORDER BY worker, status").fetchall()


# ---- the parts ---------------------------------------------------------------------------


@dataclass
class Fairness:
    light: list[Command]
    heavy: list[Command]
    settled: bool

    def latencies(self) -> list[float]:
        return [c.latency for c in self.light if c.latency is not None]


async def fairness(fake: LoadTelegram, args: argparse.Namespace, flood: bool) -> Fairness:
    """A light user's commands, with or without a heavy user flooding meanwhile."""
    light_user, heavy_user = 50_001, 50_002
    light: list[Command] = []
    heavy: list[Command] = []
    stop = asyncio.Event()

    async def heavy_loop() -> None:
        while not stop.is_set():
            waiting = sum(1 for c in heavy if not c.settled)
            if waiting < args.per_user:
                heavy.append(await fake.send("heavy", heavy_user, f"{HEAVY} {args.heavy_args}"))
                continue
            await fake.until(lambda: stop.is_set() or sum(
                1 for c in heavy if not c.settled) < args.per_user, time.monotonic() + 1)

    flooding = asyncio.create_task(heavy_loop()) if flood else None
    if flooding:
        await asyncio.sleep(args.light_interval)  # let the heavy user fill the queue first
    for _ in range(args.light_commands):
        light.append(await fake.send("light", light_user, LIGHT))
        await asyncio.sleep(args.light_interval)
    deadline = time.monotonic() + args.timeout
    settled = await fake.until(lambda: all(c.settled for c in light), deadline)
    stop.set()
    if flooding:
        async with fake._changed:
            fake._changed.notify_all()
        await flooding
    settled &= await fake.until(lambda: all(c.settled for c in heavy), deadline)
    return Fairness(light, heavy, settled)


async def load(fake: LoadTelegram, args: argparse.Namespace) -> tuple[list[Command], float]:
    """`args.users` users, `args.commands` commands each, at random moments in `args.spread`
    seconds; the first `args.groups * args.group_users` users talk in groups."""
    rng = random.Random(args.seed)
    group_of: dict[int, int] = {}
    for index in range(min(args.users, args.groups * args.group_users)):
        group_of[100_000 + index] = -1_000_000 - index % args.groups
    plan: list[tuple[float, int, int]] = []  # (when, user, nth command)
    for index in range(args.users):
        user = 100_000 + index
        moments = sorted(rng.uniform(0, args.spread) for _ in range(args.commands))
        plan += [(moment, user, nth) for nth, moment in enumerate(moments)]
    plan.sort()
    sent: list[Command] = []
    start = time.monotonic()
    for moment, user, nth in plan:
        await asyncio.sleep(max(0.0, start + moment - time.monotonic()))
        prompt = PROMPTS[(user + nth) % len(PROMPTS)]
        sent.append(await fake.send("load", user, f"{prompt} --steps {args.steps}",
                                    group_of.get(user)))
    await fake.until(lambda: all(c.settled for c in sent), start + args.timeout)
    return sent, time.monotonic() - start


# ---- report ------------------------------------------------------------------------------


def mb(kb: int) -> str:
    return f"{kb / 1024:.0f} MB"


def seconds(values: list[float], which: Callable[[list[float]], float]) -> str:
    return f"{which(values):.2f} s" if values else "-"


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]


def table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
             for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def outcomes(commands: list[Command]) -> Counter[str]:
    return Counter(c.outcome for c in commands)


@dataclass
class Summary:
    ok: bool  # every command answered exactly once, no errors logged, a clean stop
    load: Counter[str]  # outcome -> commands, for the load part
    light: dict[str, list[float]]  # fairness run -> the light user's times to photo
    peak_kb: tuple[int, int, int]  # RSS peaks: bot, engine, both together


async def main_async(args: argparse.Namespace) -> Summary:
    fake = LoadTelegram()
    await fake.start()
    folder = Path(tempfile.mkdtemp(prefix="canvas-load-"))
    redis = None
    queue: dict[str, Any] | None = None
    if args.redis_workers > 0:
        from tests.redis_server import RedisServer

        redis = RedisServer(folder / "redis").start()
        queue = {"url": redis.url, "local_engine": False, "lease": args.lease}
        print(f"redis-server on {redis.url} (pid {redis.process.pid})")
    bot = Bot(folder, fake, args.max_queue, args.per_user, args.max_batch, queue)
    workers = Workers(folder, bot.config)
    marks: dict[str, tuple[float, float]] = {}
    ok = True
    memory: Memory | None = None
    sampler: asyncio.Task | None = None
    killer: asyncio.Task | None = None
    worker_codes: dict[str, int | None] = {}
    try:
        began = time.monotonic()
        pid = await bot.start()
        print(f"bot started in {time.monotonic() - began:.1f} s (pid {pid}); data in {folder}")
        if args.redis_workers > 0:
            began = time.monotonic()
            await workers.start(args.redis_workers)
            print(f"{args.redis_workers} workers online through Redis in "
                  f"{time.monotonic() - began:.1f} s (pids {workers.pids()})")
        memory = Memory(pid, others=workers.pids)
        sampler = asyncio.create_task(memory.run())
        await asyncio.sleep(1)
        idle = memory.last()

        results: dict[str, Fairness] = {}
        for name, flood in (("alone", False), ("heavy user flooding", True)):
            if args.light_commands <= 0:
                break
            t0 = time.monotonic()
            print(f"fairness, {name}: {args.light_commands} light commands, one every "
                  f"{args.light_interval:g} s ...", flush=True)
            results[name] = await fairness(fake, args, flood)
            marks[f"fairness, {name}"] = (t0, time.monotonic())
            ok &= results[name].settled

        t0 = time.monotonic()
        print(f"load: {args.users} users x {args.commands} commands over {args.spread:g} s "
              f"({min(args.users, args.groups * args.group_users)} of them in "
              f"{args.groups} groups) ...", flush=True)
        if args.redis_workers > 0 and args.kill_worker_at is not None:
            killer = asyncio.create_task(kill_later(workers, "w0", args.kill_worker_at))
        sent, took = await load(fake, args)
        marks["load"] = (t0, time.monotonic())
        after_load = memory.last()
        await asyncio.sleep(1)
    finally:
        for task in (sampler, killer):
            if task:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        try:
            code = await bot.stop()
            if workers.processes:
                worker_codes = await workers.stop()
        finally:
            if redis is not None:
                redis.kill()
            await fake.stop()

    # -- what every command got
    counts = outcomes(sent)
    unanswered = [c for c in sent if not c.settled]
    duplicates = [c for c in sent if len(c.deliveries) > 1]
    print()
    print(f"LOAD: {len(sent)} commands from {args.users} users, all sent within "
          f"{args.spread:g} s; finished after {took:.1f} s")
    rows = [["outcome", "commands"]] + [[name, str(n)] for name, n in counts.most_common()]
    print(table(rows))
    private = [c for c in sent if c.chat_id > 0]
    groups = [c for c in sent if c.chat_id < 0]
    for where, chosen in (("all chats", sent), ("private chats", private),
                          ("group chats", groups)):
        times = [c.latency for c in chosen if c.latency is not None]
        print(f"time to photo, {where} ({len(times)} photos): median "
              f"{seconds(times, statistics.median)}, p95 {seconds(times, p95)}, "
              f"worst {seconds(times, max)}")
    if unanswered or duplicates:
        ok = False
        for c in (unanswered + duplicates)[:20]:
            print(f"  PROBLEM: user {c.user_id} chat {c.chat_id} message {c.message_id}: "
                  f"{c.outcome}; replies {c.texts}")

    # -- fairness
    if results:
        print()
        print("FAIRNESS: light user's time from command to photo "
              f"({args.light_commands} commands, one every {args.light_interval:g} s; "
              f"heavy user: `{args.heavy_args}`, keeps {args.per_user} waiting)")
        rows = [["light user", "median", "worst", "answered", "heavy jobs done"]]
        for name, result in results.items():
            times = result.latencies()
            rows.append([name, seconds(times, statistics.median), seconds(times, max),
                         f"{len(times)}/{len(result.light)}",
                         str(sum(1 for c in result.heavy if c.deliveries)) if result.heavy
                         else "-"])
            got = outcomes(result.light + result.heavy)
            if set(got) - {"photo", "busy", "per-user limit"}:
                ok = False
                print(f"  PROBLEM in {name}: {dict(got)}")
            elif set(got) != {"photo"}:
                print(f"  ({name}: light and heavy commands together got {dict(got)})")
        print(table(rows))

    # -- memory
    if memory is not None:
        print()
        print(f"MEMORY (RSS, sampled every 0.5 s; {len(memory.samples)} samples)")
        rows = [["part", "bot peak", "engine peak", "together peak"]]
        rows.append(["idle after start", mb(idle[0]), mb(idle[1]), mb(sum(idle))])
        for name, (start, end) in marks.items():
            rows.append([name, *map(mb, memory.peaks(start, end))])
        rows.append(["whole run", *map(mb, memory.peaks())])
        rows.append(["end of load", mb(after_load[0]), mb(after_load[1]), mb(sum(after_load))])
        print(table(rows))

    # -- the workers
    if args.redis_workers > 0:
        print()
        killed = (f"{', '.join(workers.killed)} killed (SIGKILL) {args.kill_worker_at:g} s "
                  "into the load" if workers.killed else "none killed")
        if args.kill_worker_at is not None and not workers.killed:
            killed += f" (the load ended before {args.kill_worker_at:g} s)"
        print(f"WORKERS: {args.redis_workers} through Redis (lease {args.lease:g} s); {killed}")
        done: Counter[str] = Counter()
        other: dict[str, Counter[str]] = {}
        for worker, status, n in jobs_by_worker(folder / "canvas.db"):
            if status == "done":
                done[worker] += n
            else:
                other.setdefault(worker, Counter())[status] += n
        rows = [["worker", "jobs done", "other jobs", "exit status"]]
        for name in sorted(set(workers.processes) | set(done) | set(other)):
            label = name or "(the bot's own engine)"
            status = "-" if name not in worker_codes else (
                "SIGKILL (by us)" if name in workers.killed else str(worker_codes[name]))
            rows.append([label, str(done[name]),
                         ", ".join(f"{s}: {n}" for s, n in other.get(name, {}).items()) or "-",
                         status])
        print(table(rows))
        for name in workers.processes:
            if name in workers.killed:
                continue
            if worker_codes.get(name) != 0:
                ok = False
                print(f"  PROBLEM: worker {name} exit status after SIGTERM: "
                      f"{worker_codes.get(name)}")
            problems = workers.problems(name)
            if problems:
                ok = False
                print(f"  errors in worker {name}'s log ({len(problems)}), first ones:")
                print("\n".join("    " + line for line in problems[:10]))

    # -- the bot side
    print()
    print(f"Telegram calls: {dict(fake.methods.most_common())}")
    if fake.errors:
        print(f"calls the fake refused: {dict(fake.errors)}")
    if fake.stray:
        print(f"texts not matched to a command: {len(fake.stray)}, e.g. {fake.stray[:3]}")
    problems = bot.problems()
    if problems:
        ok = False
        print(f"errors in the bot's log ({len(problems)}), first ones:")
        print("\n".join("  " + line for line in problems[:10]))
    print(f"bot exit status after SIGTERM: {code}")
    ok &= code == 0
    print("RESULT:", "every command answered once" if ok else "PROBLEMS (see above)")
    if not args.keep and ok:
        import shutil
        shutil.rmtree(folder, ignore_errors=True)
    return Summary(ok, counts, {name: r.latencies() for name, r in results.items()},
                   memory.peaks() if memory else (0, 0, 0))


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.load", description=__doc__
                                     .split("\n\n")[0])
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--commands", type=int, default=3, help="commands per user")
    parser.add_argument("--steps", type=int, default=4, help="--steps of the load commands")
    parser.add_argument("--spread", type=float, default=30,
                        help="seconds over which the load commands are sent")
    parser.add_argument("--groups", type=int, default=3, help="group chats in the load")
    parser.add_argument("--group-users", type=int, default=3,
                        help="users in each group (the rest talk in private chats); Telegram "
                             "allows a bot 20 messages a minute in a group")
    parser.add_argument("--max-queue", type=int, default=100, help="limits.max_queue")
    parser.add_argument("--per-user", type=int, default=3, help="limits.max_waiting_per_user")
    parser.add_argument("--max-batch", type=int, default=4, help="engine.max_batch")
    parser.add_argument("--light-commands", type=int, default=None,
                        help="the light user's commands in each fairness run (0: skip; "
                             "default 10, or 0 with --redis-workers)")
    parser.add_argument("--light-interval", type=float, default=3.0)
    parser.add_argument("--heavy-args", default="--steps 20 --n 4",
                        help="options of the heavy user's /imagine")
    parser.add_argument("--timeout", type=float, default=600,
                        help="seconds each part may take before what is left counts as "
                             "unanswered")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the bot's folder (log, db)")
    parser.add_argument("--redis-workers", type=int, default=0, metavar="N",
                        help="serve the jobs through a real redis-server and N `canvas worker` "
                             "processes instead of the bot's own engine (0: the bot's engine)")
    parser.add_argument("--lease", type=float, default=3.0,
                        help="queue.lease with --redis-workers: seconds before a silent "
                             "worker's jobs are taken back")
    parser.add_argument("--kill-worker-at", type=float, default=None, metavar="SECONDS",
                        help="with --redis-workers: SIGKILL worker w0 this many seconds into "
                             "the load part")
    args = parser.parse_args(argv)
    if args.redis_workers < 0:
        parser.error("--redis-workers must be 0 or more")
    if args.kill_worker_at is not None and args.redis_workers <= 0:
        parser.error("--kill-worker-at needs --redis-workers")
    if args.light_commands is None:
        args.light_commands = 0 if args.redis_workers > 0 else 10
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    return 0 if asyncio.run(main_async(args)).ok else 1


if __name__ == "__main__":
    sys.exit(main())
