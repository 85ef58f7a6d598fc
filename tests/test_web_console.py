"""The web gallery from `canvas console`, as an operator starts it: where it is, /web, and a
port that is taken."""

from __future__ import annotations

import socket
from pathlib import Path

from tests.conftest import free_port, run_console, write_config


def test_the_console_says_where_the_gallery_is_and_web_gives_a_link(tmp_path: Path) -> None:
    port = free_port()
    config = write_config(tmp_path, web={"listen": f"127.0.0.1:{port}"})
    run = run_console(config, ["/web"])
    assert run.returncode == 0, run.stderr
    assert f"the gallery is at http://127.0.0.1:{port}" in run.stderr
    [reply] = run.replies
    assert reply["link"].startswith(f"http://127.0.0.1:{port}/signin/")
    assert reply["link"] in reply["text"] and "10 minutes" in reply["text"]


def test_a_taken_port_leaves_the_bot_serving_without_the_gallery(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_config(tmp_path, web={"listen": f"127.0.0.1:{port}"})
        run = run_console(config, ["/web", "/imagine a red circle on a blue background --steps 2"])
    assert run.returncode == 0, run.stderr
    assert "the web gallery is off" in run.stderr
    assert "not running on this bot" in run.replies[0]["error"]
    assert len(run.images(run.replies[1]["job"])) == 1
