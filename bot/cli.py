"""`canvas run` and `canvas console`: wire settings, store, engines, service and adapters, then
start and stop them as one list of components."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import signal
import sys
from pathlib import Path
from typing import Protocol

from bot.config import ConfigError, EngineSettings, Settings, load_settings
from bot.service import Service
from bot.store import Store
from engine.blobs import LocalBlobs
from engine.client import EngineError, EngineHandle, EngineOptions, SubprocessTransport
from engine.pool import EnginePool
from engine.protocol import ModelSpec

log = logging.getLogger("canvas")


def blobs_of(settings: Settings) -> LocalBlobs:
    """The blob store: every picture and LoRA, kept under the images folder."""
    return LocalBlobs(settings.storage.images / "blobs")


def model_specs(engine: EngineSettings) -> tuple[ModelSpec, ...]:
    """The configured models for the engine, the default first."""
    catalogue = engine.catalogue
    names = [engine.model, *(name for name in catalogue if name != engine.model)]
    return tuple(
        ModelSpec(name, model.source, model.dtype if model.dtype != "auto" else engine.dtype,
                  model.quantize, model.offload, str(model.config or ""),
                  model.defaults.steps, model.defaults.cfg, model.description,
                  model.defaults.size)
        for name, model in ((name, catalogue[name]) for name in names))


def build_service(settings: Settings, store: Store) -> Service:
    engine, blobs = settings.engine, blobs_of(settings)
    options = EngineOptions(engine.model, engine.device, engine.dtype, engine.max_batch,
                            blobs.root, engine.compile, model_specs(engine), engine.memory)
    engines = EnginePool([EngineHandle(SubprocessTransport(options))])
    return Service(settings, store, engines, blobs)


class Component(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...


async def start_all(components: list[Component]) -> None:
    for component in components:
        await component.start()


async def stop_all(components: list[Component]) -> None:
    """In the order they started: the adapters, which take requests, stop first, so nothing
    new arrives while the service finishes; one that fails to stop does not keep the rest
    running."""
    for component in components:
        try:
            await component.stop()
        except Exception:
            log.exception("could not stop %s cleanly", type(component).__name__)


# Chat adapters by the settings section that holds their token, imported only when used.
CHAT_ADAPTERS = {
    "telegram": "bot.adapters.telegram:TelegramAdapter",
    "discord": "bot.adapters.discord:DiscordAdapter",
}


def load_adapter(platform: str) -> type:
    module, _, name = CHAT_ADAPTERS[platform].partition(":")
    return getattr(importlib.import_module(module), name)


async def serve(settings: Settings, *, console: bool | None = None,
                json_mode: bool = False) -> None:
    """Run the adapters until a stop signal (or, for the console alone, end of input), then
    stop cleanly: adapters first, so nothing new arrives, then the engine and the store.

    `console=None` means: the console only when no chat token is set."""
    from bot.adapters.console import ConsoleAdapter

    settings.storage.images.mkdir(parents=True, exist_ok=True)
    store = await Store.open(settings.storage.db, blobs_of(settings))
    service = build_service(settings, store)
    chats = [] if console else [p for p in CHAT_ADAPTERS if getattr(settings, p).token]
    adapters = [load_adapter(platform)(service, settings) for platform in chats]
    terminal = ConsoleAdapter(service, json_mode=json_mode) if console or not chats else None
    # Adapters first: each registers where its chats' results go before the service takes
    # up what an earlier run left undelivered.
    components: list[Component] = [*adapters, service]

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await start_all(components)
        log.info("serving on %s", ", ".join(chats + (["console"] if terminal else [])))
        waits = [asyncio.create_task(stop.wait())]
        if terminal:
            waits.append(asyncio.create_task(terminal.run()))
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for task in waits:
            task.cancel()
    finally:
        await stop_all(components)
        await store.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="canvas", description="Magic Canvas image bot")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="start every adapter whose token is set "
                                          "(the console when none is)")
    console = commands.add_parser("console", help="chat with the bot on this terminal")
    console.add_argument("--json", action="store_true", help="one JSON object per reply line")
    for sub in (run, console):
        sub.add_argument("--config", type=Path, help="settings file (default: ./config.yaml)")
    args = parser.parse_args(argv)

    try:
        settings = load_settings(args.config)
    except ConfigError as error:
        print(f"canvas: bad configuration: {error}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level, stream=sys.stderr,
                        format="%(asctime)s bot %(levelname)s %(name)s: %(message)s")
    try:
        console = True if args.command == "console" else None
        asyncio.run(serve(settings, console=console, json_mode=getattr(args, "json", False)))
    except EngineError as error:
        print(f"canvas: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0
