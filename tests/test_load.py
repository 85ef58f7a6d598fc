"""benchmarks/load.py at a small size: 20 users x 3 commands through the fake Telegram server
to a real `python -m bot run` process with a small queue, so some commands are refused as
busy. Every command must get its photo or a clear refusal, exactly once, and nothing may
hang. (The full run, 200 users, is `python -m benchmarks.load`.)"""

from __future__ import annotations

import asyncio

import pytest

from benchmarks import load

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::telegram.warnings.PTBDeprecationWarning"),
]


def test_every_command_gets_a_photo_or_a_busy_reply(capsys: pytest.CaptureFixture[str]):
    args = load.parse(["--users", "20", "--commands", "3", "--spread", "2", "--groups", "1",
                       "--group-users", "2", "--max-queue", "4", "--steps", "20",
                       "--light-commands", "2", "--light-interval", "1", "--timeout", "40"])
    summary = asyncio.run(load.main_async(args))
    report = capsys.readouterr().out
    assert summary.ok, report
    assert sum(summary.load.values()) == 60
    assert set(summary.load) <= {"photo", "busy", "per-user limit"}, report
    assert summary.load["photo"] > 0 and summary.load["busy"] > 0, report
    assert len(summary.light["alone"]) == 2, report  # an empty queue: both get photos
    assert summary.peak_kb[0] > 0 and summary.peak_kb[1] > 0, report
