"""A chat's safety policy for pictures the model's own safety checker flags: refused with the
reason (the default), or kept and sent hidden, as a spoiler, where the chat allows it.

The bundled model has no checker, so the test gives a copy of it the real diffusers
`StableDiffusionSafetyChecker` (a tiny CLIP vision tower) whose every threshold every picture
passes: it flags everything, through the same code that runs SD 1.5's."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
from PIL import Image
from transformers import CLIPConfig, CLIPImageProcessor

from engine.shapes import MODEL_DIR, checker
from tests.conftest import run_console, write_config


def flagging_model(folder: Path) -> Path:
    model = folder / "flagging"
    shutil.copytree(MODEL_DIR, model)
    config = CLIPConfig(
        text_config={"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 1,
                     "num_attention_heads": 2},
        vision_config={"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 1,
                       "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
        projection_dim=16)
    safety = StableDiffusionSafetyChecker(config)
    with torch.no_grad():
        safety.concept_embeds_weights.fill_(-2.0)  # a cosine is never below -1: all flagged
    safety.save_pretrained(model / "safety_checker")
    CLIPImageProcessor(size={"shortest_edge": 32},
                       crop_size={"height": 32, "width": 32}).save_pretrained(
        model / "feature_extractor")
    index = json.loads((model / "model_index.json").read_text())
    index.update(safety_checker=["stable_diffusion", "StableDiffusionSafetyChecker"],
                 feature_extractor=["transformers", "CLIPImageProcessor"],
                 requires_safety_checker=True)
    (model / "model_index.json").write_text(json.dumps(index))
    return model


def test_a_flagged_picture_is_refused_unless_the_chat_allows_spoilers(tmp_path: Path) -> None:
    model = flagging_model(tmp_path)
    config = write_config(tmp_path, engine={"model": "checked", "models": {
        "checked": {"source": str(model)}}})
    prompt = "a red circle on a blue background"
    run = run_console(config, [f"/imagine {prompt} --seed 4",
                               "/settings --safety spoiler",
                               f"/imagine {prompt} --seed 4"])
    assert run.returncode == 0, run.stderr
    refused, allowed, hidden = run.replies
    assert "safety checker flagged this picture" in run.failure(refused["job"])
    assert "sent hidden, as spoilers" in allowed["text"]
    [image] = run.images(hidden["job"])
    assert image["flagged"] is True
    picture = Image.open(image["path"]).convert("RGB")
    assert np.asarray(picture).mean() > 10  # the picture itself, not the checker's black
    seen = checker.read(picture)
    assert (seen.colour, seen.shape, seen.background) == ("red", "circle", "blue")
