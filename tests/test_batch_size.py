"""Batches sized to the device (engine/batch_size.py): the arithmetic, the probe on the real
bundled pipeline, and the engine process telling the bot how many jobs to hand it.

No GPU here: the probe reads memory through a Meter, and these tests give it one that counts
the latents the real UNet is called with. What is not exercised is torch.cuda's own memory
calls (CudaMeter)."""

from __future__ import annotations

import asyncio
import logging

import pytest
import torch

from engine import protocol
from engine.batch_size import CPU_BATCH, GIB, MemoryUse, choose, fitting_batch
from engine.client import EngineHandle, EngineOptions, SubprocessTransport
from engine.params import Params
from engine.pipelines import load


@pytest.fixture(scope="module")
def pipelines():
    return load("bundled:shapes", "cpu")


@pytest.mark.parametrize(("free", "total", "first", "per", "cap", "expected"), [
    (70, 80, 3, 2, 16, 16),  # a big GPU: the cap
    (20, 24, 2, 2, 64, 8),  # 20 - 2.4 headroom - 2 for the first = 15.6: 7 more
    (6, 12, 2.5, 1.5, 16, 2),
    (3, 12, 2.5, 1.5, 16, 1),  # not even one fits with the headroom: 1, and OOM tells the user
    (20, 24, 2, 0, 16, 16),  # more images cost nothing measurable
])
def test_the_batch_is_the_most_images_that_fit_in_free_memory_less_headroom(
        free, total, first, per, cap, expected):
    use = MemoryUse(int(first * GIB), int(per * GIB))
    assert fitting_batch(int(free * GIB), int(total * GIB), use, cap) == expected


def test_on_the_cpu_auto_is_a_few_images_and_a_number_is_kept(pipelines):
    assert choose(pipelines, 0) == CPU_BATCH
    assert choose(pipelines, 7) == 7


class LatentMeter:
    """A device where each latent in a UNet call takes `per_latent` bytes at the peak, and
    that runs out of memory past `max_latents`; it watches the real UNet's calls."""

    def __init__(self, unet, per_latent: int, free: int, total: int,
                 max_latents: int = 1000) -> None:
        self.per_latent, self.free, self.total = per_latent, free, total
        self.max_latents = max_latents
        self.latents_seen = 0
        self.batches: list[int] = []
        self.hook = unet.register_forward_pre_hook(self._on_unet_call, with_kwargs=True)

    def _on_unet_call(self, module, args, kwargs):
        sample = args[0] if args else kwargs["sample"]
        if sample.shape[0] > self.max_latents:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        self.latents_seen = max(self.latents_seen, sample.shape[0])
        self.batches.append(sample.shape[0])

    def allocated(self) -> int:
        return 5 * GIB  # the loaded model

    def reset_peak(self) -> None:
        self.latents_seen = 0

    def peak(self) -> int:
        return self.allocated() + self.latents_seen * self.per_latent

    def release_cache(self) -> None:
        pass

    def free_and_total(self) -> tuple[int, int]:
        return self.free, self.total


def test_the_probe_runs_one_then_two_images_and_sizes_batches_to_what_fits(pipelines, caplog):
    meter = LatentMeter(pipelines.text2img.unet, per_latent=GIB, free=20 * GIB, total=24 * GIB)
    try:
        # With guidance each image is two latents: 2 GiB for the first, 2 GiB for each more;
        # 20 GiB free less 2.4 GiB headroom holds 8 images.
        assert choose(pipelines, 0, meter) == 8
        assert meter.batches == [2, 4]  # one step of one image, one step of two
        assert choose(pipelines, 4, meter) == 4
        with caplog.at_level(logging.WARNING, logger="engine.batch_size"):
            assert choose(pipelines, 12, meter) == 8
        assert "engine.max_batch is 12, but only 8 images at 64x64 fit" in caplog.text
    finally:
        meter.hook.remove()


def test_a_device_that_holds_one_image_gets_batches_of_one(pipelines):
    meter = LatentMeter(pipelines.text2img.unet, per_latent=GIB, free=20 * GIB,
                        total=24 * GIB, max_latents=2)
    try:
        assert choose(pipelines, 0, meter) == 1
    finally:
        meter.hook.remove()


class Jobs:
    """A job source as the queue would be: a long first job, then short ones."""

    def __init__(self, count: int) -> None:
        self.waiting = [protocol.Job(i, Params(kind="txt2img", prompt="a red circle", seed=i,
                                               steps=200 if i == 1 else 5))
                        for i in range(1, count + 1)]

    async def get(self, prefers=None) -> protocol.Job:
        if not self.waiting:
            await asyncio.Event().wait()  # no more: the feeder waits until it is cancelled
        return self.waiting.pop(0)

    async def put_back(self, job: protocol.Job) -> None:
        self.waiting.insert(0, job)


async def test_the_engine_sizes_its_batch_and_is_handed_that_many_jobs_at_a_time(tmp_path):
    client = EngineHandle(SubprocessTransport(
        EngineOptions("bundled:shapes", "cpu", "auto", 0, tmp_path)))
    ready = await client.start()
    try:
        assert ready.max_batch == CPU_BATCH
        jobs = Jobs(9)
        client.feed_from(jobs)
        while_first_runs, batch_of, results = set(), {}, set()
        while len(results) < 9:
            event = await asyncio.wait_for(client.events.get(), 120)
            if isinstance(event, protocol.Progress) and event.job_id == 1:
                while_first_runs.add((len(client.in_flight), len(jobs.waiting)))
            elif isinstance(event, protocol.Started):
                batch_of[event.job_id] = event.batch_size
            elif isinstance(event, protocol.Result):
                results.add(event.job_id)
            else:
                assert not isinstance(event, protocol.Failed), event
        # While the long first job runs, the engine holds one batch's worth and no more.
        assert (CPU_BATCH, 9 - CPU_BATCH) in while_first_runs
        assert max(held for held, _ in while_first_runs) == CPU_BATCH
        assert len(batch_of) == 9 and max(batch_of.values()) <= CPU_BATCH
    finally:
        await client.stop()
