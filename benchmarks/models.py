"""What switching between named models costs, on the engine in this process.

Run with `python -m benchmarks.models [--device cpu] [--jobs 12] [--steps 8]
[--model NAME=SOURCE ...]` (default: the two bundled models). Prints, per model, how long it
takes to come onto the device from disk and (on a GPU) from CPU RAM, then images per second
for the same jobs in alternating order and sorted by model, with room for one model only
(every switch loads) and with room for all (no switch after the first loads). Jobs reach the
engine four at a time, as the bot's credit hands them over, so the engine can put a loaded
model's jobs first only among those it holds.
"""

from __future__ import annotations

import argparse
import queue
import statistics
import tempfile
import time
from pathlib import Path

import torch

from engine import protocol
from engine.blobs import LocalBlobs
from engine.models import Models, footprint, load_spec
from engine.params import Params
from engine.worker import Engine

BUNDLED = ["shapes=bundled:shapes", "shapes-sd3=bundled:shapes-sd3"]
CREDIT = 4  # jobs the bot lets an engine hold at once (its batch size on the CPU)


def switch_seconds(specs: list[protocol.ModelSpec], device: str, repeats: int = 3
                   ) -> dict[str, dict[str, float]]:
    """Median seconds to bring each model onto the device, from disk and from CPU RAM."""
    sizes = {spec.name: footprint(load_spec(spec, device, False)) for spec in specs}
    room_for_one = max(sizes.values()) + min(sizes.values()) // 2
    models = Models(specs, lambda spec: load_spec(spec, device, False), room_for_one)
    for _ in range(repeats):
        for spec in specs:
            models.get(spec.name)
    times: dict[str, dict[str, list[float]]] = {}
    for load in models.loads:
        times.setdefault(load.name, {}).setdefault(load.came_from, []).append(load.seconds)
    return {name: {where: statistics.median(values) for where, values in by_where.items()}
            for name, by_where in times.items()}


def images_per_second(specs: list[protocol.ModelSpec], device: str, jobs: list[protocol.Job],
                      budget: int) -> float:
    models = Models(specs, lambda spec: load_spec(spec, device, False), budget)
    models.get(specs[0].name)
    with tempfile.TemporaryDirectory() as folder:
        engine = Engine(models, LocalBlobs(Path(folder)), 4, lambda message: None,
                        queue.Queue())
        began = time.perf_counter()
        for start in range(0, len(jobs), CREDIT):  # as the bot hands them over
            engine.run_all(jobs[start:start + CREDIT])
        return len(jobs) / (time.perf_counter() - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--jobs", type=int, default=12)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--model", action="append", metavar="NAME=SOURCE",
                        help="a model to switch between (give two or more)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    specs = [protocol.ModelSpec(*entry.split("=", 1)) for entry in args.model or BUNDLED]

    print("| model | from disk | from CPU RAM |\n|---|---|---|")
    for name, by_where in switch_seconds(specs, args.device).items():
        ram = f"{by_where['cpu']:.2f} s" if "cpu" in by_where else "(kept in RAM on GPUs only)"
        print(f"| {name} | {by_where.get('disk', float('nan')):.2f} s | {ram} |")

    def job(i: int) -> protocol.Job:
        return protocol.Job(i, Params(prompt="a red circle", seed=i, steps=args.steps,
                                      checkpoint=specs[i % len(specs)].name))

    alternating = [job(i) for i in range(args.jobs)]
    by_model = sorted(alternating, key=lambda each: each.params.checkpoint)
    sizes = [footprint(load_spec(spec, args.device, False)) for spec in specs]
    budgets = {"room for one": max(sizes) + min(sizes) // 2, "room for all": 10 * sum(sizes)}
    print(f"\n{args.jobs} jobs of {args.steps} steps, images per second:")
    print("| memory | alternating | sorted by model |\n|---|---|---|")
    for label, budget in budgets.items():
        rates = [images_per_second(specs, args.device, order, budget)
                 for order in (alternating, by_model)]
        print(f"| {label} | {rates[0]:.2f} | {rates[1]:.2f} |")


if __name__ == "__main__":
    main()
