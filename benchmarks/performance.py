"""What the bot costs on top of diffusers: overhead, throughput, cold start and memory.

    python -m benchmarks.performance [overhead] [throughput] [startup]     # the bundled model
    python -m benchmarks.performance --model random:sd15 --device cuda     # on a GPU, 512x512
    python -m benchmarks.performance --model random:sd15 --steps 1 --rounds 1 overhead  # smoke

On a small CPU run it with OMP_NUM_THREADS=1. The engine and this process's direct call each
use one thread fewer than the machine has cores (the engine's own rule); they never overlap.

- overhead: one /imagine typed into an in-process console adapter until it has handed the PNG
  back, against a direct call of a bare diffusers pipeline of the same model on the same device
  and dtype, with the size, steps and guidance the bot's engine used; both warm, alternating,
  medians of --rounds. Prints both times, their ratio (also against the direct call plus
  saving its PNG), and the bot's time split: parse, store and queue, queue wait, generation,
  PNG encode and store (re-measured here), result stored, delivery.
- throughput: --users users sending --per-user /imagine each, all at once, with batching off
  (max_batch 1) and on (max_batch --batch, a number or auto): images per second and each
  command's latency (p50, p95); then batching on against off at the largest user count, and
  batching on at the largest user count against one user. All come through the one console
  user; as every command is sent at once, the queue's fairness between users changes only
  who gets which latency, not the spread.
- startup: `canvas run` (the console, no tokens) from start to the first command accepted and
  to the first image; peak resident memory of the bot process, of its engine, and of a fresh
  process that makes the same image with the same bare pipeline as the overhead's direct call.

On CUDA, overhead and throughput also print the share of the GPU's peak reached: UNet FLOPs per
image over seconds per image, against --peak-tflops or the GPU's dense fp16/bf16 figure.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import re
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from PIL import Image

from benchmarks.learning import open_service
from bot import commands as cmd
from bot.adapters.console import ConsoleAdapter, split_attachments
from bot.service import Reply, Service
from bot.store import ImageRow, JobRow, Store
from engine import params as engine_params
from engine.blobs import LocalBlobs

PARTS = ("overhead", "throughput", "startup")
PROMPT = "a red circle on a blue background"
# UNet TFLOP per latent per denoising step at 512x512, by model.
UNET_TFLOP = {"random:sd15": 0.68}
# Dense fp16/bf16 tensor-core TFLOP/s; the first whose pattern is in the GPU's name counts.
PEAK_TFLOPS = (("H100 PCIe", 756), ("H100", 989), ("H200", 989), ("A100", 312),
               ("L40S", 362), ("L4", 121), ("RTX 4090", 165), ("A10", 125))
DIRECT_MEMORY = ("import sys; from benchmarks.performance import direct_peak_mb; "
                 "direct_peak_mb(sys.argv[1])")


@dataclass(frozen=True)
class Options:
    model: str
    device: str
    steps: int | None
    batch: int | str
    peak_tflops: float | None
    unet_tflop: float | None


@dataclass(frozen=True)
class Params:
    """What an image costs: the values the engine resolved for a job."""

    width: int
    height: int
    steps: int
    guidance: float

    @classmethod
    def of(cls, job: JobRow) -> Params:
        return cls(job.width, job.height, job.resolved.steps, job.resolved.cfg)

    def __str__(self) -> str:
        steps = f"{self.steps} step" + ("s" if self.steps != 1 else "")
        return f"{self.width}x{self.height}, {steps}, guidance {self.guidance:g}"


@dataclass(frozen=True)
class Timed:
    """One /imagine through the console adapter; times are time.time(), as the store's are."""

    job: JobRow
    images: list[ImageRow]
    arrived: float
    answered: float
    handed_back: float

    @property
    def seconds(self) -> float:
        return self.handed_back - self.arrived


