"""A model whose denoiser comes as a GGUF file (quantized in Q8_0, as FLUX.1 and SD 3.5 files
are shared), the rest from its diffusers folder: written here from the bundled SD 3 model, it
loads with its weights quantized, offline, and still draws what it is told, and /retrain makes
a version of it; without a config, or asked to quantize again, it is refused with what to
change."""

from __future__ import annotations

import contextlib
import shutil
import sqlite3

import numpy as np
import pytest
from PIL import Image

from engine.memory_modes import MemoryModeError
from engine.models import footprint
from engine.pipelines import load
from engine.shapes import SD3_MODEL_DIR, checker
from tests.conftest import run_console, write_config
from tests.gguf_file import write_gguf

PROMPT = "a red circle on a blue background"


pytestmark = pytest.mark.usefixtures("offline")  # tests/conftest.py


def picture(pipes) -> Image.Image:
    size = pipes.settings.native_size
    return pipes.text_to_image([PROMPT], pipes.defaults.steps, size, size).images[0]


def test_a_gguf_denoiser_loads_quantized_and_draws_what_it_is_told(tmp_path):
    file = write_gguf(SD3_MODEL_DIR / "transformer" / "diffusion_pytorch_model.safetensors",
                      tmp_path / "shapes-sd3-Q8_0.gguf")
    # As a user has it: the model's folder, without the denoiser weights the file replaces.
    config = shutil.copytree(SD3_MODEL_DIR, tmp_path / "sd3-config")
    (config / "transformer" / "diffusion_pytorch_model.safetensors").unlink()
    quantized = load(str(file), "cpu", "float32", config=str(config))
    plain = load("bundled:shapes-sd3", "cpu", "float32")
    kinds = {type(p).__name__ for p in quantized.text2img.transformer.parameters()}
    assert "GGUFParameter" in kinds
    assert footprint(quantized) < footprint(plain)
    ours, theirs = picture(quantized), picture(plain)
    seen = checker.read(ours)
    assert (seen.colour, seen.shape, seen.background) == ("red", "circle", "blue")
    difference = np.abs(np.asarray(ours, dtype=float) - np.asarray(theirs, dtype=float))
    assert difference.mean() < 8, difference.mean()  # 8-bit weights: nearly the same picture


def test_a_gguf_file_without_a_config_or_asked_to_quantize_again_is_refused(tmp_path):
    file = write_gguf(SD3_MODEL_DIR / "transformer" / "diffusion_pytorch_model.safetensors",
                      tmp_path / "denoiser.gguf")
    with pytest.raises(ValueError, match="holds only a denoiser: give the model a config"):
        load(str(file), "cpu", "float32")
    with pytest.raises(MemoryModeError, match="quantized already"):
        load(str(file), "cpu", "float32", config=str(SD3_MODEL_DIR), quantize="int8-weights")


def test_retrain_on_a_gguf_model_makes_a_version_it_then_draws_with(tmp_path):
    """A quantized denoiser takes a LoRA too; saving it must not try to cast the model
    (diffusers' own save does, which a quantized model refuses)."""
    file = write_gguf(SD3_MODEL_DIR / "transformer" / "diffusion_pytorch_model.safetensors",
                      tmp_path / "sd3-Q8_0.gguf")
    models = {"sd3q8": {"source": str(file), "config": str(SD3_MODEL_DIR)}}
    config = write_config(tmp_path, engine={"model": "sd3q8", "models": models})
    made = run_console(config, [f"/imagine {PROMPT} --seed {seed} --steps 4" for seed in range(4)])
    assert made.returncode == 0, made.stderr
    run = run_console(config, [*(f"/rate {image} 5" for image in range(1, 5)),
                               "/retrain --steps 4 --rank 2"])
    assert run.returncode == 0, run.stderr
    assert any("Retraining finished" in r.get("text", "") for r in run.records), run.records
    after = run_console(config, [f"/imagine {PROMPT} --seed 9 --steps 4"])
    [image] = after.images(after.replies[0]["job"])
    assert (image["model"], image["model_version"]) == ("sd3q8", "v1")

    # The version, exported by name, is a LoRA a job can add to the quantized model.
    with contextlib.closing(sqlite3.connect(config.parent / "canvas.db")) as db:
        [(key,)] = db.execute("SELECT adapter FROM model_versions WHERE name = 'v1'").fetchall()
    (tmp_path / "loras").mkdir()
    shutil.copy(next((tmp_path / "images" / "blobs").rglob(key)),
                tmp_path / "loras" / "mine.safetensors")
    config = write_config(tmp_path, engine={"model": "sd3q8", "models": models,
                                            "loras": "loras"})
    scene = f"/imagine {PROMPT} --seed 9 --steps 4"
    named = run_console(config, ["/model use base", scene, f"{scene} --lora mine:2"])
    assert named.returncode == 0 and len(named.replies) == 3, (named.stderr, named.replies)
    plain, with_lora = (named.images(reply["job"])[0] for reply in named.replies[1:])
    assert plain["model_version"] == with_lora["model_version"] == "base"
    difference = np.abs(np.asarray(Image.open(plain["path"]), dtype=float)
                        - np.asarray(Image.open(with_lora["path"]), dtype=float)).mean()
    assert difference > 0.5, difference  # the LoRA reached the quantized denoiser
