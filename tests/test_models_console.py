"""Named models through `canvas console --json`, as an operator configures them: alternating
--model requests each drawn by the model asked for, /vary and Reroll keeping the model of
their source, /models, and an engine.memory with room for one model only."""

from __future__ import annotations

import contextlib
import sqlite3

import numpy as np
from PIL import Image

from engine.shapes import checker
from tests.conftest import run_console, write_config

PROMPT = "a red circle on a blue background"
THREE = {"shapes": {"source": "bundled:shapes", "description": "the UNet one"},
         "sd3": {"source": "bundled:shapes-sd3"},
         "tiny": {"source": "random:sd15-tiny", "defaults": {"steps": 3}}}


def picture(record: dict) -> np.ndarray:
    with Image.open(record["path"]) as image:
        return np.asarray(image.convert("RGB"))


def test_alternating_models_each_draw_their_own_pictures(tmp_path):
    config = write_config(tmp_path, engine={"model": "shapes", "models": THREE})
    asked = ["shapes", "sd3", "tiny", "shapes", "sd3", "tiny"]
    run = run_console(config, [
        *(f"/imagine {PROMPT} --seed 5 --model {name}" for name in asked),  # jobs 1-6
        "/imagine a green square --seed 1 --model nope",
    ], timeout=300)
    assert run.returncode == 0, run.stderr
    images = {job: run.images(job)[0] for job in range(1, 7)}
    assert [images[job]["model"] for job in range(1, 7)] == asked
    for first, again in ((1, 4), (2, 5), (3, 6)):  # the same model and seed: the same picture
        assert np.array_equal(picture(images[first]), picture(images[again]))
    shapes, sd3, tiny = (picture(images[job]) for job in (1, 2, 3))
    assert not np.array_equal(shapes, sd3) and not np.array_equal(sd3, tiny)
    for trained in (images[1], images[2]):  # both bundled models draw what they were told
        seen = checker.read(Image.open(trained["path"]))
        assert (seen.colour, seen.background) == ("red", "blue"), trained["model"]
    unknown = run.replies[6]
    assert unknown["type"] == "error" and "no model 'nope'" in unknown["error"]

    # A new start: the default model is loaded again, the others wait until asked for; the
    # seconds per image come from the store. A variation is drawn by its source's model.
    again = run_console(config, ["/models", f"/vary {images[2]['image']} --seed 9"])
    assert again.images(7)[0]["model"] == "sd3", again.stderr
    listing = again.replies[0]["text"].splitlines()
    assert listing[1].startswith("shapes (default) · the UNet one · Stable Diffusion 1.x, 64 px"
                                 " · in memory · ")
    assert listing[2].startswith("sd3 · not in memory · ")
    assert listing[3].startswith("tiny · not in memory · ")
    assert all(line.endswith(" s an image") for line in listing[1:4])
    assert listing[4] == "Recent loads:"  # the console's user is an admin


def test_with_memory_for_one_model_every_job_succeeds_and_the_loads_are_recorded(tmp_path):
    two = {name: THREE[name] for name in ("shapes", "sd3")}
    # The bundled models take about 10 and 19 MB: 0.025 GB holds either, never both.
    config = write_config(tmp_path, engine={"model": "shapes", "models": two, "memory": 0.025,
                                            "max_batch": 1})
    run = run_console(config, [
        *(f"/imagine {PROMPT} --seed {seed} --steps 4 --model {name}"
          for seed, name in enumerate(["shapes", "sd3", "shapes", "sd3"])),
    ], timeout=300)
    assert run.returncode == 0, run.stderr
    assert [run.images(job)[0]["model"] for job in range(1, 5)] == ["shapes", "sd3"] * 2
    with contextlib.closing(sqlite3.connect(tmp_path / "canvas.db")) as db:
        loads = db.execute(
            "SELECT name, came_from, evicted FROM model_loads ORDER BY id").fetchall()
    names = [name for name, _, _ in loads]
    assert names[:2] == ["shapes", "sd3"] and len(names) >= 3
    assert all(came_from == "disk" for _, came_from, _ in loads)  # the CPU keeps no spare copy
    assert all(evicted != "[]" for _, _, evicted in loads[1:])  # each load made room