class TimedConsole(ConsoleAdapter):
    """The console adapter, silent, noting when it has handed each job's images back."""

    def __init__(self, service: Service) -> None:
        super().__init__(service, json_mode=True, stdout=io.StringIO())
        self.reply: Reply | None = None
        self.outcomes: dict[int, asyncio.Future] = {}

    def emit_reply(self, reply: Reply) -> None:
        self.reply = reply
        super().emit_reply(reply)

    def outcome(self, job_id: int) -> asyncio.Future:
        return self.outcomes.setdefault(job_id, asyncio.get_running_loop().create_future())

    async def deliver_images(self, job: JobRow, images: list[ImageRow]) -> None:
        await super().deliver_images(job, images)
        self.outcome(job.id).set_result((time.time(), images))

    async def deliver_failure(self, job: JobRow, message: str) -> None:
        await super().deliver_failure(job, message)
        self.outcome(job.id).set_exception(RuntimeError(message))

    async def imagine(self, seed: int, steps: int | None) -> Timed:
        line = f"/imagine {PROMPT} --seed {seed}" + (f" --steps {steps}" if steps else "")
        self.reply = None
        arrived = time.time()
        await self.command(line)
        # command() returns right after emit_reply, with no await between: the reply is ours.
        answered, reply = time.time(), self.reply
        if reply is None or not reply.queued:
            raise RuntimeError(f"{line!r} was not queued: {self.stdout.getvalue()[-500:]}")
        handed_back, images = await self.outcome(reply.job_id)
        job = await self.service.store.get_job(reply.job_id)
        return Timed(job, images, arrived, answered, handed_back)


@dataclass
class Bot:
    """The service and engine on a fresh data folder, driven through the console adapter."""

    service: Service
    store: Store
    console: TimedConsole

    @classmethod
    async def start(cls, folder: Path, options: Options, max_batch: int | str) -> Bot:
        store, service = await open_service(folder, {
            "model": options.model, "device": options.device, "max_batch": max_batch})
        console = TimedConsole(service)
        await service.start()
        return cls(service, store, console)

    async def stop(self) -> None:
        await self.service.stop()
        await self.store.close()

    @property
    def on_cuda(self) -> bool:
        return self.service.engines.ready.device.startswith("cuda")

    @property
    def where(self) -> str:
        ready = self.service.engines.ready
        return f"{ready.checkpoint} on {ready.device} ({ready.dtype})"


# ---- the direct call -------------------------------------------------------------------------


def direct_setup(model: str, device_setting: str) -> dict[str, Any]:
    """The bare pipeline's source, the device and dtype the engine would pick for it, and the
    model's own call options (its canvas.json's `call`)."""
    from engine.pipelines import (
        RANDOM_MODELS,
        SETTINGS_FILE,
        pick_device,
        pick_dtype,
        resolve_model,
    )

    device = pick_device(device_setting)
    source = model if model in RANDOM_MODELS else resolve_model(model)
    settings = Path(source) / SETTINGS_FILE
    call = json.loads(settings.read_text()).get("call", {}) if settings.is_file() else {}
    return {"source": source, "device": str(device), "call": call,
            "dtype": str(pick_dtype("auto", device, model)).removeprefix("torch.")}


@dataclass(frozen=True)
class Direct:
    """A bare diffusers pipeline and the call options its model needs."""

    pipe: Any
    call: dict[str, Any]


def load_direct(source: str, device: str, dtype: str, call: dict[str, Any]) -> Direct:
    """A bare diffusers pipeline. Of the engine it takes only what building or finding the
    model's parts needs (random models, components a folder leaves out)."""
    import torch
    from diffusers import DiffusionPipeline
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    from engine.families import RANDOM_MODELS, build_random
    from engine.pipelines import absent_components

    torch.set_num_threads(max(1, (os.cpu_count() or 2) - 1))  # as the engine does
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    if source in RANDOM_MODELS:
        pipe = build_random(source, device, getattr(torch, dtype))
    else:
        folder = Path(source) if Path(source).is_dir() else None
        pipe = DiffusionPipeline.from_pretrained(source, dtype=getattr(torch, dtype),
                                                 **absent_components(folder))
    pipe.set_progress_bar_config(disable=True)
    return Direct(pipe.to(device), call)


def direct_call(direct: Direct, params: Params, seed: int) -> float:
    """Seconds for one image from the bare pipeline."""
    import torch

    pipe = direct.pipe
    cuda = pipe.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
    began = time.perf_counter()
    pipe(PROMPT, num_inference_steps=params.steps, guidance_scale=params.guidance,
         width=params.width, height=params.height,
         generator=torch.Generator("cpu").manual_seed(seed), **direct.call)
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - began


def direct_peak_mb(settings: str) -> None:
    """Startup's baseline, in a fresh process: one image, then its peak resident MB printed.
    Importing this script's bot modules adds about 3 MB to it."""
    import resource

    given = json.loads(settings)
    direct_call(load_direct(**given["direct"]), Params(**given["params"]), seed=1)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)


