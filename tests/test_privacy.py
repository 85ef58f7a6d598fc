"""Users' data in their own hands, on the console: /delete, /optout and /optin, /forgetme."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

from tests.conftest import run_console, write_config


def rows(db: Path, sql: str) -> list[tuple]:
    with contextlib.closing(sqlite3.connect(db)) as connection:
        return connection.execute(sql).fetchall()


def test_a_deleted_picture_is_gone_everywhere(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    db = config.parent / "canvas.db"
    made = run_console(config, ["/imagine a red circle on a blue background --steps 6",
                                "/imagine a blue square on a red background --steps 6"])
    first, second = (made.images(reply["job"])[0] for reply in made.replies)
    run_console(config, [f"/rate {first['image']} 5", f"/vary {first['image']}"])
    [(varied_source,)] = rows(db, "SELECT source_image_id FROM jobs WHERE kind = 'img2img'")
    assert varied_source == first["image"]

    run = run_console(config, [f"/delete #{first['image']}", f"/vary {first['image']}",
                               f"/rate {first['image']} 4", f"/upscale {first['image']}",
                               "/history", f"/delete {first['image']}", "/delete"])
    assert run.returncode == 0, run.stderr
    deleted, vary, rate, upscale, history, again, which = run.replies
    assert f"Deleted image #{first['image']}" in deleted["text"]
    for refused in (vary, rate, upscale, again):
        assert f"no image #{first['image']}" in refused["error"]
    assert f"image #{first['image']} " not in history["text"]
    assert f"image #{second['image']} " in history["text"]
    assert "Which picture" in which["error"]
    assert not Path(first["path"]).exists() and Path(second["path"]).exists()
    assert rows(db, f"SELECT * FROM ratings WHERE image_id = {first['image']}") == []
    assert rows(db, "SELECT source_image_id FROM jobs WHERE kind = 'img2img'") == [(None,)]
    assert rows(db, f"SELECT * FROM jobs WHERE id = {first['job']}") == []


def test_optout_optin_and_forgetme_after_confirming(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    db = config.parent / "canvas.db"
    made = run_console(config, ["/imagine a red circle on a blue background --steps 6"])
    [image] = made.images(made.replies[0]["job"])
    run = run_console(config, ["/optout", "/optin", "/optout", "/forgetme", "/history"])
    optout, optin, _, asked, history = run.replies
    assert "leave out your pictures and ratings" in optout["text"]
    assert "may use your pictures and ratings again" in optin["text"]
    assert rows(db, "SELECT trains FROM users") == [(0,)]
    assert "cannot be undone" in asked["text"] and "/forgetme confirm" in asked["text"]
    assert f"image #{image['image']}" in history["text"]  # asking removed nothing

    run = run_console(config, ["/forgetme confirm", "/history"])
    forgotten, history = run.replies
    assert "I have forgotten you (1 picture removed" in forgotten["text"]
    assert "no images yet" in history["text"]
    assert not Path(image["path"]).exists()
    assert rows(db, "SELECT COUNT(*) FROM jobs") == [(0,)]
    # The old row stays only for what others' records may point to, naming no one; the
    # /history after it was a new user's first command.
    assert rows(db, "SELECT name, trains FROM users WHERE platform_user_id LIKE 'forgotten-%'"
                ) == [(None, 0)]
