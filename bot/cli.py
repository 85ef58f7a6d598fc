"""`canvas run` and `canvas console`: wire settings, store, engine, service and adapters."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from bot.config import ConfigError, Settings, load_settings
from bot.service import Service
from bot.store import Store
from engine.client import EngineClient, EngineError, EngineOptions

log = logging.getLogger("canvas")


def build_service(settings: Settings, store: Store) -> Service:
    engine = settings.engine
    options = EngineOptions(engine.model, engine.device, engine.dtype, engine.max_batch,
                            settings.storage.images)
    return Service(settings, store, EngineClient(options))


async def serve(settings: Settings, *, json_mode: bool = False) -> None:
    """Run until the adapters finish (the console at end of input), then stop cleanly."""
    from bot.adapters.console import ConsoleAdapter

    settings.storage.images.mkdir(parents=True, exist_ok=True)
    store = await Store.open(settings.storage.db)
    service = build_service(settings, store)
    adapters = []
    for platform in ("telegram", "discord"):
        if getattr(settings, platform).token:
            log.warning("a %s token is set, but this version has no %s adapter yet; ignoring it",
                        platform, platform)
    console = ConsoleAdapter(service, json_mode=json_mode)
    adapters.append(console.run())
    try:
        await service.start()
        await asyncio.gather(*adapters)
    finally:
        await service.stop()
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
        asyncio.run(serve(settings, json_mode=getattr(args, "json", False)))
    except EngineError as error:
        print(f"canvas: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0
