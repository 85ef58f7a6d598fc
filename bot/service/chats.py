"""Each chat's defaults (/settings): model, steps, aspect, style and safety policy.

A chat is a Telegram chat, a Discord channel, or the console. Its defaults sit between the
user's own options, which always win, and the model's; a chat with none set behaves as before.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, replace
from typing import Any

from bot import commands as cmd
from bot.config import StyleSettings
from bot.errors import UserError
from bot.service.models import ModelBoard
from bot.store import Store
from engine.params import Params

SAFETY = ("refuse", "spoiler")
log = logging.getLogger(__name__)


def chat_key(platform: str, origin: dict[str, Any]) -> str:
    """The chat a command came from: `telegram:<chat id>`, `discord:<channel id>`, `console`."""
    chat = origin.get("chat_id") or origin.get("channel_id")
    return f"{platform}:{chat}" if chat else platform


@dataclass(frozen=True)
class ChatDefaults:
    checkpoint: str | None = None
    steps: int | None = None
    aspect: tuple[int, int] | None = None
    style: str | None = None
    safety: str = "refuse"  # what happens to a picture the safety checker flags

    @property
    def params(self) -> Params:
        return Params(checkpoint=self.checkpoint, steps=self.steps, aspect=self.aspect,
                      style=self.style)

    def text(self) -> str:
        parts = [f"model {self.checkpoint}" if self.checkpoint else "",
                 f"{self.steps} steps" if self.steps else "",
                 f"aspect {self.aspect[0]}:{self.aspect[1]}" if self.aspect else "",
                 f"style {self.style}" if self.style else ""]
        chosen = " · ".join(filter(None, parts))
        flagged = ("sent hidden, as spoilers" if self.safety == "spoiler"
                   else "refused, with the reason")
        if not chosen:
            return ("This chat has no defaults of its own: the model's are used. Pictures the "
                    f"safety checker flags are {flagged}.")
        return (f"This chat's defaults: {chosen}. Pictures the safety checker flags are "
                f"{flagged}. Anyone's own options still win.")


class Chats:
    def __init__(self, store: Store, models: ModelBoard,
                 styles: dict[str, StyleSettings]) -> None:
        self.store = store
        self.models = models
        self.styles = styles

    async def defaults(self, chat: str) -> ChatDefaults:
        async with self.store.reader.execute(
                "SELECT settings FROM chat_settings WHERE chat = ?", (chat,)) as cursor:
            row = await cursor.fetchone()
        if row is None:
            return ChatDefaults()
        values = json.loads(row[0])
        if values.get("aspect"):
            values["aspect"] = tuple(values["aspect"])
        known = {name: value for name, value in values.items()
                 if name in ChatDefaults.__dataclass_fields__}
        # A default whose model or style has left the config since: not a reason for every
        # job in the chat to fail.
        if known.get("checkpoint") not in (None, *self.models.catalogue):
            log.warning("chat %s: its default model %r is no longer configured; ignored",
                        chat, known.pop("checkpoint"))
        if known.get("style") not in (None, *self.styles):
            log.warning("chat %s: its default style %r is no longer configured; ignored",
                        chat, known.pop("style"))
        return ChatDefaults(**known)

    async def handle(self, chat: str, request: cmd.ChatSettings, admin: bool) -> str:
        current = await self.defaults(chat)
        if request.action == "show" and not request.changes:
            return current.text()
        if not admin:
            raise UserError("Sorry, only the bot's admins can change this chat's settings; "
                            "/settings alone shows them.")
        if request.action == "reset":
            new = ChatDefaults()
        else:
            changes = dict(request.changes)
            if "checkpoint" in changes:
                try:
                    self.models.check(changes["checkpoint"])
                except ValueError as error:
                    raise UserError(str(error)) from None
            if changes.get("style") == "none":
                changes["style"] = None
            elif "style" in changes:
                self.check_style(changes["style"])
            new = replace(current, **changes)
        async with self.store.transaction() as db:
            await db.execute(
                """INSERT INTO chat_settings (chat, settings, updated_at) VALUES (?, ?, ?)
                   ON CONFLICT (chat) DO UPDATE SET settings = excluded.settings,
                       updated_at = excluded.updated_at""",
                (chat, json.dumps(asdict(new)), time.time()))
        return "Saved. " + new.text()

    def check_style(self, name: str) -> StyleSettings:
        style = self.styles.get(name.lower())
        if style is None:
            if not self.styles:
                raise UserError("This bot has no styles: its admins can add them under "
                                "`styles` in the settings.")
            raise UserError(f"There is no style {name!r}. The styles are "
                            f"{', '.join(self.styles)}; /styles says more.")
        return style

    def styled(self, params: Params) -> Params:
        """The prompt the model gets, from the style's template; the user's own words are
        kept in `words`. No style (or "none"): unchanged."""
        if not params.style or params.style == "none":
            return replace(params, style=None)
        style = self.check_style(params.style)
        negative = ", ".join(filter(None, [params.negative, style.negative])) or None
        return replace(params, style=params.style.lower(), words=params.prompt,
                       prompt=style.apply(params.prompt or ""), negative=negative)

    def styles_text(self) -> str:
        if not self.styles:
            return ("This bot has no styles yet: its admins can add them under `styles` in "
                    "the settings.")
        lines = ["Styles (use one with /imagine ... --style <name>):"]
        for name, style in self.styles.items():
            about = style.description or style.prompt
            lines.append(f"{name} · {about}")
        return "\n".join(lines)
