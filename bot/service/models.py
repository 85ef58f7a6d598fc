"""The named models as the bot knows them: what is configured, what the engine has on the
device (from its ModelLoaded reports), each load recorded in the store, and /models."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from bot.config import ModelSettings
from bot.store import Store
from engine import protocol

log = logging.getLogger(__name__)


@dataclass
class Seen:
    native_size: int
    family: str


class ModelBoard:
    def __init__(self, store: Store, catalogue: dict[str, ModelSettings], default: str) -> None:
        self.store = store
        self.catalogue = catalogue
        self.default = default
        self.on_device: list[str] = []  # least recently used first, as the engine keeps them
        self.seen: dict[str, Seen] = {}

    @property
    def names(self) -> list[str]:
        return [self.default, *(name for name in self.catalogue if name != self.default)]

    def check(self, name: str | None) -> None:
        """Raises ValueError with a message for the user if there is no such model."""
        if name is not None and name not in self.catalogue:
            raise ValueError(f"There is no model {name!r}. The models are "
                             f"{', '.join(self.names)}; /models says more.")

    async def loaded(self, event: protocol.ModelLoaded) -> None:
        self.on_device = [name for name in self.on_device
                          if name != event.name and name not in event.evicted] + [event.name]
        self.seen[event.name] = Seen(event.native_size, event.family)
        await self.store.record_load(event.name, event.came_from, event.seconds,
                                     event.device_bytes, event.evicted)
        log.info("model %s loaded from %s in %.1f s; models on the device: %s (%.0f MB)",
                 event.name, event.came_from, event.seconds, ", ".join(self.on_device),
                 event.device_bytes / 1e6)

    def forget_device(self) -> None:
        """The engine died: a new one starts with only its default model."""
        self.on_device = []

    async def text(self, admin: bool) -> str:
        speeds = await self.store.seconds_per_image()
        lines = ["Models (use one with /imagine ... --model <name>):"]
        for name in self.names:
            model, seen = self.catalogue[name], self.seen.get(name)
            parts = [f"{name}{' (default)' if name == self.default else ''}"]
            if model.description:
                parts.append(model.description)
            if seen:
                parts.append(f"{seen.family}, {seen.native_size} px")
            parts.append("in memory" if name in self.on_device else "not in memory")
            if name in speeds:
                parts.append(f"{speeds[name]:.2f} s an image")
            lines.append(" · ".join(parts))
        if admin:
            loads = await self.store.recent_loads()
            if loads:
                lines.append("Recent loads:")
            for load in loads:
                lines.append(f"{load['name']} from {load['came_from']} in {load['seconds']:.1f} s"
                             f", {load['device_bytes'] / 1e6:.0f} MB of models on the device")
        return "\n".join(lines)
