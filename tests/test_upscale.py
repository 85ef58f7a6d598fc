"""Upscaling on the console, with no upscaling model configured: the "hires fix" (the picture
enlarged, then lightly redrawn by its own model) makes a new picture twice or four times as
wide that still shows what the first one did; and --strength on /inpaint."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from engine.shapes import checker
from tests.conftest import job_row, run_console, write_config


def seen(record: dict) -> tuple[str, str, str]:
    found = checker.read(Image.open(record["path"]).convert("RGB"))
    return found.colour, found.shape, found.background


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
    ])
    assert run.returncode == 0, run.stderr
    done, refused = run.replies
    [image] = run.images(done["job"])
    resolved = json.loads(job_row(config.parent / "canvas.db", done["job"])["resolved"])
    assert resolved["strength"] == 0.5 and resolved["kind"] == "inpaint"
    kept = Image.open(image["path"]).convert("RGB").getpixel((2, 2))
    assert kept == (0, 0, 255)  # outside the mask the picture is the one sent
    assert "strength" in refused["error"]
