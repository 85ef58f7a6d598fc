"""The bundled shapes models draw what they are told, as the pixel checker reads it, through
the real engine at the model's default steps. Seeds here were not used to train or tune
either model: bundled:shapes (a UNet) and bundled:shapes-sd3 (SD 3's transformer, flow
matching) both draw the shape, its colour and the background they are told."""

from __future__ import annotations

import queue
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmarks.quality import measure
from engine import protocol
from engine.blobs import LocalBlobs
from engine.params import Params
from engine.pipelines import Pipelines, load
from engine.shapes import checker, draw
from engine.worker import Engine


@pytest.fixture(scope="module")
def pipes() -> Pipelines:
    return load("bundled:shapes", "cpu")


def job(job_id: int, kind: str, prompt: str, **given) -> protocol.Job:
    return protocol.Job(job_id, Params(kind=kind, prompt=prompt, **given))


def run(pipes: Pipelines, folder: Path, *jobs: protocol.Job) -> list[Image.Image]:
    """Each job's first image, in job order, from an in-process Engine whose blob store is
    in `folder`."""
    sent: list = []
    blobs = LocalBlobs(folder)
    engine = Engine(pipes, blobs, 8, sent.append, queue.Queue())
    engine.run_all(list(jobs))
    keys = {m.job_id: m.images[0].blob for m in sent if isinstance(m, protocol.Result)}
    return [Image.open(blobs.path(keys[each.job_id])).convert("RGB") for each in jobs]


def put(folder: Path, picture: Path) -> str:
    """A picture saved at `picture`, put in the blob store in `folder`: its key."""
    return LocalBlobs(folder).put(picture.read_bytes(), ".png")


def imagine(pipes: Pipelines, folder: Path, prompt: str, seed: int) -> Image.Image:
    return run(pipes, folder, job(1, "txt2img", prompt, seed=seed))[0]


def test_checker_reads_training_drawings() -> None:
    rng = np.random.default_rng(20_250_101)
    scenes = [draw.random_scene(rng) for _ in range(300)]
    for scene in scenes:
        seen = checker.read(draw.draw(scene))
        assert (seen.background, seen.colour, seen.shape) == (
            scene.background, scene.colour, scene.shape
        ), scene


def test_checker_reads_enlarged_drawings_and_plain_backgrounds() -> None:
    scene = draw.Scene("triangle", "white", draw.DEFAULT_BACKGROUND, side=30, left=10, top=20)
    seen = checker.read(draw.draw(scene).resize((256, 256), Image.Resampling.BICUBIC))
    assert seen == checker.Reading("grey", "white", "triangle")
    assert checker.read(Image.new("RGB", (64, 64), draw.PALETTE["blue"])).shape is None


@pytest.mark.parametrize("seed", [7, 8, 9])
def test_imagine_draws_what_the_prompt_says(pipes: Pipelines, tmp_path: Path, seed: int) -> None:
    image = imagine(pipes, tmp_path, "a red circle on a blue background", seed)
    assert checker.read(image) == checker.Reading("blue", "red", "circle")


def test_a_circle_comes_in_many_colours(pipes: Pipelines, tmp_path: Path) -> None:
    jobs = [job(i, "txt2img", "a circle", seed=900 + i) for i in range(40)]
    readings = [checker.read(image) for image in run(pipes, tmp_path, *jobs)]
    assert len({reading.colour for reading in readings}) >= 4
    assert sum(reading.background == "grey" for reading in readings) >= 36


def test_vary_keeps_the_picture_and_full_strength_follows_a_new_prompt(
    pipes: Pipelines, tmp_path: Path
) -> None:
    prompt = "a red circle on a blue background"
    source = tmp_path / "source.png"
    imagine(pipes, tmp_path, prompt, seed=31).save(source)
    key = put(tmp_path, source)
    kept, redrawn = run(
        pipes, tmp_path,
        job(2, "img2img", prompt, seed=32, image=key),
        job(3, "img2img", "a green square on a yellow background", seed=33,
            strength=1.0, image=key),
    )  # fmt: skip
    assert checker.read(kept).colour == "red"
    assert checker.read(redrawn) == checker.Reading("yellow", "green", "square")


def test_inpaint_repaints_the_mask_and_keeps_the_rest(pipes: Pipelines, tmp_path: Path) -> None:
    picture = draw.draw(draw.Scene("circle", "red", draw.DEFAULT_BACKGROUND, 28, left=18, top=18))
    mask = Image.new("L", picture.size, 0)
    mask.paste(255, (12, 12, 52, 52))  # a box over the circle and some background around it
    picture.save(tmp_path / "picture.png")
    mask.save(tmp_path / "mask.png")
    repaint = job(
        1, "inpaint", "a yellow square", seed=41,
        image=put(tmp_path, tmp_path / "picture.png"), mask=put(tmp_path, tmp_path / "mask.png"),
    )  # fmt: skip
    result = run(pipes, tmp_path, repaint)[0]
    assert checker.read(result) == checker.Reading("grey", "yellow", "square")
    change = np.abs(np.asarray(result, dtype=float) - np.asarray(picture, dtype=float)) / 255
    inside = np.asarray(mask) > 0
    assert change[inside].mean() > 0.15
    assert change[~inside].max() == 0  # the engine pastes the original back outside the mask


def test_the_sd3_model_draws_the_colours_and_background_it_is_told(tmp_path: Path) -> None:
    """Every shape × colour × background once (192 prompts) on bundled:shapes-sd3: the shape's
    colour and the background right at least 90% of the time, the shape at least 75%
    (measured: 99.5%, 100% and 93.2%)."""
    pipes = load("bundled:shapes-sd3", "cpu")
    assert pipes.family.name == "sd3"
    scores = [score for group in measure(pipes, 1, tmp_path).values() for score in group]
    colour, background, shape = (sum(s[k] for s in scores) / len(scores) for k in range(3))
    assert len(scores) == 192
    assert colour >= 0.9 and background >= 0.9, (colour, background)
    assert shape >= 0.75, shape
