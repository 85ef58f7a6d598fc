"""`canvas console --json` as a user runs it: a real engine process, the bundled model and a real
SQLite file, checked by what comes out on standard output and what lands in the database."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

from PIL import Image

from engine.params import Params
from tests.conftest import ROOT, job_row, run_console, write_config


def test_imagine_returns_an_image_and_stores_the_job(config):
    run = run_console(config, ["/imagine a red circle --no blurry --seed 7 --steps 10 --cfg 4 "
                               "--ar 2:1"])
    assert run.returncode == 0, run.stderr
    assert run.replies[0]["text"] == "Queued job #1, position 1."
    [image] = run.images(1)
    assert image["seed"] == 7 and isinstance(image["image"], int)
    with Image.open(image["path"]) as png:
        assert png.format == "PNG" and png.size == (96, 48) == (image["width"], image["height"])
    progress = [r for r in run.records if r["type"] == "progress" and r["job"] == 1]
    assert [r["step"] for r in progress] == list(range(1, 11))

    row = job_row(config.parent / "canvas.db", 1)
    asked, resolved = Params.from_json(row["params"]), Params.from_json(row["resolved"])
    assert (row["prompt"], asked.negative, asked.seed, resolved.steps, resolved.cfg,
            resolved.aspect, row["width"], row["height"]) == (
        "a red circle", "blurry", 7, 10, 4.0, (2, 1), 96, 48)
    assert row["status"] == "done" and row["error"] is None
    assert row["queued_at"] <= row["started_at"] <= row["finished_at"] <= row["delivered_at"]
    assert 0 < row["engine_seconds"] < row["finished_at"] - row["queued_at"] + 1


def test_same_seed_gives_the_same_png_and_another_seed_another(config):
    run = run_console(config, ["/imagine a blue square --seed 5",
                               "/imagine a blue square --seed 5",
                               "/imagine a blue square --seed 6"])
    assert run.returncode == 0, run.stderr
    first, again, other = (Path(run.images(job)[0]["path"]).read_bytes() for job in (1, 2, 3))
    assert first == again
    assert first != other


def test_vary_and_inpaint_and_every_bad_attachment_get_an_answer(tmp_path):
    config = write_config(tmp_path, limits={"max_waiting_per_user": 10})
    wide = tmp_path / "wide.jpg"
    Image.new("RGB", (200, 100), "orange").save(wide)
    mask = tmp_path / "mask.png"
    mask_image = Image.new("L", (200, 100), 0)
    mask_image.paste(255, (50, 25, 150, 75))
    mask_image.save(mask)
    small_mask = tmp_path / "small.png"
    Image.new("L", (20, 10), 255).save(small_mask)
    transparent = tmp_path / "hole.png"
    rgba = Image.new("RGBA", (64, 64), (0, 0, 255, 255))
    rgba.paste((0, 0, 0, 0), (16, 16, 48, 48))
    rgba.save(transparent)
    noisy = tmp_path / "noisy.png"
    Image.effect_noise((128, 128), 64).save(noisy)
    broken = tmp_path / "broken.png"  # a real PNG cut off halfway through its pixels
    broken.write_bytes(noisy.read_bytes()[: noisy.stat().st_size // 2])
    text = tmp_path / "notes.png"
    text.write_text("this is not a picture")

    first = run_console(config, ["/imagine a red circle --seed 1 --steps 5"])  # job 1
    assert first.images(1), first.stderr
    run = run_console(config, [
        "/vary 1 --strength 0.5 --seed 2",                                 # job 2
        f"/vary --image {wide} --prompt a blue circle",                   # job 3
        f"/inpaint a yellow square --image {wide} --mask {mask}",         # job 4
        f"/inpaint a yellow square --image {transparent}",                # job 5
        f"/inpaint a yellow square --image {wide} --mask {small_mask}",
        f"/vary --image {broken}",
        f"/vary --image {text}",
        f"/vary --image {tmp_path / 'missing.png'}",
        "/vary 99",
        "/imagine a green triangle --seed 3 --steps 5",                    # job 6
    ])
    assert run.returncode == 0, run.stderr
    replies = run.replies
    assert len(replies) == 10
    sizes = {job: (run.images(job)[0]["width"], run.images(job)[0]["height"])
             for job in range(2, 7)}
    assert sizes == {2: (64, 64), 3: (96, 48), 4: (96, 48), 5: (64, 64), 6: (64, 64)}
    assert "mask is 20×10 but the image is 200×100" in replies[4]["error"]
    assert "damaged" in replies[5]["error"]
    assert "not an image" in replies[6]["error"]
    assert "Cannot read the image" in replies[7]["error"]
    assert "no image #99" in replies[8]["error"]
    # Its position depends on how many of jobs 2-5 are done by then: a race, not a rule.
    assert re.fullmatch(r"Queued job #6, position [1-5]\.", replies[9]["text"])

    vary_row = job_row(config.parent / "canvas.db", 2)
    assert (vary_row["kind"], vary_row["prompt"], vary_row["source_image_id"],
            Params.from_json(vary_row["params"]).strength) == ("img2img", "a red circle", 1, 0.5)


def test_help_unknown_commands_and_bad_options_are_answered_politely(config):
    run = run_console(config, ["/help", "/dance", "/imagine a cat --seed -3", "hello",
                               "/imagine " + "x" * 10_000])
    assert run.returncode == 0
    help_text, unknown, seed, plain, long = run.replies
    assert "/imagine" in help_text["text"] and "/inpaint" in help_text["text"]
    assert unknown["error"].startswith("Unknown command /dance.") and "/vary" in unknown["error"]
    assert "seed" in seed["error"] and "-3" in seed["error"]
    assert "/help" in plain["error"]
    assert "10000" in long["error"] and "1000" in long["error"]


def test_a_bad_config_value_is_refused_with_its_key(tmp_path):
    config = write_config(tmp_path, engine={"device": "gpu"}, limits={"max_queue": -5})
    done = subprocess.run([sys.executable, "-m", "bot", "console", "--config", str(config)],
                          input="", capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "engine.device" in done.stderr and "gpu" in done.stderr


def test_the_bot_process_never_imports_torch_or_diffusers(config):
    script = textwrap.dedent(f"""
        import io, json, sys
        import bot.adapters.console, bot.cli, bot.commands, bot.config, bot.images
        import bot.queue, bot.service, bot.store, engine.client, engine.protocol
        sys.stdin = io.StringIO("/imagine a red circle --seed 1 --steps 3\\n")
        code = bot.cli.main(["console", "--json", "--config", {str(config)!r}])
        heavy = sorted(m for m in ("torch", "diffusers", "transformers", "numpy")
                       if m in sys.modules)
        print(json.dumps({{"type": "modules", "heavy": heavy}}))
        sys.exit(code)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert '"type": "image"' in done.stdout  # it really made an image ...
    assert '{"type": "modules", "heavy": []}' in done.stdout  # ... without loading torch


def test_piped_commands_wait_for_room_instead_of_being_refused(tmp_path):
    """The console is the operator's: past the per-user limit and a full queue, its commands
    wait (it stops reading) and every one gets its image."""
    config = write_config(tmp_path, limits={"max_waiting_per_user": 1, "max_queue": 2})
    count = 8
    run = run_console(config, [f"/imagine a red circle --seed {seed} --steps 2"
                               for seed in range(count)])
    assert run.returncode == 0, run.stderr
    assert not [r for r in run.records if r["type"] == "error"]
    assert [len(run.images(job)) for job in range(1, count + 1)] == [1] * count
    assert {image["model"] for job in range(1, count + 1) for image in run.images(job)} == {
        "shapes"}
