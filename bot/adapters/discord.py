"""The Discord adapter: slash commands and buttons in, pictures out, on discord.py.

    discord_client.py    where to connect (REST base, gateway), command sync, token-free logs
    discord_commands.py  the slash commands and their typed options
    discord_buttons.py   Vary / Reroll / rating buttons that survive restarts
    discord_flow.py      answering one interaction: check, defer, queue, ephemeral errors
    discord_delivery.py  progress edits, results and failures, in the channel after 15 minutes

Settings: `discord.token`; `discord.api_base_url` (a REST proxy or test server, e.g.
`http://127.0.0.1:8080/api`; `/v10` is added unless the URL ends in a version);
`discord.gateway_url` (`wss://…`); `discord.guild_ids` (sync commands to these guilds only, for
testing); `admins.discord` (user ids allowed /retrain and /model).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from bot.adapters.discord_client import CanvasClient, redact_discord_logs, use_endpoints
from bot.adapters.discord_delivery import Delivery
from bot.adapters.discord_flow import PLATFORM
from bot.config import Settings
from bot.service import Service
from bot.store import ImageRow, JobRow

log = logging.getLogger(__name__)

READY_TIMEOUT = 30.0


class DiscordAdapter:
    def __init__(self, service: Service, settings: Settings) -> None:
        self.service = service
        self.settings = settings
        self.client = CanvasClient(service, settings.discord, settings.storage.db.parent)
        self.delivery = Delivery(self.client, service)
        self._gateway: asyncio.Task | None = None
        service.register(PLATFORM, self)

    async def start(self) -> None:
        """Log in (which syncs the commands if they changed), connect to the gateway in the
        background, and return once Discord says the bot is ready (or after READY_TIMEOUT, while
        it keeps trying). A bad token raises here."""
        redact_discord_logs()
        use_endpoints(self.settings.discord)
        await self.client.login(self.settings.discord.token)
        self._gateway = asyncio.create_task(self.client.connect(), name="discord-gateway")
        ready = asyncio.create_task(self.client.wait_until_ready())
        done, _ = await asyncio.wait({ready, self._gateway}, timeout=READY_TIMEOUT,
                                     return_when=asyncio.FIRST_COMPLETED)
        if ready not in done:
            ready.cancel()
        if self._gateway in done:
            self._gateway.result()  # raises what stopped it (e.g. a refused identify)
            raise RuntimeError("the Discord gateway connection ended at start")
        if not done:
            log.warning("not connected to the Discord gateway after %.0f s; still trying",
                        READY_TIMEOUT)
        else:
            log.info("connected to Discord as %s", self.client.user)

    async def stop(self) -> None:
        self.delivery.close()
        await self.client.close()
        if self._gateway is not None:
            await asyncio.gather(self._gateway, return_exceptions=True)

    # ---- the Deliverer the service calls -------------------------------------------------------

    async def progress(self, job: JobRow, step: int, total: int) -> None:
        await self.delivery.progress(job, step, total)

    async def deliver_images(self, job: JobRow, images: list[ImageRow]) -> None:
        await self.delivery.deliver_images(job, images)

    async def deliver_failure(self, job: JobRow, message: str) -> None:
        await self.delivery.deliver_failure(job, message)

    async def announce(self, origin: dict[str, Any], text: str) -> None:
        await self.delivery.announce(origin, text)

    async def retract(self, job: JobRow, image: ImageRow) -> None:
        await self.delivery.retract(job, image)
