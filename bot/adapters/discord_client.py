"""The discord.py client: where it connects, which commands it syncs, and logs without tokens.

discord.py has no base-URL setting. REST calls (the bot's and the interaction webhooks') all
build their URL from the class attribute `discord.http.Route.BASE`, and a non-sharded client
connects to `DiscordWebSocket.DEFAULT_GATEWAY` (it does not ask `GET /gateway/bot`). So
`use_endpoints()` sets those two attributes, once, before login; empty settings put back
discord.py's own defaults. They are process-wide, which is fine: one process runs one bot.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING

import discord
import yarl
from discord import app_commands
from discord.gateway import DiscordWebSocket
from discord.http import INTERNAL_API_VERSION, Route

from bot.config import DiscordSettings

if TYPE_CHECKING:
    from bot.service import Service

log = logging.getLogger(__name__)

DEFAULT_API_BASE = Route.BASE
DEFAULT_GATEWAY = DiscordWebSocket.DEFAULT_GATEWAY


def use_endpoints(settings: DiscordSettings) -> None:
    """Point discord.py's REST calls and its gateway at the configured servers."""
    api = settings.api_base_url
    if api and not re.search(r"/v[0-9]+$", api):
        api = f"{api}/v{INTERNAL_API_VERSION}"  # the same path shape as discord.com/api/v10
    Route.BASE = api or DEFAULT_API_BASE
    gateway = settings.gateway_url
    DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(gateway) if gateway else DEFAULT_GATEWAY


# ---- logs ------------------------------------------------------------------------------------

# discord.py logs request URLs and gateway events at debug level; interaction and webhook URLs
# hold a token, and so does every INTERACTION_CREATE event.
_SECRETS = (
    re.compile(r"(/(?:webhooks|interactions)/[0-9]+/)[^/\s?'\"]+"),
    re.compile(r"""(['"]token['"]:\s*['"])[^'"]+"""),
)


class RedactTokens(logging.Filter):
    """Replace interaction and webhook tokens (in URLs and gateway events) with `<token>`."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = message
        for secret in _SECRETS:
            redacted = secret.sub(r"\1<token>", redacted)
        if redacted != message:
            record.msg, record.args = redacted, ()
        return True


_REDACT = RedactTokens()


def redact_discord_logs() -> None:
    """Install the filter on the loggers of discord.py that write URLs (idempotent)."""
    for name in ("discord.http", "discord.webhook.async_", "discord.client", "discord.gateway"):
        logger = logging.getLogger(name)
        if _REDACT not in logger.filters:
            logger.addFilter(_REDACT)


# ---- the client ------------------------------------------------------------------------------


class CanvasClient(discord.Client):
    """A discord.py client holding the service; slash commands on `tree`, buttons by custom id.

    Interactions need no gateway intents, so it asks for none (no privileged intents to enable
    in the developer portal)."""

    def __init__(self, service: Service, settings: DiscordSettings, data_dir: Path) -> None:
        # No guild events either, so there is nothing to wait for after READY.
        super().__init__(intents=discord.Intents.none(), guild_ready_timeout=0.1)
        self.service = service
        self.discord_settings = settings
        self.data_dir = data_dir
        self.tree = app_commands.CommandTree(self)
        self.synced = False  # whether the last start pushed commands to Discord

    async def setup_hook(self) -> None:
        # Imported here: those modules use this client, and this keeps the import order plain.
        from bot.adapters.discord_buttons import BUTTONS
        from bot.adapters.discord_commands import add_commands
        from bot.adapters.discord_flow import on_app_command_error

        add_commands(self.tree)
        self.tree.error(on_app_command_error)
        self.add_dynamic_items(*BUTTONS)
        self.synced = await sync_if_changed(self)


async def sync_if_changed(client: CanvasClient) -> bool:
    """Push the command tree to Discord only when it differs from the last push from this data
    folder (a hash of the payload, the application and the guilds is kept next to the database).
    With `guild_ids`, the commands are copied to each guild and synced there (instant, for
    testing) instead of globally (which can take a while to reach every client)."""
    tree, guild_ids = client.tree, client.discord_settings.guild_ids
    payload = [command.to_dict(tree) for command in tree.get_commands()]
    digest = hashlib.sha256(json.dumps(
        {"application": client.application_id, "guilds": sorted(guild_ids), "commands": payload},
        sort_keys=True).encode()).hexdigest()
    marker = client.data_dir / "discord-commands.sha256"
    if marker.is_file() and marker.read_text().strip() == digest:
        log.info("slash commands unchanged; not syncing")
        return False
    if guild_ids:
        for guild_id in guild_ids:
            guild = discord.Object(guild_id)
            tree.copy_global_to(guild=guild)
            await tree.sync(guild=guild)
        log.info("synced %d slash commands to guilds %s", len(payload), list(guild_ids))
    else:
        await tree.sync()
        log.info("synced %d slash commands globally", len(payload))
    client.data_dir.mkdir(parents=True, exist_ok=True)
    marker.write_text(digest + "\n")
    return True
