"""The engine on the bundled model, in this process: its images against a direct diffusers call,
batched against one by one, cancel between steps, bad requests."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from PIL import Image

from engine import protocol, worker
from engine.pipelines import fit_size, load
from engine.shapes import MODEL_DIR
from engine.worker import Engine
from tests.engine_harness import Harness, job
from tests.lora_file import write_random_lora


@pytest.fixture(scope="module")
def pipelines():
    return load("bundled:shapes", "cpu")


def test_engine_image_equals_a_direct_diffusers_call(pipelines, tmp_path):
    harness = Harness(pipelines, tmp_path, max_batch=4)
    result = harness.run(job(1, "txt2img", "a red circle on a blue background", seed=1234,
                             steps=12, cfg=4.5, negative="green", aspect=(1, 1)))[1]

    direct = StableDiffusionPipeline.from_pretrained(MODEL_DIR)
    direct.set_progress_bar_config(disable=True)
    expected = direct("a red circle on a blue background", negative_prompt="green",
                      num_inference_steps=12, guidance_scale=4.5, width=64, height=64,
                      generator=torch.Generator("cpu").manual_seed(1234)).images[0]
    assert (result.images[0].width, result.images[0].height) == (64, 64)
    assert np.array_equal(harness.pixels(result.images[0]), np.asarray(expected).astype(int))


def test_batched_jobs_match_the_same_jobs_run_one_by_one(pipelines, tmp_path):
    jobs = [
        job(1, "txt2img", "a red circle", seed=1, steps=8),
        job(2, "txt2img", "a blue square on a yellow background", seed=2, steps=8,
            negative="red"),
        job(3, "txt2img", "a green triangle", seed=3, steps=8, n=2),
    ]
    batched = Harness(pipelines, tmp_path / "batched", max_batch=4)
    together = batched.run(*jobs)
    one_by_one = Harness(pipelines, tmp_path / "alone", max_batch=1)
    alone = one_by_one.run(*jobs)

    assert {m.batch_size for m in batched.of_type(protocol.Started)} == {4}
    for each in jobs:
        assert len(together[each.job_id].images) == (each.params.n or 1)
        for a, b in zip(together[each.job_id].images, alone[each.job_id].images, strict=True):
            assert a.seed == b.seed
            assert np.abs(batched.pixels(a) - one_by_one.pixels(b)).max() <= 1
    # Different seeds really give different pictures (the comparison above is not vacuous).
    first, second = together[3].images
    assert not np.array_equal(batched.pixels(first), batched.pixels(second))


def test_only_compatible_jobs_share_a_batch(pipelines, tmp_path):
    harness = Harness(pipelines, tmp_path, max_batch=4)
    harness.run(job(1, "txt2img", "a red circle", seed=1, steps=4),
                job(2, "txt2img", "a red circle", seed=1, steps=6),
                job(3, "txt2img", "a red circle", seed=1, steps=4, aspect=(2, 1)))
    assert [m.batch_size for m in harness.of_type(protocol.Started)] == [1, 1, 1]


def test_cancel_stops_a_running_job_between_steps(pipelines, tmp_path):
    harness = Harness(pipelines, tmp_path, max_batch=4)

    def cancel_after_two_steps(message):
        if isinstance(message, protocol.Progress) and message.step == 2:
            harness.inbox.put(protocol.Cancel(1))

    harness.on_send = cancel_after_two_steps
    results = harness.run(job(1, "txt2img", "a red circle", seed=1, steps=50))
    assert results == {}
    failed = harness.of_type(protocol.Failed)
    assert [(f.job_id, f.kind) for f in failed] == [(1, "cancelled")]
    steps = [m.step for m in harness.of_type(protocol.Progress)]
    assert max(steps) < 10  # stopped within a step or so, not after all 50
    assert not list(tmp_path.rglob("*.png"))  # no picture was kept


def test_a_job_for_another_model_is_refused_as_a_bad_request(pipelines, tmp_path):
    harness = Harness(pipelines, tmp_path, max_batch=4)
    harness.run(job(1, "txt2img", "a red circle", seed=1, checkpoint="sdxl-turbo"))
    [failed] = harness.of_type(protocol.Failed)
    assert failed.kind == "bad_request" and "sdxl-turbo" in failed.error


def test_img2img_and_inpaint_keep_the_source_aspect(pipelines, tmp_path):
    source = tmp_path / "source.png"
    Image.new("RGB", (200, 100), "red").save(source)
    mask = tmp_path / "mask.png"
    Image.new("L", (200, 100), 255).save(mask)
    harness = Harness(pipelines, tmp_path / "blobs", max_batch=4)
    source_key = harness.blobs.put(source.read_bytes(), ".png")
    mask_key = harness.blobs.put(mask.read_bytes(), ".png")
    results = harness.run(
        job(1, "img2img", "a red circle", seed=1, steps=10, image=source_key),
        job(2, "inpaint", "a blue square", seed=1, steps=10, image=source_key, mask=mask_key),
    )
    for job_id in (1, 2):
        image = results[job_id].images[0]
        assert (image.width, image.height) == (96, 48)
        assert harness.open(image).size == (96, 48)


@pytest.mark.parametrize(("aspect", "size"), [((1, 1), (64, 64)), ((16, 9), (80, 48)),
                                              ((9, 16), (48, 80)), ((4, 1), (128, 32))])
def test_fit_size_keeps_the_native_area_on_the_models_grid(pipelines, aspect, size):
    assert fit_size(aspect, pipelines.settings) == size


def test_out_of_memory_splits_the_batch_makes_every_image_and_lowers_the_batch(pipelines, tmp_path):
    harness = Harness(pipelines, tmp_path, max_batch=4)
    real_generate = harness.engine.generate
    tried: list[int] = []

    def small_device(batch):  # a device that holds one image at a time
        tried.append(len(batch))
        if len(batch) > 1:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_generate(batch)

    harness.engine.generate = small_device
    jobs = [job(i, "txt2img", "a red circle", seed=i, steps=3) for i in (1, 2, 3)]
    results = harness.run(*jobs)
    assert sorted(results) == [1, 2, 3] and not harness.of_type(protocol.Failed)
    assert tried == [3, 1, 2, 1, 1]  # 3 -> 1 + 2 -> 1 + 1 + 1
    # Learnt: text-to-image batches stay at 1 (half of the 3 that ran out) from now on.
    tried.clear()
    results = harness.run(*[job(i, "txt2img", "a red circle", seed=i, steps=3)
                            for i in (5, 6)])
    assert tried == [1, 1] and {5, 6} <= set(results)

    harness.engine.generate = lambda batch: (_ for _ in ()).throw(
        torch.OutOfMemoryError("CUDA out of memory (simulated)"))
    harness.run(job(4, "txt2img", "a red circle", seed=4, steps=3))
    [failed] = harness.of_type(protocol.Failed)
    assert failed.job_id == 4 and "does not fit in the device's memory" in failed.error


class PassingPressure:
    """A device that holds one image at a time until the pressure on it passes."""

    def __init__(self, engine: Engine) -> None:
        self.real_generate, self.tried, self.pressure = engine.generate, [], True
        engine.generate = self

    def __call__(self, batch):
        self.tried.append(len(batch))
        if self.pressure and len(batch) > 1:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return self.real_generate(batch)


def jobs(*ids: int) -> list[protocol.Job]:
    return [job(i, "txt2img", "a red circle", seed=i, steps=2) for i in ids]


def test_a_lowered_batch_limit_grows_back_once_batches_fit_again(pipelines, tmp_path,
                                                                 monkeypatch):
    monkeypatch.setattr(worker, "RECOVERY_BATCHES", 2)
    harness = Harness(pipelines, tmp_path, max_batch=4)
    device = PassingPressure(harness.engine)
    harness.run(*jobs(1, 2))
    assert device.tried == [2, 1, 1]  # lowered to batches of 1
    device.pressure = False
    device.tried.clear()
    harness.run(*jobs(3, 4, 5, 6, 7, 8, 9, 10))
    # two batches of 1 fit: 2 again; two of 2 fit: back to the full 4
    assert device.tried == [1, 1, 2, 2, 2]
    device.tried.clear()
    assert len(harness.run(*jobs(11, 12, 13, 14))) == 14
    assert device.tried == [4]


def test_a_batch_limit_lowered_during_training_is_lifted_when_training_ends(pipelines, tmp_path):
    harness = Harness(pipelines, tmp_path, max_batch=4)
    device = PassingPressure(harness.engine)
    harness.run(*jobs(1, 2))
    assert device.tried == [2, 1, 1]
    device.pressure = False
    example = harness.sent[-1].images[0].blob
    harness.engine.start_training(protocol.Train(
        1, "v1", (), (protocol.TrainExample(example, "a red circle", 5.0),) * 4, steps=2,
        rank=2))
    while harness.engine.trainer is not None:
        harness.engine.train_slice()
    assert harness.of_type(protocol.TrainDone)
    device.tried.clear()
    harness.run(*jobs(3, 4, 5))
    assert device.tried == [3]


def test_a_job_that_cannot_be_planned_mid_batch_is_answered_and_the_batch_goes_on(
        pipelines, tmp_path):
    harness = Harness(pipelines, tmp_path, max_batch=4)
    real_plan = harness.engine.plan

    def plan(job, pipes):
        if job.job_id == 2:
            raise RuntimeError("something no one expected")
        return real_plan(job, pipes)

    harness.engine.plan = plan
    sent_second = []

    def on_send(message):  # job 2 arrives while job 1's batch runs
        if isinstance(message, protocol.Progress) and not sent_second:
            sent_second.append(True)
            harness.inbox.put(job(2, "txt2img", "a blue square", seed=2, steps=2))

    harness.on_send = on_send
    results = harness.run(job(1, "txt2img", "a red circle", seed=1, steps=4))
    assert list(results) == [1]
    [failed] = harness.of_type(protocol.Failed)
    assert failed.job_id == 2 and "could not take this job" in failed.error


def test_an_unwritable_images_folder_fails_the_job_clearly_and_the_engine_goes_on(
        pipelines, tmp_path):
    (tmp_path / "blobs").write_text("a file where the blob store's folder should be")
    harness = Harness(pipelines, tmp_path / "blobs", max_batch=4)
    harness.run(job(1, "txt2img", "a red circle", seed=1, steps=3, n=2))
    [failed] = harness.of_type(protocol.Failed)
    assert failed.job_id == 1 and "could not be saved" in failed.error
    (tmp_path / "blobs").unlink()
    assert 2 in harness.run(job(2, "txt2img", "a blue circle", seed=2, steps=3))


class FlagFirstImage:
    """The real pipeline, as if its safety checker flagged the first image of each call."""

    def __init__(self, pipe) -> None:
        self.pipe = pipe

    def __getattr__(self, name: str):
        return getattr(self.pipe, name)

    def __call__(self, **arguments):
        output = self.pipe(**arguments)
        output.nsfw_content_detected = [i == 0 for i in range(len(output.images))]
        return output


def test_an_image_the_models_safety_checker_flags_is_refused_with_a_reason(pipelines, tmp_path):
    real = pipelines.text2img
    pipelines.text2img = FlagFirstImage(real)
    try:
        harness = Harness(pipelines, tmp_path, max_batch=4)
        results = harness.run(job(1, "txt2img", "a red circle", seed=1, steps=3),
                              job(2, "txt2img", "a blue circle", seed=2, steps=3))
    finally:
        pipelines.text2img = real
    [failed] = harness.of_type(protocol.Failed)
    assert failed.job_id == 1 and "safety checker flagged" in failed.error
    assert list(results) == [2]


def test_one_image_out_of_memory_falls_back_to_offload_once_then_fails(pipelines, tmp_path,
                                                                      monkeypatch):
    """On a GPU, a model whose single image does not fit is offloaded and the image tried
    again; only if it still does not fit does the job fail. (The offload hooks need CUDA, so
    here they are stood in for.)"""
    offloaded: list[str] = []
    monkeypatch.setattr(worker, "can_offload", lambda pipes: pipes.offload == "none")
    monkeypatch.setattr(worker, "apply_offload",
                        lambda pipe, mode, device: offloaded.append(mode))
    harness = Harness(pipelines, tmp_path, max_batch=1)
    real_generate = harness.engine.generate

    def tight(batch):  # fits only once offloaded
        if not offloaded:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_generate(batch)

    harness.engine.generate = tight
    try:
        assert 1 in harness.run(job(1, "txt2img", "a red circle", seed=1, steps=3))
        assert offloaded == ["model"]

        def never(batch):
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

        harness.engine.generate = never
        harness.run(job(2, "txt2img", "a red circle", seed=2, steps=3))
        [failed] = harness.of_type(protocol.Failed)
        assert failed.job_id == 2 and "does not fit" in failed.error and offloaded == ["model"]
    finally:
        pipelines.offload = "none"  # the module's shared model, for the tests after this one


def test_jobs_with_different_loras_are_batched_apart_and_draw_as_they_would_alone(tmp_path):
    """Adapters are the model's, not each picture's: a batch shares its LoRAs. Fresh
    pipelines, since the LoRAs stay loaded on them."""
    sizes, pixels = {}, {}
    for max_batch in (4, 1):
        harness = Harness(load("bundled:shapes", "cpu"), tmp_path / f"batch-{max_batch}",
                          max_batch)
        ink, wash = (harness.blobs.put(write_random_lora(tmp_path / f"{name}.safetensors",
                                                         seed=seed).read_bytes(),
                                       ".safetensors")
                     for name, seed in (("ink", 0), ("wash", 1)))
        jobs = [job(n, "txt2img", "a red circle on a blue background", seed=3, steps=6,
                    loras=loras)
                for n, loras in ((1, (("ink", 1.0, ink),)), (2, (("ink", 1.0, ink),)),
                                 (3, (("wash", 1.0, wash),)), (4, None),
                                 (5, (("ink", 0.5, ink),)))]
        results = harness.run(*jobs)
        sizes[max_batch] = sorted(m.batch_size for m in harness.of_type(protocol.Started))
        pixels[max_batch] = {n: harness.pixels(results[n].images[0]) for n in results}
    assert sizes[4] == [1, 1, 1, 2, 2]  # only the two jobs with the same LoRA shared a batch
    for n in pixels[1]:
        assert np.abs(pixels[4][n] - pixels[1][n]).max() <= 1, n
    # The LoRAs do change the picture, each its own way (the comparison is not vacuous).
    assert np.abs(pixels[1][1] - pixels[1][4]).mean() > 2
    assert np.abs(pixels[1][1] - pixels[1][3]).mean() > 2


def test_retraining_after_a_job_with_a_lora_by_name_trains_and_saves(tmp_path):
    """A job's LoRA is loaded while its batch generates; a /retrain after it adds a new
    adapter beside it, which fails if that LoRA's weights were made in inference mode."""
    harness = Harness(load("bundled:shapes", "cpu"), tmp_path, max_batch=1)
    ink = harness.blobs.put(write_random_lora(tmp_path / "ink.safetensors").read_bytes(),
                            ".safetensors")
    drawn = harness.run(job(1, "txt2img", "a red circle", seed=1, steps=4,
                            loras=(("ink", 1.0, ink),)))
    example = protocol.TrainExample(drawn[1].images[0].blob, "a red circle", 1.0)
    harness.engine.start_training(protocol.Train(1, "v1", (), (example,) * 2, steps=2, rank=2))
    while harness.engine.trainer is not None:
        harness.engine.train_slice()
    assert not harness.of_type(protocol.TrainFailed)
    [done] = harness.of_type(protocol.TrainDone)
    assert harness.blobs.has(done.adapter)
