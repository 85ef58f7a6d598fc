"""`canvas run` and `canvas console`: wire settings, store, engines, service and adapters, then
start and stop them as one list of components."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import signal
import socket
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
                            blobs.root, engine.compile, model_specs(engine), engine.memory,
                            engine.upscaler)
    local = [EngineHandle(SubprocessTransport(options))] if settings.queue.local_engine or \
        not settings.queue.url else []
    joiner = None
    if settings.queue.url:
        from engine.transport.redis import RedisHub  # redis-py only where it is used

        joiner = RedisHub(settings.queue.url, blobs, settings.queue.lease)
    return Service(settings, store, EnginePool(local, joiner), blobs)


def worker_arguments(settings: Settings, device: str | None, name: str | None,
                     blobs: Path | None) -> list[str]:
    """`python -m engine` as a remote worker for these settings."""
    engine = settings.engine
    options = EngineOptions(engine.model, device or engine.device, engine.dtype,
                            engine.max_batch, blobs or Path(), engine.compile,
                            model_specs(engine), engine.memory, engine.upscaler)
    arguments = options.arguments()
    at = arguments.index("--blobs")
    del arguments[at:at + 2]
    return [*arguments, *(["--blobs", str(blobs)] if blobs else []),
            "--worker", "--name", name or socket.gethostname(),
            "--lease", str(settings.queue.lease)]


def run_worker(settings: Settings, device: str | None, name: str | None,
               blobs: Path | None) -> int:
    """One engine worker serving the bot through Redis: no chat token, no database."""
    if not settings.queue.url:
        print("canvas worker: queue.url is not set; a worker serves a bot through Redis "
              "(see the README: Growing past one GPU)", file=sys.stderr)
        return 2
    command = [sys.executable, "-m", "engine", *worker_arguments(settings, device, name, blobs)]
    # The URL may hold a password: through the environment, not the command line (ps).
    os.environ["CANVAS_WORKER_REDIS_URL"] = settings.queue.url
    os.execv(sys.executable, command)  # the engine process itself; signals reach it directly
    return 0  # not reached


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
    from bot.web.app import WebServer

    settings.storage.images.mkdir(parents=True, exist_ok=True)
    store = await Store.open(settings.storage.db, blobs_of(settings))
    service = build_service(settings, store)
    chats = [] if console else [p for p in CHAT_ADAPTERS if getattr(settings, p).token]
    adapters = [load_adapter(platform)(service, settings) for platform in chats]
    terminal = ConsoleAdapter(service, json_mode=json_mode) if console or not chats else None
    # Adapters first: each registers where its chats' results go before the service takes
    # up what an earlier run left undelivered. The web app is one more way in.
    components: list[Component] = [*adapters, WebServer(service, settings), service]

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
    worker = commands.add_parser("worker", help="serve a bot's jobs on this machine's GPU, "
                                                "through Redis (queue.url)")
    worker.add_argument("--device", help="the device to run on, e.g. cuda:1 (default: "
                                         "engine.device)")
    worker.add_argument("--name", help="the worker's name in /queue (default: host name)")
    worker.add_argument("--blobs", type=Path,
                        help="a folder for pictures in transit (default: a temporary one)")
    for sub in (run, console, worker):
        sub.add_argument("--config", type=Path, help="settings file (default: ./config.yaml)")
    args = parser.parse_args(argv)

    try:
        settings = load_settings(args.config)
    except ConfigError as error:
        print(f"canvas: bad configuration: {error}", file=sys.stderr)
        return 2
    if args.command == "worker":
        return run_worker(settings, args.device, args.name, args.blobs)
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
