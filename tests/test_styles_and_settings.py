"""Styles by name and a chat's defaults, as a console user sees them: the style's template
reaches the model (the picture shows it), the chat's defaults apply, and a user's own options
win over them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from engine.shapes import checker
from tests.conftest import job_row, run_console, write_config

STYLES = {
    "on-yellow": {"prompt": "{prompt} on a yellow background", "negative": "blurry",
                  "description": "Anything, on yellow"},
    "green-bg": {"prompt": "{prompt} on a green background"},
}


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return write_config(tmp_path, styles=STYLES)


def seen(record: dict) -> tuple[str, str, str]:
    found = checker.read(Image.open(record["path"]).convert("RGB"))
    return found.colour, found.shape, found.background


def test_a_style_s_template_reaches_the_model_and_the_user_s_words_are_kept(
        config: Path) -> None:
    run = run_console(config, [
        "/styles",
        "/imagine a red circle --style on-yellow --seed 3",
        "/imagine a red circle --style nope",
        "/imagine a red circle --style none --seed 3",
    ])
    assert run.returncode == 0, run.stderr
    listing, styled, unknown, plain = run.replies
    assert "on-yellow · Anything, on yellow" in listing["text"]
    assert "green-bg · {prompt} on a green background" in listing["text"]
    [image] = run.images(styled["job"])
    assert image["prompt"] == "a red circle on a yellow background"  # what the model got
    assert image["words"] == "a red circle" and image["style"] == "on-yellow"
    assert seen(image) == ("red", "circle", "yellow")
    assert "no style 'nope'" in unknown["error"]
    assert "on-yellow" in unknown["error"] and "green-bg" in unknown["error"]
    [unstyled] = run.images(plain["job"])
    assert unstyled["prompt"] == "a red circle" and "words" not in unstyled


def test_a_chat_s_defaults_apply_and_a_user_s_options_win(config: Path) -> None:
    run = run_console(config, [
        "/settings",
        "/settings --style green-bg --ar 16:9 --steps 12",
        "/imagine a blue square",
        "/imagine a blue square --style on-yellow --ar 1:1 --steps 20",
        "/settings --style nope",
        "/settings --model nope",
        "/settings reset",
        "/imagine a white triangle on a black background",
        "/settings --model shapes-sd3",
        "/imagine a red circle --steps 4",
        "/imagine a red circle --steps 4 --model shapes",
        "/settings reset",
    ])
    assert run.returncode == 0, run.stderr
    (empty, saved, by_chat, by_user, bad_style, bad_model, reset, after, model_saved,
     chat_model, user_model, _) = run.replies
    assert "no defaults of its own" in empty["text"]
    assert "style green-bg" in saved["text"] and "aspect 16:9" in saved["text"]
    [chat_image] = run.images(by_chat["job"])
    assert (chat_image["width"], chat_image["height"]) == (80, 48)  # the chat's 16:9
    assert chat_image["prompt"] == "a blue square on a green background"
    assert seen(chat_image)[2] == "green"
    db = config.parent / "canvas.db"
    assert json.loads(job_row(db, by_chat["job"])["resolved"])["steps"] == 12
    assert json.loads(job_row(db, by_user["job"])["resolved"])["steps"] == 20
    [user_image] = run.images(by_user["job"])
    assert (user_image["width"], user_image["height"]) == (64, 64)
    assert seen(user_image) == ("blue", "square", "yellow")
    assert "no style 'nope'" in bad_style["error"]
    assert "no model 'nope'" in bad_model["error"]
    assert "no defaults of its own" in reset["text"]
    [plain] = run.images(after["job"])
    assert plain["prompt"] == "a white triangle on a black background"
    assert (plain["width"], plain["height"]) == (64, 64)
    assert "model shapes-sd3" in model_saved["text"]
    assert [json.loads(job_row(db, reply["job"])["resolved"])["checkpoint"]
            for reply in (after, chat_model, user_model)] == ["shapes", "shapes-sd3", "shapes"]


def test_bad_styles_in_the_config_are_refused_with_the_key(tmp_path: Path) -> None:
    config = write_config(tmp_path, styles={"watercolor": {"prompt": "watercolor"}})
    run = run_console(config, [])
    assert run.returncode == 2
    assert "styles.watercolor.prompt: must hold {prompt} once" in run.stderr