# ---- share of the GPU's peak -----------------------------------------------------------------


@dataclass(frozen=True)
class GpuShare:
    """UNet FLOPs per image against the GPU's peak; `unavailable` says why there is none."""

    flop_per_image: float = 0.0
    peak_tflops: float | None = None
    basis: str = ""
    unavailable: str = ""

    @classmethod
    def of(cls, bot: Bot, params: Params, options: Options) -> GpuShare:
        if not bot.on_cuda:
            return cls(unavailable="n/a on CPU")
        per_latent = options.unet_tflop or UNET_TFLOP.get(options.model)
        if per_latent is None:
            return cls(unavailable=f"n/a: no UNet FLOP figure for {options.model} "
                                   "(give --unet-tflop)")
        import torch

        name = torch.cuda.get_device_name()
        peak = options.peak_tflops or next(
            (tflops for pattern, tflops in PEAK_TFLOPS if re.search(rf"\b{pattern}\b", name)),
            None)
        latents = 2 if params.guidance > 1 else 1  # classifier-free guidance doubles the batch
        flop = per_latent * 1e12 * params.width * params.height / 512**2 * latents * params.steps
        basis = (f"{flop / 1e12:.2f} TFLOP per image ({per_latent} TFLOP per latent per UNet "
                 f"step at 512x512, x area/512^2 x {latents} latents x {params.steps} steps) "
                 f"against {peak or '?'} TFLOP/s ({name}, dense fp16/bf16). A lower bound: "
                 "UNet only, VAE and text encoder not counted; linear in area, approximate "
                 "away from 512x512 (attention is not linear).")
        return cls(flop, peak, basis)

    def at(self, seconds_per_image: float) -> str:
        if self.unavailable:
            return self.unavailable
        achieved = self.flop_per_image / seconds_per_image / 1e12
        share = f", {achieved / self.peak_tflops:.1%} of peak" if self.peak_tflops else (
            ", peak unknown (give --peak-tflops)")
        return f"{achieved:.1f} TFLOP/s{share}"


# ---- overhead --------------------------------------------------------------------------------


