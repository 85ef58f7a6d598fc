"""What the bot costs on top of diffusers, on the bundled model on this machine.

    python -m benchmarks.performance [overhead] [throughput] [startup]

- overhead: one /imagine from the command reaching the service to the PNG handed to the
  adapter, against a direct StableDiffusionPipeline call with the same model, prompt, seed,
  steps, guidance and size, both warm, alternating; with the split from the job's timestamps.
- throughput: 1, 4 and 8 users sending /imagine at once, batching on (max_batch 4) and off
  (max_batch 1): images per second and each command's latency (p50, p95).
- startup: `canvas run` (the console, no tokens) from start to the first command accepted and
  to the first image; peak resident memory of the bot process, of its engine, and of a
  process that only makes the same image with diffusers.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.learning import USER, Experiment
from bot import commands as cmd
from bot.store import JobRow

PROMPT = "a red circle on a blue background"
DIRECT = """
import resource, sys, torch
from diffusers import StableDiffusionPipeline
from engine.shapes import MODEL_DIR
torch.set_num_threads(max(1, (__import__("os").cpu_count() or 2) - 1))
pipe = StableDiffusionPipeline.from_pretrained(MODEL_DIR)
pipe.set_progress_bar_config(disable=True)
pipe("a red circle", num_inference_steps=20, guidance_scale=5.0, width=64, height=64,
     generator=torch.Generator("cpu").manual_seed(1))
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
"""


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


async def timed_imagine(bot: Experiment, seed: int) -> tuple[float, JobRow]:
    began = time.perf_counter()
    reply = await bot.service.handle(USER, cmd.parse(f"/imagine {PROMPT} --seed {seed}"))
    await bot.collector.future(reply.job_id)
    elapsed = time.perf_counter() - began
    return elapsed, await bot.store.get_job(reply.job_id)


async def overhead(rounds: int) -> None:
    import torch
    from diffusers import StableDiffusionPipeline

    from engine.shapes import MODEL_DIR

    torch.set_num_threads(max(1, (os.cpu_count() or 2) - 1))  # as the engine does
    direct = StableDiffusionPipeline.from_pretrained(MODEL_DIR)
    direct.set_progress_bar_config(disable=True)

    def call(seed: int) -> float:
        began = time.perf_counter()
        direct(PROMPT, num_inference_steps=20, guidance_scale=5.0, width=64, height=64,
               generator=torch.Generator("cpu").manual_seed(seed))
        return time.perf_counter() - began

    with tempfile.TemporaryDirectory() as folder:
        bot = await Experiment.start(Path(folder))
        try:
            for seed in range(3):  # warm both
                call(seed)
                await timed_imagine(bot, seed)
            ours, theirs, jobs = [], [], []
            for seed in range(100, 100 + rounds):
                theirs.append(await asyncio.to_thread(call, seed))
                elapsed, job = await timed_imagine(bot, seed)
                ours.append(elapsed)
                jobs.append(job)
        finally:
            await bot.stop()
    ratio = statistics.median(ours) / statistics.median(theirs)
    print(f"OVERHEAD ({rounds} rounds, medians, 64x64, 20 steps)")
    print(f"  direct diffusers call      {statistics.median(theirs) * 1000:7.1f} ms")
    print(f"  command -> PNG, via bot    {statistics.median(ours) * 1000:7.1f} ms   "
          f"ratio {ratio:.3f}")
    split = {
        "queue wait (stored -> engine starts)": [j.started_at - j.queued_at for j in jobs],
        "engine (generate, PNG encode+write)": [j.engine_seconds for j in jobs],
        "engine -> result stored": [j.finished_at - j.started_at - j.engine_seconds
                                    for j in jobs],
    }
    for name, values in split.items():
        print(f"  {name:36} {statistics.median(values) * 1000:7.1f} ms")
    parse = min(_parse_time() for _ in range(5))
    print(f"  {'parse one command':36} {parse * 1000:7.3f} ms")


def _parse_time() -> float:
    began = time.perf_counter()
    for _ in range(1000):
        cmd.parse(f"/imagine {PROMPT} --seed 5 --steps 20 --ar 16:9")
    return (time.perf_counter() - began) / 1000


async def throughput(per_user: int) -> None:
    print(f"THROUGHPUT ({per_user} commands per user, sent at once, 64x64, 20 steps)")
    print(f"  {'users':>5} {'batching':>9} {'images/s':>9} {'p50':>8} {'p95':>8}")
    for max_batch, label in ((1, "off"), (4, "on")):
        with tempfile.TemporaryDirectory() as folder:
            bot = await Experiment.start(Path(folder), max_batch=max_batch)
            try:
                await timed_imagine(bot, 0)  # warm
                for users in (1, 4, 8):
                    began = time.perf_counter()
                    latencies = await asyncio.gather(*(
                        timed_imagine(bot, 1000 * users + i) for i in range(users * per_user)))
                    wall = time.perf_counter() - began
                    seconds = [elapsed for elapsed, _ in latencies]
                    print(f"  {users:>5} {label:>9} {len(seconds) / wall:9.2f} "
                          f"{percentile(seconds, 0.5):7.2f}s {percentile(seconds, 0.95):7.2f}s")
            finally:
                await bot.stop()


def startup() -> None:
    with tempfile.TemporaryDirectory() as folder:
        config = Path(folder) / "config.yaml"
        config.write_text("storage:\n  db: canvas.db\n  images: images\n")
        began = time.perf_counter()
        bot = subprocess.Popen([sys.executable, "-m", "bot", "run", "--config", str(config)],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True)
        bot.stdin.write("/imagine a red circle --seed 1\n")
        bot.stdin.flush()
        accepted = first_image = None
        peaks = {"bot": 0, "engine": 0}
        while first_image is None:
            line = bot.stdout.readline()
            if not line:
                break
            _sample(bot.pid, peaks)
            if line.startswith("Queued") and accepted is None:
                accepted = time.perf_counter() - began
            if line.startswith("image #"):
                first_image = time.perf_counter() - began
        _sample(bot.pid, peaks)
        bot.stdin.close()
        bot.wait(timeout=60)
    direct_peak = int(subprocess.run([sys.executable, "-c", DIRECT], capture_output=True,
                                     text=True, check=True).stdout.strip())
    print("STARTUP (canvas run, console, bundled model)")
    print(f"  to first command accepted  {accepted:6.2f} s")
    print(f"  to first image             {first_image:6.2f} s")
    print("MEMORY (peak resident)")
    print(f"  bot process (no torch)     {peaks['bot']:6d} MB")
    print(f"  engine process             {peaks['engine']:6d} MB")
    print(f"  a direct diffusers call    {direct_peak:6d} MB")


def _sample(pid: int, peaks: dict[str, int]) -> None:
    """Peak RSS so far (VmHWM) of the bot and of its child, the engine."""
    def high_water(process: int) -> int:
        for line in Path(f"/proc/{process}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) // 1024
        return 0

    try:
        peaks["bot"] = max(peaks["bot"], high_water(pid))
        for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
            peaks["engine"] = max(peaks["engine"], high_water(int(child)))
    except OSError:
        pass  # a process just ended


async def main(parts: list[str], rounds: int, per_user: int) -> None:
    if "overhead" in parts:
        await overhead(rounds)
    if "throughput" in parts:
        await throughput(per_user)
    if "startup" in parts:
        startup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("parts", nargs="*", default=["overhead", "throughput", "startup"])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--per-user", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main(args.parts, args.rounds, args.per_user))
