"""Peak memory and seconds per image of one model in each memory mode (issue 14's table).

Run with `python -m benchmarks.memory_modes [--source random:flux] [--device cuda]
[--modes none,8bit,4bit] [--offloads none,model] [--size 1024] [--steps 4]`. Each mode loads
the model afresh (quantized while it loads), makes one image to warm up, then times
`--images` more; on CUDA the peak is the allocator's, on the CPU the process's peak RSS (which
only grows, so there run one mode at a time). Check it end to end on the CPU with
`--source random:flux-tiny --device cpu --modes none,int8-weights --offloads none --size 64`.
"""

from __future__ import annotations

import argparse
import gc
import resource
import time

import torch

from engine.pipelines import load


def peak_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure(source: str, device: str, quantize: str, offload: str, size: int, steps: int,
            images: int) -> tuple[float, float]:
    """(peak GB, seconds per image) for the model loaded in this mode."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    pipes = load(source, device, "auto", quantize=quantize, offload=offload)

    def one(seed: int, pipes=pipes) -> None:
        pipes.text2img("a lighthouse at dusk", num_inference_steps=steps, width=size,
                       height=size, generator=torch.Generator("cpu").manual_seed(seed))

    one(0)
    began = time.perf_counter()
    for seed in range(1, images + 1):
        one(seed)
    seconds = (time.perf_counter() - began) / images
    peak = peak_bytes(pipes.device) / 1e9
    del one, pipes
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return peak, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="random:flux")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--modes", default="none,8bit,4bit")
    parser.add_argument("--offloads", default="none,model")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--images", type=int, default=2)
    args = parser.parse_args()
    print(f"{args.source} on {args.device}, {args.size}x{args.size}, {args.steps} steps")
    print("| quantize | offload | peak memory | seconds per image |\n|---|---|---|---|")
    for quantize in args.modes.split(","):
        for offload in args.offloads.split(","):
            try:
                peak, seconds = measure(args.source, args.device, quantize, offload, args.size,
                                        args.steps, args.images)
            except Exception as error:  # noqa: BLE001 - one mode failing leaves the others
                print(f"| {quantize} | {offload} | failed: {error} | |", flush=True)
                continue
            print(f"| {quantize} | {offload} | {peak:.1f} GB | {seconds:.2f} |", flush=True)


if __name__ == "__main__":
    main()
