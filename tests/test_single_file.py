"""A model whose source is one .safetensors checkpoint in the original Stable Diffusion layout,
loaded with from_single_file and `config`, a local folder of its diffusers configs, offline:
the same weights and pictures as the folder it was written from, through the engine and
through engine.models as a user writes it, and readable errors when the file or folder is
wrong."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from PIL import Image
from safetensors.torch import load_file, save_file

from engine.memory_modes import MemoryModeError
from engine.pipelines import Pipelines, load
from engine.shapes import MODEL_DIR, checker
from tests.conftest import run_console, write_config
from tests.single_file import write_original_checkpoint

COMPONENTS = ("unet", "vae", "text_encoder")


pytestmark = pytest.mark.usefixtures("offline")  # tests/conftest.py


def assert_same_weights(one: Pipelines, other: Pipelines) -> None:
    for name in COMPONENTS:
        ours, theirs = (getattr(p.text2img, name).state_dict() for p in (one, other))
        assert ours.keys() == theirs.keys(), name
        assert all(torch.equal(ours[key], theirs[key]) for key in theirs), name


def picture(pipes: Pipelines) -> np.ndarray:
    image = pipes.text2img("a red circle on a blue background", num_inference_steps=4,
                           guidance_scale=5.0, width=64, height=64,
                           generator=torch.Generator("cpu").manual_seed(3)).images[0]
    return np.asarray(image)


def test_a_single_file_loads_the_weights_and_draws_the_pictures_of_its_folder(tmp_path):
    file = write_original_checkpoint(MODEL_DIR, tmp_path / "shapes.safetensors")
    single = load(str(file), "cpu", "float32", config=str(MODEL_DIR))
    folder = load("bundled:shapes", "cpu", "float32")
    assert type(single.text2img) is type(folder.text2img)
    assert single.text2img.vae.config.scaling_factor == folder.text2img.vae.config.scaling_factor
    assert_same_weights(single, folder)
    assert single.img2img.unet is single.text2img.unet  # the derived pipelines share them
    assert np.array_equal(picture(single), picture(folder))


def test_the_layout_follows_the_config_more_layers_and_vae_attention(tmp_path):
    """Two layers a block renumber the UNet's LDM blocks; the VAE's middle attention is a
    1x1 convolution in LDM. Random values everywhere, so two swapped layers would show."""
    folder = shutil.copytree(MODEL_DIR, tmp_path / "model")
    torch.manual_seed(0)
    for cls, changes in ((UNet2DConditionModel, {"layers_per_block": 2}),
                         (AutoencoderKL, {"layers_per_block": 2,
                                          "mid_block_add_attention": True})):
        subfolder = folder / ("unet" if cls is UNet2DConditionModel else "vae")
        model = cls.from_config({**cls.load_config(subfolder), **changes})
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.normal_()
        model.save_pretrained(subfolder)
    file = write_original_checkpoint(folder, tmp_path / "wide.safetensors")
    assert load_file(file)["first_stage_model.decoder.mid.attn_1.q.weight"].ndim == 4
    assert_same_weights(load(str(file), "cpu", "float32", config=str(folder)),
                        load(str(folder), "cpu", "float32"))


def test_a_single_file_in_engine_models_draws_what_it_is_told(tmp_path):
    file = write_original_checkpoint(MODEL_DIR, tmp_path / "sd15.safetensors")
    # As a user has it: the configs and tokenizer files, no weights but the checkpoint's.
    configs = shutil.copytree(MODEL_DIR, tmp_path / "sd15-config",
                              ignore=shutil.ignore_patterns("*.safetensors"))
    models = {"shapes": {"source": "bundled:shapes"},
              "sd15file": {"source": str(file), "config": str(configs)}}
    config = write_config(tmp_path, engine={"model": "shapes", "models": models})
    prompt = "/imagine a red circle on a blue background --seed 3"
    run = run_console(config, [f"{prompt} --model sd15file", f"{prompt} --model shapes"])
    assert run.returncode == 0, run.stderr
    [from_file], [from_folder] = run.images(1), run.images(2)
    assert (from_file["model"], from_folder["model"]) == ("sd15file", "shapes")
    seen = checker.read(Image.open(from_file["path"]))
    assert (seen.colour, seen.shape, seen.background) == ("red", "circle", "blue")
    assert np.array_equal(*(np.asarray(Image.open(each["path"]))
                            for each in (from_file, from_folder)))


def test_a_config_folder_that_cannot_serve_is_refused_with_what_it_lacks(tmp_path):
    file = write_original_checkpoint(MODEL_DIR, tmp_path / "shapes.safetensors")
    missing = tmp_path / "no-such-folder"
    with pytest.raises(ValueError, match=f"{missing} has no model_index.json"):
        load(str(file), "cpu", "float32", config=str(missing))
    # Only the components' config.json files copied: the tokenizer would load, and draw noise.
    bare = tmp_path / "bare"
    shutil.copytree(MODEL_DIR, bare, ignore=shutil.ignore_patterns(
        "*.safetensors", "vocab.json", "merges.txt", "tokenizer.json"))
    with pytest.raises(ValueError, match="lacks tokenizer: copy those folders"):
        load(str(file), "cpu", "float32", config=str(bare))


def test_a_checkpoint_of_another_family_or_asked_to_quantize_is_refused_clearly(tmp_path):
    file = write_original_checkpoint(MODEL_DIR, tmp_path / "shapes.safetensors")
    with pytest.raises(ValueError, match="does not fit the configs in .*another family"):
        load(str(file), "cpu", "float32", config=str(MODEL_DIR.parent / "model-sd3"))
    with pytest.raises(MemoryModeError, match="save it once as a diffusers folder"):
        load(str(file), "cpu", "float32", config=str(MODEL_DIR), quantize="int8-weights")


@pytest.mark.parametrize(("content", "says"), [
    (b"not a checkpoint", "Unable to load weights from checkpoint file"),
    (None, "Weights for this component appear to be missing in the checkpoint"),
], ids=["not safetensors", "safetensors of something else"])
def test_a_file_that_is_not_a_checkpoint_says_so(tmp_path, content: bytes | None, says: str):
    file = tmp_path / "model.safetensors"
    if content is None:
        save_file({"linear.weight": torch.zeros(2, 2)}, file)
    else:
        file.write_bytes(content)
    with pytest.raises(Exception, match=says):
        load(str(file), "cpu", "float32", config=str(MODEL_DIR))
