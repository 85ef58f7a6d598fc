"""How the bot reaches one engine: protocol messages out, protocol messages in.

`subprocess.py` is today's: a child process on this machine, one JSON line a message. A
transport to engines on other machines (Redis Streams) fits the same four calls; everything
above it (engine/client.py, engine/pool.py) stays as it is.
"""

from __future__ import annotations

from typing import Protocol

from engine import protocol


class Transport(Protocol):
    description: str  # for logs and errors: which engine this is

    async def open(self) -> None:
        """Start or reach the engine."""

    async def send(self, message: protocol.ToEngine) -> None:
        """Raises ConnectionError when the engine is gone."""

    async def receive(self) -> protocol.FromEngine | None:
        """The engine's next message; None once it is gone for good."""

    async def close(self, timeout: float) -> int | None:
        """Ask the engine to stop after its current step, wait up to `timeout`, then make it
        stop; its exit code (None where there is none to give)."""

    async def kill(self) -> int | None:
        """Stop the engine now (it is stuck); its exit code."""
