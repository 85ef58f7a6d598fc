"""Every family as a user meets it: a plain diffusers folder on disk (each tiny family, saved
with save_pretrained) named in `engine.model`, driven through `canvas console --json` with
every command, a short /retrain and /model use, and no error anywhere."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from engine.families import build_random
from tests.conftest import run_console, write_config

LABELS = {"sd15": "Stable Diffusion 1.x", "sd2": "Stable Diffusion 2.x",
          "sdxl": "Stable Diffusion XL", "sd3": "Stable Diffusion 3.x", "flux": "FLUX.1",
          "flux-schnell": "FLUX.1"}
FAMILIES = tuple(LABELS)


@pytest.fixture(scope="module")
def pictures(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("pictures")
    Image.new("RGB", (48, 48), "orange").save(folder / "picture.png")
    mask = Image.new("L", (48, 48), 0)
    mask.paste(255, (12, 12, 36, 36))
    mask.save(folder / "mask.png")
    return folder / "picture.png", folder / "mask.png"


@pytest.mark.parametrize("family", FAMILIES)
def test_every_command_and_a_retrain_work_on_a_plain_folder_of_each_family(
        family, tmp_path, pictures):
    model = tmp_path / f"{family}-model"
    build_random(f"random:{family}-tiny").save_pretrained(model)
    config = write_config(tmp_path, engine={"model": str(model)})
    picture, mask = pictures

    made = run_console(config, ["/imagine a red circle --seed 1 --n 4 --steps 3",
                                "/imagine a red circle --no blue --cfg 3 --seed 2 --steps 3",
                                "/help"])
    first = run_console(config, [
        "/vary 1 --seed 3",
        f"/inpaint a blue square --image {picture} --mask {mask} --seed 4",
        "/rate 1 5", "/rate 2 5", "/rate 3 4", "/rate 4 5",
        "/retrain --steps 4",
    ])
    for run in (made, first):
        assert run.returncode == 0, run.stderr
        assert not [r for r in run.records if r["type"] == "error"], run.records
    images = [r for run in (made, first) for r in run.records if r["type"] == "image"]
    assert [r["job"] for r in images] == [1, 1, 1, 1, 2, 3, 4]
    assert {r["model"] for r in images} == {str(model)}
    assert {r["model_version"] for r in images} == {"base"}
    help_text = made.replies[-1]["text"]
    assert f"({LABELS[family]})" in help_text and "/inpaint" in help_text
    assert ("true guidance" in help_text) == family.startswith("flux")
    texts = [r["text"] for r in first.records if r["type"] == "text"]
    assert any(t.startswith("Retraining started: v1") for t in texts), texts
    assert any("v1 is ready" in t or "Retraining finished" in t for t in texts), texts

    # A queued job runs on the version active when it runs: switch, then wait for the image.
    versions, pictures_made = [], []
    for lines in (["/imagine a red circle --seed 5 --steps 3"],
                  ["/model use base", "/imagine a red circle --seed 5 --steps 3"],
                  ["/model use v1", "/imagine a red circle --seed 5 --steps 3", "/model list"]):
        run = run_console(config, lines)
        assert run.returncode == 0, run.stderr
        assert not [r for r in run.records if r["type"] == "error"], run.records
        [image] = [r for r in run.records if r["type"] == "image"]
        versions.append(image["model_version"])
        pictures_made.append(Path(image["path"]).read_bytes())
    assert versions == ["v1", "base", "v1"]
    trained, base, again = pictures_made
    assert trained == again != base
