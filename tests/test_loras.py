"""LoRAs by name on the console: one made here with /retrain and put in the `engine.loras`
folder is listed by /loras, changes the picture when a job adds it, and is refused, clearly,
for a model of another family or when it does not exist."""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
from pathlib import Path

import numpy as np
from PIL import Image

from tests.conftest import run_console, write_config
from tests.kohya import write_kohya_lora

PURPLE = "a purple circle on a yellow background"


def test_a_lora_made_by_retrain_is_listed_and_changes_the_picture(tmp_path: Path) -> None:
    folder = tmp_path / "loras"
    folder.mkdir()
    config = write_config(tmp_path, engine={"loras": "loras"})
    made = run_console(config, [f"/imagine {PURPLE} --seed {seed} --steps 8"
                                for seed in range(4)])
    images = [made.images(reply["job"])[0]["image"] for reply in made.replies]
    trained = run_console(config, [*(f"/rate {image} 5" for image in images),
                                   "/retrain --steps 20 --rank 4"])
    assert trained.returncode == 0, trained.stderr
    with contextlib.closing(sqlite3.connect(config.parent / "canvas.db")) as db:
        [(key,)] = db.execute("SELECT adapter FROM model_versions WHERE name = 'v1'").fetchall()
    blob = next((config.parent / "images" / "blobs").rglob(key))
    shutil.copy(blob, folder / "purple.safetensors")  # the version, exported by name
    write_kohya_lora(blob, folder / "purple-kohya.safetensors")  # as model sites share them
    (folder / "notes.safetensors").write_text("not a LoRA")

    run = run_console(config, [
        "/model use base",
        "/loras",
        "/imagine a red circle on a blue background --seed 11 --steps 10",
        "/imagine a red circle on a blue background --seed 11 --steps 10 --lora purple:1.5",
        "/imagine a red circle on a blue background --seed 11 --steps 10 "
        "--lora purple-kohya:1.5",
        "/imagine a red circle --lora nope",
        "/imagine a red circle --model shapes-sd3 --lora purple --steps 4",
    ])
    assert run.returncode == 0, run.stderr
    _, listing, plain, with_lora, with_kohya, missing, other_family = run.replies
    assert "purple · for Stable Diffusion 1.x/2.x" in listing["text"]
    assert "purple-kohya · for Stable Diffusion 1.x/2.x" in listing["text"]
    assert "notes" not in listing["text"]
    [before] = run.images(plain["job"])
    [after] = run.images(with_lora["job"])
    difference = np.abs(np.asarray(Image.open(before["path"]), dtype=float)
                        - np.asarray(Image.open(after["path"]), dtype=float)).mean()
    assert difference > 2, difference  # the LoRA changed the picture
    [kohya] = run.images(with_kohya["job"])
    assert np.abs(np.asarray(Image.open(kohya["path"]), dtype=float)  # the same LoRA
                  - np.asarray(Image.open(after["path"]), dtype=float)).max() <= 2
    assert before["model_version"] == after["model_version"] == "base"
    assert "no LoRA 'nope'" in missing["error"] and "purple" in missing["error"]
    refusal = other_family.get("error") or run.failure(other_family["job"])
    assert "LoRA purple" in refusal and ("is for" in refusal or "does not fit" in refusal)
