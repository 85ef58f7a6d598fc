"""The bot's side of the engine process: a start that takes long, an engine stuck while
loading, and a line on the engine's output that is not a message."""

from __future__ import annotations

import asyncio
import sys
import textwrap

import pytest

from engine import client as engine_client
from engine import protocol
from engine.client import (
    EngineError,
    EngineExited,
    EngineHandle,
    EngineOptions,
    SubprocessTransport,
)


def handle(tmp_path) -> EngineHandle:
    """The bundled model's engine process, its blob store in `tmp_path`."""
    return EngineHandle(SubprocessTransport(
        EngineOptions("bundled:shapes", "cpu", "auto", 1, tmp_path)))


async def test_an_engine_that_says_it_is_loading_may_take_longer_than_the_silence_limit(
        tmp_path, monkeypatch):
    """Loading the bundled model takes seconds, far past a 2 s silence limit: the engine's
    "still loading" messages keep the start going (a first download takes minutes)."""
    monkeypatch.setenv("CANVAS_LOADING_HEARTBEAT", "0.2")
    monkeypatch.setattr(engine_client, "START_SILENCE", 2.0)
    client = handle(tmp_path)
    try:
        ready = await client.start()
        assert ready.checkpoint == "bundled:shapes"
    finally:
        await client.stop()


async def test_an_engine_silent_while_loading_is_stopped_and_reported(tmp_path, monkeypatch):
    monkeypatch.setenv("CANVAS_LOADING_HEARTBEAT", "600")
    monkeypatch.setattr(engine_client, "START_SILENCE", 0.5)
    client = handle(tmp_path)
    with pytest.raises(EngineError, match="said nothing for 0 s while loading bundled:shapes"):
        await client.start()
    # not left loading in the background
    assert client.transport.process.returncode is not None


async def test_a_line_that_is_not_a_message_is_skipped_and_reading_goes_on(tmp_path):
    lines = ["this is not json", '{"type": "NoSuchMessage"}', '{"type": "Progress"}',
             protocol.encode(protocol.Progress(7, 1, 2)).decode().strip()]
    script = textwrap.dedent(f"""
        for line in {lines!r}:
            print(line, flush=True)
    """)
    client = handle(tmp_path)
    client.transport.process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, stdout=asyncio.subprocess.PIPE)
    await asyncio.wait_for(client._read_loop(), 30)
    events = [client.events.get_nowait() for _ in range(client.events.qsize())]
    assert events == [protocol.Progress(7, 1, 2), EngineExited(0, ())]


def test_telegram_edit_pacing_forgets_chats_whose_pacing_is_over():
    from bot.adapters.telegram_ui import PRUNE_AT, StatusEdits

    async def edit(chat_id: int, message_id: int, text: str) -> None: ...

    pacing = StatusEdits(edit, group_interval=0.0, private_interval=0.0)
    for chat in range(10 * PRUNE_AT):
        pacing.reserve(chat)
    assert len(pacing._next_slot) <= PRUNE_AT
