"""Stops and crashes of the bot process itself, as an operator would cause them: SIGKILL with
jobs waiting and running, and a graceful SIGTERM. Nothing is lost, nothing is sent twice."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

from tests.conftest import job_statuses, run_console, write_config

SLOW = "--steps 60"  # about a second each on this CPU


def start_console(config: Path, lines: list[str]) -> subprocess.Popen:
    """`canvas console --json` with its standard input left open (no end of input)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "bot", "console", "--json", "--config", str(config)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        cwd=config.parent)
    process.stdin.write("".join(line + "\n" for line in lines))
    process.stdin.flush()
    return process


def read_until(stream: IO[str], kind: str, timeout: float = 120) -> list[dict]:
    """Records from `stream` up to and including the first of type `kind`."""
    records, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = stream.readline()
        if not line:
            break
        records.append(json.loads(line))
        if records[-1]["type"] == kind:
            return records
    raise AssertionError(f"no {kind!r} record in {records}")


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(child) for child in path.read_text().split()] if path.exists() else []


def gone(pid: int, timeout: float = 20) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def images_by_job(records: list[dict]) -> dict[int, int]:
    counts: dict[int, int] = {}
    for record in records:
        if record["type"] == "image":
            counts[record["job"]] = counts.get(record["job"], 0) + 1
    return counts


def test_sigkill_with_jobs_waiting_and_running_loses_nothing_and_sends_nothing_twice(tmp_path):
    config = write_config(tmp_path, limits={"max_waiting_per_user": 10},
                          engine={"max_batch": 1})
    db = config.parent / "canvas.db"
    commands = [f"/imagine a red circle {SLOW} --seed {seed}" for seed in range(4)]
    bot = start_console(config, commands)
    before = read_until(bot.stdout, "image")
    # Kill once job 1's delivery is on record. (Killed between a chat's answer and that
    # record, a job would be delivered again at the next start: at least once, never lost.)
    deadline = time.monotonic() + 30
    while job_statuses(db)[1] != ("done", True) and time.monotonic() < deadline:
        time.sleep(0.02)
    [engine] = children(bot.pid)
    bot.kill()
    bot.wait()
    assert gone(engine), "the engine outlived the bot it served"
    first = images_by_job(before)
    assert 0 < len(first) < 4
    assert any(status in ("queued", "running") for status, _ in job_statuses(db).values())

    after = run_console(config, [])  # the same bot started again, with nothing new to do
    assert after.returncode == 0, after.stderr
    second = images_by_job(after.records)
    assert set(first) | set(second) == {1, 2, 3, 4}
    assert not set(first) & set(second), "a job was delivered twice"
    assert job_statuses(db) == {job: ("done", True) for job in (1, 2, 3, 4)}


def test_sigterm_stops_cleanly_and_the_next_start_finishes_the_work(tmp_path):
    config = write_config(tmp_path, limits={"max_waiting_per_user": 10})
    db = config.parent / "canvas.db"
    bot = start_console(config, [f"/imagine a blue square {SLOW} --seed {s}" for s in range(3)])
    read_until(bot.stdout, "progress")
    bot.send_signal(signal.SIGTERM)
    assert bot.wait(timeout=30) == 0
    left = job_statuses(db)
    assert all(status in ("queued", "running", "done") for status, _ in left.values())
    with sqlite3.connect(db) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)

    after = run_console(config, [])
    assert after.returncode == 0, after.stderr
    assert job_statuses(db) == {job: ("done", True) for job in (1, 2, 3)}
