"""Shared helpers: a config in a temporary folder, the console run as a real subprocess, and a
deliverer that records what a chat user would have been sent."""

from __future__ import annotations

import os

# Tests that run torch in this process do so beside engine processes and each other: with
# every core's worth of OpenMP threads busy-waiting against them, torch gets tens of times
# slower (the engine does the same for itself: one thread less than the cores).
os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 2) - 1)))

import asyncio
import contextlib
import json
import logging
import socket
import sqlite3
import subprocess
import sys
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from bot.cli import build_service
from bot.config import Settings
from bot.service import Service
from bot.store import ImageRow, JobRow, Store

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def job_row(db: Path, job_id: int) -> sqlite3.Row:
    """The job's row as it is in the SQLite file now (a second, read-only look)."""
    with contextlib.closing(sqlite3.connect(db)) as connection:
        connection.row_factory = sqlite3.Row
        return connection.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()


def job_statuses(db: Path) -> dict[int, tuple[str, bool]]:
    """Every job's status and whether it was delivered, as the SQLite file says now."""
    with contextlib.closing(sqlite3.connect(db)) as connection:
        rows = connection.execute(
            "SELECT id, status, delivered_at IS NOT NULL FROM jobs").fetchall()
    return {job: (status, bool(delivered)) for job, status, delivered in rows}


def engine_process(service: Service) -> asyncio.subprocess.Process:
    """The service's (one) engine process, for tests that kill it."""
    return service.engines.handles[0].transport.process


async def start_bot_process(config: Path) -> asyncio.subprocess.Process:
    """`canvas run` as its own process, as an operator starts it."""
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", "run", "--config", str(config),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)


async def until(condition: Callable[[], Any], timeout: float = 120) -> None:
    """Poll: for a bot in another process there is no event of its to wait on."""
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def running_bot(settings: Settings, make_adapter: Callable[[Service, Settings], Any]
                      ) -> AsyncIterator[tuple[Store, Service, Any]]:
    """A service on `settings` with one chat adapter, started as `canvas run` starts them
    (the adapter first) and stopped the other way round."""
    store = await Store.open(settings.storage.db)
    service = build_service(settings, store)
    adapter = make_adapter(service, settings)
    await adapter.start()
    await service.start()
    try:
        yield store, service, adapter
    finally:
        await adapter.stop()
        await service.stop()
        await store.close()


def fast_telegram_adapter(service: Service, settings: Settings) -> Any:
    """The Telegram adapter with short waits (albums, status edits), so tests need not sit
    through the real ones."""
    from bot.adapters.telegram import TelegramAdapter

    adapter = TelegramAdapter(service, settings)
    adapter.album_wait = 0.3
    adapter.status.private_interval = adapter.status.group_interval = 0.1
    return adapter


def write_config(folder: Path, **sections: dict[str, Any]) -> Path:
    """A config.yaml whose data lives in `folder`; keyword arguments override sections."""
    # No web server unless a test asks for one: tests run side by side, and 8080 is one port.
    config: dict[str, Any] = {"storage": {"db": "canvas.db", "images": "images"},
                              "web": {"listen": ""}}
    for name, values in sections.items():
        config.setdefault(name, {}).update(values)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@dataclass
class ConsoleRun:
    records: list[dict[str, Any]]
    stderr: str
    returncode: int

    @property
    def replies(self) -> list[dict[str, Any]]:
        """The immediate answer to each input line, in order (one per line)."""
        return [r for r in self.records
                if r["type"] == "text" or (r["type"] == "error" and "job" not in r)]

    def images(self, job_id: int) -> list[dict[str, Any]]:
        return [r for r in self.records if r["type"] == "image" and r["job"] == job_id]

    def failure(self, job_id: int) -> str | None:
        for r in self.records:
            if r["type"] == "error" and r.get("job") == job_id:
                return r["error"]
        return None


def run_console(config: Path, lines: list[str], timeout: float = 180) -> ConsoleRun:
    """`canvas console --json` as a user runs it, fed `lines` on standard input."""
    done = subprocess.run(
        [sys.executable, "-m", "bot", "console", "--json", "--config", str(config)],
        input="\n".join(lines) + "\n", capture_output=True, text=True, timeout=timeout,
        cwd=config.parent,
    )
    records = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    return ConsoleRun(records, done.stderr, done.returncode)


class LogLines(logging.Handler):
    """Every log line, formatted, for tests that check what reaches the logs (no tokens)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@contextlib.contextmanager
def capture_logs() -> Iterator[LogLines]:
    """Every log line of every logger, DEBUG included, while the block runs."""
    lines, root = LogLines(), logging.getLogger()
    old_level = root.level
    root.addHandler(lines)
    root.setLevel(logging.DEBUG)
    try:
        yield lines
    finally:
        root.removeHandler(lines)
        root.setLevel(old_level)


class Recorder:
    """A Deliverer that keeps what it was asked to deliver, for tests to wait on."""

    def __init__(self) -> None:
        self.steps: dict[int, list[tuple[int, int]]] = defaultdict(list)
        self.images: dict[int, list[ImageRow]] = {}
        self.failures: dict[int, str] = {}
        self.deliveries: list[int] = []
        self.announcements: list[str] = []
        self._done: dict[int, asyncio.Event] = defaultdict(asyncio.Event)
        self._started: dict[int, asyncio.Event] = defaultdict(asyncio.Event)

    async def progress(self, job: JobRow, step: int, total: int) -> None:
        self.steps[job.id].append((step, total))
        self._started[job.id].set()

    async def deliver_images(self, job: JobRow, images: list[ImageRow]) -> None:
        self.images[job.id] = images
        self.deliveries.append(job.id)
        self._done[job.id].set()

    async def deliver_failure(self, job: JobRow, message: str) -> None:
        self.failures[job.id] = message
        self.deliveries.append(job.id)
        self._done[job.id].set()

    async def announce(self, origin: dict[str, Any], text: str) -> None:
        self.announcements.append(text)

    async def announcement(self, part: str, timeout: float = 30) -> str:
        """The first announcement containing `part`, once it has been made."""
        for _ in range(int(timeout / 0.05)):
            for text in self.announcements:
                if part in text:
                    return text
            await asyncio.sleep(0.05)
        raise AssertionError(f"no announcement with {part!r} in {self.announcements}")

    async def wait(self, job_id: int, timeout: float = 60) -> None:
        await asyncio.wait_for(self._done[job_id].wait(), timeout)

    async def wait_started(self, job_id: int, timeout: float = 60) -> None:
        await asyncio.wait_for(self._started[job_id].wait(), timeout)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return write_config(tmp_path)


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No download, here or in a console subprocess: huggingface_hub reads the variable at
    import, so this process is told directly too."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