async def overhead(options: Options, rounds: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        bot = await Bot.start(Path(folder), options, options.batch)
        try:
            warm = [await bot.console.imagine(seed, options.steps) for seed in range(3)]
            params = Params.of(warm[0].job)
            setup = direct_setup(options.model, options.device)
            direct = await asyncio.to_thread(load_direct, **setup)
            for seed in range(3):
                await asyncio.to_thread(direct_call, direct, params, seed)
            ours, theirs = [], []
            for seed in range(100, 100 + rounds):
                theirs.append(await asyncio.to_thread(direct_call, direct, params, seed))
                ours.append(await bot.console.imagine(seed, options.steps))
            png = statistics.median(png_seconds(bot.service.image_file(image))
                                    for timed in ours for image in timed.images)
            print(f"OVERHEAD {bot.where}, {params}; medians of {rounds} alternating rounds, "
                  "both warm")
            share = GpuShare.of(bot, params, options)
        finally:
            await bot.stop()
    direct_s, ours_s = statistics.median(theirs), statistics.median(t.seconds for t in ours)
    print(f"  {'direct diffusers call (to a PIL image)':50} {direct_s * 1000:9.1f} ms")
    print(f"  {'bot: command into the adapter -> PNG handed back':50} {ours_s * 1000:9.1f} ms"
          f"   ratio {ours_s / direct_s:.3f}")
    print(f"  {'  against the direct call + PNG encode and store':50} "
          f"{(direct_s + png) * 1000:9.1f} ms   ratio {ours_s / (direct_s + png):.3f}")
    parse = parse_seconds(f"/imagine {PROMPT} --seed 100"
                          + (f" --steps {options.steps}" if options.steps else ""))
    split = {
        "parse (the adapter's parsing, timed apart)": [parse],
        "store and queue (until the command is answered)":
            [t.answered - t.arrived - parse for t in ours],
        "queue wait (answered -> engine's Started stored)":
            [t.job.started_at - t.answered for t in ours],
        # started_at is when the bot stored the engine's Started: a busy bot process moves
        # time from the result below to the queue wait (then the result can go negative).
        "engine generation (engine_seconds)": [t.job.engine_seconds for t in ours],
        "PNG encode and store (re-measured here)": [png],
        "result to the bot and stored (less the PNG)":
            [t.job.finished_at - t.job.started_at - t.job.engine_seconds - png for t in ours],
        "delivery (result stored -> adapter done)":
            [t.handed_back - t.job.finished_at for t in ours],
    }
    print("  the bot's time, split (medians per job):")
    for name, values in split.items():
        print(f"    {name:48} {statistics.median(values) * 1000:9.3f} ms")
    if share.unavailable:
        print(f"  GPU peak share: {share.unavailable}")
    else:
        print(f"  GPU peak share: direct {share.at(direct_s)}; bot {share.at(ours_s)}")
        print(f"  ({share.basis})")


def parse_seconds(line: str) -> float:
    """What the console adapter does with a line before the service sees it, median."""
    def batch() -> float:
        began = time.perf_counter()
        for _ in range(1000):
            text, _ = split_attachments(line)
            cmd.parse(text)
        return (time.perf_counter() - began) / 1000

    return statistics.median(batch() for _ in range(5))


def png_seconds(path: Path) -> float:
    """Storing this image the way the engine does (encode, then put in a blob store: hash,
    write aside, rename), median of 3."""
    with Image.open(path) as opened:
        image = opened.copy()
    with tempfile.TemporaryDirectory() as folder:

        def save(round_: int) -> float:
            blobs = LocalBlobs(Path(folder) / str(round_))  # empty: the same bytes are written
            began = time.perf_counter()
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            blobs.put(buffer.getvalue(), ".png")
            return time.perf_counter() - began

        return statistics.median(save(k) for k in range(3))


# ---- throughput ------------------------------------------------------------------------------


async def throughput(options: Options, users_list: list[int], per_user: int) -> None:
    rows: dict[tuple[str, int], tuple[float, float, float]] = {}
    labels: dict[str, str] = {}
    shares: dict[str, str] = {}
    share: GpuShare | None = None
    largest = max(users_list)
    for setting, max_batch in (("off", 1), ("on", options.batch)):
        with tempfile.TemporaryDirectory() as folder:
            bot = await Bot.start(Path(folder), options, max_batch)
            try:
                auto = "auto: " if max_batch == "auto" else ""
                labels[setting] = f"{setting} ({auto}{bot.service.engines.ready.max_batch})"
                warm = await asyncio.gather(*(bot.console.imagine(i, options.steps)
                                              for i in range(largest)))
                params = Params.of(warm[0].job)
                if share is None:
                    print(f"THROUGHPUT {bot.where}, {params}; commands per user: "
                          f"{per_user}, all sent at once")
                    share = GpuShare.of(bot, params, options)
                for users in users_list:
                    began = time.perf_counter()
                    timed = await asyncio.gather(*(
                        bot.console.imagine(1000 * users + i, options.steps)
                        for i in range(users * per_user)))
                    wall = time.perf_counter() - began
                    seconds = [t.seconds for t in timed]
                    rows[setting, users] = (len(seconds) / wall, percentile(seconds, 0.5),
                                            percentile(seconds, 0.95))
                shares[setting] = share.at(1 / rows[setting, largest][0])
            finally:
                await bot.stop()
    print(f"  {'users':>5}  {'batching':<12} {'images/s':>9} {'p50':>8} {'p95':>8}")
    for (setting, users), (rate, p50, p95) in rows.items():
        print(f"  {users:>5}  {labels[setting]:<12} {rate:9.2f} {p50:7.2f}s {p95:7.2f}s")
    (off_rate, _, off_p95), (on_rate, _, on_p95) = rows["off", largest], rows["on", largest]
    print(f"  at {largest} users, batching on against off: {on_rate / off_rate:.2f} times the "
          f"images/s; p95 {on_p95:.2f} s against {off_p95:.2f} s "
          f"({'no worse' if on_p95 <= off_p95 else 'worse'})")
    if 1 in users_list and largest > 1:
        print(f"  batching on, {largest} users against 1: "
              f"{on_rate / rows['on', 1][0]:.2f} times the images/s")
    if share.unavailable:
        print(f"  GPU peak share: {share.unavailable}")
    else:
        for setting, text in shares.items():
            print(f"  GPU peak share at {largest} users, batching {labels[setting]}: {text}")
        print(f"  ({share.basis})")


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


# ---- startup and memory ----------------------------------------------------------------------


def startup(options: Options) -> None:
    with tempfile.TemporaryDirectory() as folder:
        config = Path(folder) / "config.yaml"
        config.write_text(yaml.safe_dump({
            "engine": {"model": options.model, "device": options.device},
            "storage": {"db": "canvas.db", "images": "images"}}))
        line = "/imagine a red circle --seed 1" + (
            f" --steps {options.steps}" if options.steps else "")
        with open(Path(folder) / "stderr.log", "w+") as errors:
            began = time.perf_counter()
            bot = subprocess.Popen([sys.executable, "-m", "bot", "run", "--config", str(config)],
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   stderr=errors, text=True)
            bot.stdin.write(line + "\n")
            bot.stdin.flush()
            accepted = first_image = None
            peaks = {"bot": 0, "engine": 0}
            while first_image is None:
                output = bot.stdout.readline()
                if not output:
                    break
                _sample(bot.pid, peaks)
                if output.startswith("Queued") and accepted is None:
                    accepted = time.perf_counter() - began
                if output.startswith("image #"):
                    first_image = time.perf_counter() - began
            _sample(bot.pid, peaks)
            bot.stdin.close()
            bot.wait(timeout=60)
            if first_image is None:
                errors.seek(0)
                raise RuntimeError(f"the bot made no image:\n{errors.read()[-2000:]}")
        with sqlite3.connect(Path(folder) / "canvas.db") as db:
            width, height, resolved = db.execute("SELECT width, height, resolved FROM jobs "
                                                 "ORDER BY id LIMIT 1").fetchone()
        resolved = engine_params.Params.from_json(resolved)
        params = Params(width, height, resolved.steps, resolved.cfg)
    settings = {"direct": direct_setup(options.model, options.device), "params": vars(params)}
    direct_peak = int(subprocess.run([sys.executable, "-c", DIRECT_MEMORY, json.dumps(settings)],
                                     capture_output=True, text=True, check=True).stdout.strip())
    print(f"STARTUP (canvas run, console, {options.model}, device {options.device}, {params})")
    print(f"  to first command accepted  {accepted:6.2f} s")
    print(f"  to first image             {first_image:6.2f} s")
    print("MEMORY (peak resident; GPU memory not counted)")
    print(f"  bot process (no torch)     {peaks['bot']:6d} MB")
    print(f"  engine process             {peaks['engine']:6d} MB")
    print(f"  a direct diffusers call    {direct_peak:6d} MB   (the same image, its own process)")


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


# ---- main ------------------------------------------------------------------------------------


def batch_setting(text: str) -> int | str:
    return text if text == "auto" else int(text)


async def main(args: argparse.Namespace) -> None:
    # Quiet, for this process, the engine and the direct call's: the tables are the output.
    os.environ.setdefault("CANVAS_LOG_LEVEL", "WARNING")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    options = Options(args.model, args.device, args.steps, args.batch, args.peak_tflops,
                      args.unet_tflop)
    if "overhead" in args.parts:
        await overhead(options, args.rounds)
    if "throughput" in args.parts:
        await throughput(options, args.users, args.per_user)
    if "startup" in args.parts:
        startup(options)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("parts", nargs="*", default=list(PARTS), help=" ".join(PARTS))
    parser.add_argument("--model", default="bundled:shapes",
                        help="bundled:shapes, random:sd15, random:sdxl, or a diffusers folder")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--steps", type=int, help="denoising steps (default: the model's)")
    parser.add_argument("--rounds", type=int, default=15, help="overhead: rounds measured")
    parser.add_argument("--users", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--per-user", type=int, default=3)
    parser.add_argument("--batch", type=batch_setting, default="auto",
                        help="engine.max_batch with batching on: a number or auto")
    parser.add_argument("--peak-tflops", type=float,
                        help="the GPU's peak TFLOP/s (default: looked up by its name)")
    parser.add_argument("--unet-tflop", type=float,
                        help="UNet TFLOP per latent per step at 512x512 (default: 0.68 for "
                             "random:sd15, none for other models)")
    arguments = parser.parse_args()
    if unknown := set(arguments.parts) - set(PARTS):
        parser.error(f"unknown part {', '.join(unknown)}; the parts are {', '.join(PARTS)}")
    asyncio.run(main(arguments))
