"""Upscaling on the console. With no upscaling model configured, the "hires fix" (the picture
enlarged, then lightly redrawn by its own model) makes a new picture twice or four times as
wide that still shows what the first one did; with engine.upscaler, that model does the work.
And --strength on /inpaint."""

from __future__ import annotations

import enum
import importlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from PIL import Image

from engine.pipelines import load
from engine.shapes import checker
from engine.upscaler import UpscalerError, load_upscaler
from tests.conftest import job_row, run_console, write_config
from tests.engine_harness import Harness, job
from tests.esrgan_file import write_nearest_esrgan
from tests.tiny_upscaler import write_tiny_x4_upscaler


def seen(record: dict) -> tuple[str, str, str]:
    found = checker.read(Image.open(record["path"]).convert("RGB"))
    return found.colour, found.shape, found.background


def imports(module: str) -> bool:
    try:
        importlib.import_module(module)
    except Exception:  # missing, or (torchvision) built for another torch
        return False
    return True


@pytest.fixture
def spandrel(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """spandrel, imported for one test. It imports torchvision for two architectures (LaMa's
    rotation, RestoreFormer's normalisation) that ESRGAN never uses, and no torchvision imports
    beside the CPU torch ./canvas pins: there, stand-ins for those names, which fail if called,
    are in sys.modules while spandrel imports. Afterwards spandrel and the stand-ins are gone
    again, so the rest of this process, diffusers' and transformers' torchvision checks
    included, sees neither (what else was first imported meanwhile, a real torchvision
    included, stays: dropped, it would come back as new classes in a process that holds the
    old ones)."""
    before = set(sys.modules)
    if not imports("torchvision"):
        functional = ModuleType("torchvision.transforms.functional")
        functional.InterpolationMode = enum.Enum("InterpolationMode", "NEAREST BILINEAR BICUBIC")

        def absent(*args: object, **kwargs: object) -> None:
            raise RuntimeError("torchvision is a test's stand-in here")

        functional.rotate = functional.normalize = absent
        for name, module in (("torchvision", ModuleType("torchvision")),
                             ("torchvision.transforms", ModuleType("torchvision.transforms")),
                             ("torchvision.transforms.functional", functional)):
            monkeypatch.setitem(sys.modules, name, module)
    yield importlib.import_module("spandrel")
    for name in set(sys.modules) - before:  # the stand-ins go with monkeypatch's undo
        if name.partition(".")[0] == "spandrel":
            del sys.modules[name]


def test_upscale_doubles_or_quadruples_the_picture_and_keeps_what_it_shows(
        tmp_path: Path) -> None:
    config = write_config(tmp_path)
    first = run_console(config, ["/imagine a red circle on a blue background --seed 5"])
    [made] = first.replies
    [source] = first.images(made["job"])
    run = run_console(config, ["/upscale #1", "/upscale 1 --scale 4", "/upscale 999",
                               "/upscale 1 --scale 3"])
    assert run.returncode == 0, run.stderr
    double, quadruple, missing, bad_scale = run.replies
    assert (source["width"], source["height"]) == (64, 64)
    [twice] = run.images(double["job"])
    [four] = run.images(quadruple["job"])
    assert (twice["width"], twice["height"]) == (128, 128)
    assert (four["width"], four["height"]) == (256, 256)
    assert Image.open(four["path"]).size == (256, 256)
    for upscaled in (twice, four):
        assert seen(upscaled) == ("red", "circle", "blue")  # the same picture, larger
        assert job_row(config.parent / "canvas.db", upscaled["job"])["source_image_id"] == 1
    assert "no image #999" in missing["error"]
    assert "The scale is one of 2, 4" in bad_scale["error"]


def test_inpaint_takes_a_strength(tmp_path: Path) -> None:
    picture, mask = tmp_path / "picture.png", tmp_path / "mask.png"
    Image.new("RGB", (64, 64), "blue").save(picture)
    hole = Image.new("L", (64, 64), 0)
    hole.paste(255, (16, 16, 48, 48))
    hole.save(mask)
    config = write_config(tmp_path)
    run = run_console(config, [
        f"/inpaint a red circle on a blue background --image {picture} --mask {mask} "
        "--strength 0.5 --steps 10",
        f"/inpaint a red circle --image {picture} --mask {mask} --strength 0",
        *(f"/inpaint a red circle on a blue background --image {picture} --mask {mask} "
          f"--strength {strength} --steps 10 --seed 3" for strength in (0.1, 1.0)),
    ])
    assert run.returncode == 0, run.stderr
    done, refused, light, full = run.replies
    # Inside the mask, a light touch leaves the blue picture nearly as it was; full strength
    # paints the red circle asked for.
    red = [np.asarray(Image.open(run.images(reply["job"])[0]["path"]).convert("RGB"),
                      dtype=float)[16:48, 16:48, 0].mean() for reply in (light, full)]
    assert red[1] - red[0] > 25, red
    [image] = run.images(done["job"])
    resolved = json.loads(job_row(config.parent / "canvas.db", done["job"])["resolved"])
    assert resolved["strength"] == 0.5 and resolved["kind"] == "inpaint"
    kept = Image.open(image["path"]).convert("RGB").getpixel((2, 2))
    assert kept == (0, 0, 255)  # outside the mask the picture is the one sent
    assert "strength" in refused["error"]


def test_with_an_sd_x4_upscaler_configured_upscales_are_its_own(tmp_path: Path) -> None:
    """engine.upscaler naming a diffusers SD x4 upscaler (a tiny random one: its pictures are
    noise, so the size, the lineage and the progress say whose work it is). It runs all its
    steps; a hires fix would run a third of them (strength 0.3)."""
    upscaler = write_tiny_x4_upscaler(tmp_path / "x4-upscaler")
    config = write_config(tmp_path, engine={"upscaler": str(upscaler)})
    first = run_console(config, ["/imagine a red circle on a blue background --seed 5 "
                                 "--steps 6"])
    assert first.returncode == 0, first.stderr
    run = run_console(config, ["/upscale 1 --scale 4", "/upscale 1"])
    assert run.returncode == 0, run.stderr
    four, two = run.replies
    for reply, side in ((four, 256), (two, 128)):
        [image] = run.images(reply["job"])
        assert (image["width"], image["height"]) == (side, side)
        assert Image.open(image["path"]).size == (side, side)
        assert job_row(config.parent / "canvas.db", reply["job"])["source_image_id"] == 1
        steps = [(r["step"], r["total"]) for r in run.records
                 if r["type"] == "progress" and r["job"] == reply["job"]]
        assert steps[-1] == (6, 6)
    assert "upscales use x4-upscaler (SD x4 upscaler)" in run.stderr


def test_with_an_esrgan_file_configured_upscales_are_its_work(
        tmp_path: Path, spandrel: ModuleType, caplog: pytest.LogCaptureFixture) -> None:
    """engine.upscaler naming a Real-ESRGAN file, which spandrel loads, in an engine on the
    bundled model. The file's weights enlarge by nearest neighbour (tests/esrgan_file.py), so at
    4× every pixel of the picture is a 4×4 block of the result, which no hires fix draws; 2× is
    that made half as large."""
    upscaler = write_nearest_esrgan(tmp_path / "RealESRGAN_x4-toy.safetensors")
    harness = Harness(load("bundled:shapes", "cpu"), tmp_path / "blobs", max_batch=4,
                      upscaler=str(upscaler))
    caplog.set_level("INFO", logger="engine.worker")
    drawn = harness.run(job(1, "txt2img", "a red circle on a blue background", seed=5))
    [picture] = drawn[1].images
    upscales = harness.run(*(
        job(n, "img2img", "a red circle on a blue background", seed=5, image=picture.blob,
            strength=0.3, scale=scale) for n, scale in ((2, 4), (3, 2))))
    [four], [two] = upscales[2].images, upscales[3].images
    source = harness.open(picture).convert("RGB")
    blocks = source.resize((256, 256), Image.Resampling.NEAREST)
    assert harness.open(four).convert("RGB").tobytes() == blocks.tobytes()
    assert harness.open(two).size == (128, 128)
    for image in (four, two):
        found = checker.read(harness.open(image).convert("RGB"))
        assert (found.colour, found.shape, found.background) == ("red", "circle", "blue")
    assert "upscales use RealESRGAN_x4-toy (ESRGAN, 4×)" in caplog.text


def test_an_upscaler_that_cannot_load_fails_the_upscale_clearly_and_the_bot_goes_on(
        tmp_path: Path) -> None:
    junk = tmp_path / "RealESRGAN_x4plus.pth"
    junk.write_bytes(b"not a model")
    config = write_config(tmp_path, engine={"upscaler": str(junk)})
    first = run_console(config, ["/imagine a red circle --seed 5 --steps 2"])
    assert first.returncode == 0, first.stderr
    run = run_console(config, ["/upscale 1", "/imagine a blue square --seed 1 --steps 2"])
    upscale, imagine = run.replies
    # Here spandrel does not import: it needs a torchvision that matches this CPU torch.
    says = "cannot read" if imports("spandrel") else "install it beside"
    assert says in run.failure(upscale["job"]) and "RealESRGAN_x4plus.pth" in run.failure(
        upscale["job"])
    assert run.images(imagine["job"])
    with pytest.raises(UpscalerError, match="there is no file"):
        load_upscaler(str(tmp_path / "missing.safetensors"), torch.device("cpu"), torch.float32)
