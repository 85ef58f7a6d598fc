"""A real redis-server for a test: on a free port of 127.0.0.1, in a temporary folder, with the
append-only file on (fsync always), so a test can kill it and start it again on the same data."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class RedisServer:
    def __init__(self, folder: Path, fsync: str = "always") -> None:
        """`fsync`: Redis' appendfsync, `always` (the tests: nothing acknowledged is lost) or
        `everysec` (what docker-compose.yml runs)."""
        self.folder = folder
        self.fsync = fsync
        self.port = free_port()
        self.process: subprocess.Popen | None = None
        folder.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed (apt-get install redis-server)")
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder),
             "--appendonly", "yes", "--appendfsync", self.fsync, "--save", "",
             "--protected-mode", "no"],
            stdout=(self.folder / "redis.log").open("ab"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as link:
                    link.sendall(b"PING\r\n")
                    if link.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not start: {(self.folder / 'redis.log').read_text()}")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def restart(self, wipe: bool = False) -> None:
        """Kill it and start it again: on its append-only file, or with `wipe`, on nothing
        (as a Redis without persistence comes back)."""
        self.kill()
        if wipe:
            for path in self.folder.glob("appendonly*"):
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        self.start()
