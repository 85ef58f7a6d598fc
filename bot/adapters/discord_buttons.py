"""Buttons under each result: Vary, Reroll and a 1-5 rating.

Each is a `DynamicItem` whose `custom_id` holds the action and the image id (`mc:vary:12`,
`mc:vary:12:subtle`, `mc:vary:12:strong`, `mc:reroll:12`, `mc:upscale:12`, `mc:rate:12:4`), so
any press is understood from the id alone: after a restart, by anyone, with no view kept in
memory and no timeout.
"""

from __future__ import annotations

import re
from typing import Any

import discord

from bot import commands as cmd
from bot.adapters.discord_flow import run_job, run_quick, service_of
from bot.service import User

MAX_ROW_ITEMS = 5


class VaryButton(discord.ui.DynamicItem[discord.ui.Button],
                 template=r"mc:vary:(?P<image>[0-9]{1,19})(?::(?P<how>subtle|strong))?"):
    def __init__(self, image_id: int, label: str = "Vary", how: str | None = None) -> None:
        suffix = f":{how}" if how else ""
        super().__init__(discord.ui.Button(label=label, emoji="🔀",
                                           style=discord.ButtonStyle.primary,
                                           custom_id=f"mc:vary:{image_id}{suffix}"))
        self.image_id, self.how = image_id, how

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Item[Any],
                             match: re.Match[str], /) -> VaryButton:
        return cls(int(match["image"]), how=match["how"])

    async def callback(self, interaction: discord.Interaction) -> None:
        await run_job(interaction, cmd.varied(self.image_id, self.how))


class UpscaleButton(discord.ui.DynamicItem[discord.ui.Button],
                    template=r"mc:upscale:(?P<image>[0-9]{1,19})"):
    def __init__(self, image_id: int, label: str = "Upscale") -> None:
        super().__init__(discord.ui.Button(label=label, emoji="⬆️",
                                           style=discord.ButtonStyle.secondary,
                                           custom_id=f"mc:upscale:{image_id}"))
        self.image_id = image_id

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Item[Any],
                             match: re.Match[str], /) -> UpscaleButton:
        return cls(int(match["image"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        await run_job(interaction, cmd.Upscale(self.image_id))


class RerollButton(discord.ui.DynamicItem[discord.ui.Button],
                   template=r"mc:reroll:(?P<image>[0-9]{1,19})"):
    def __init__(self, image_id: int) -> None:
        super().__init__(discord.ui.Button(label="Reroll", emoji="🎲",
                                           style=discord.ButtonStyle.secondary,
                                           custom_id=f"mc:reroll:{image_id}"))
        self.image_id = image_id

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Item[Any],
                             match: re.Match[str], /) -> RerollButton:
        return cls(int(match["image"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        service = service_of(interaction)

        async def submit(user: User, origin: dict) -> Any:
            return await service.reroll(user, self.image_id, origin)

        await run_job(interaction, None, submit=submit)


class RateButton(discord.ui.DynamicItem[discord.ui.Button],
                 template=r"mc:rate:(?P<image>[0-9]{1,19}):(?P<score>[1-5])"):
    def __init__(self, image_id: int, score: int, label: str | None = None) -> None:
        super().__init__(discord.ui.Button(label=label or f"{score}★",
                                           style=discord.ButtonStyle.secondary,
                                           custom_id=f"mc:rate:{image_id}:{score}"))
        self.image_id, self.score = image_id, score

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Item[Any],
                             match: re.Match[str], /) -> RateButton:
        return cls(int(match["image"]), int(match["score"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        await run_quick(interaction, cmd.Rate(self.image_id, self.score))


class ForgetButton(discord.ui.DynamicItem[discord.ui.Button],
                   template=r"mc:forget:(?P<user>[0-9]{1,20})"):
    """/forgetme's confirmation: it works only for the user who asked."""

    def __init__(self, user_id: int) -> None:
        super().__init__(discord.ui.Button(label="Yes, forget me",
                                           style=discord.ButtonStyle.danger,
                                           custom_id=f"mc:forget:{user_id}"))
        self.user_id = user_id

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Item[Any],
                             match: re.Match[str], /) -> ForgetButton:
        return cls(int(match["user"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        if interaction.user.id != self.user_id:
            await interaction.response.send_message(
                "This button is for the one who sent /forgetme.", ephemeral=True)
            return
        await run_quick(interaction, cmd.ForgetMe(confirm=True))


def confirm_view(user_id: int) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    view.add_item(ForgetButton(user_id))
    return view


BUTTONS = (VaryButton, RerollButton, UpscaleButton, RateButton, ForgetButton)
MAX_ROWS = 5  # Discord's limit


def result_view(image_ids: list[int]) -> discord.ui.View:
    """The buttons under a result. One picture: Vary (Subtle), Vary (Strong), Reroll and
    Upscale, then its ratings. Several: a Vary each and Reroll, an Upscale each where a row is
    left (up to 3 pictures), then a row of ratings each (at most 4 pictures)."""
    view = discord.ui.View(timeout=None)

    def add(item: discord.ui.Item, row: int) -> None:
        item.row = row
        view.add_item(item)

    if len(image_ids) == 1:
        [image_id] = image_ids
        add(VaryButton(image_id, "Vary (Subtle)", "subtle"), 0)
        add(VaryButton(image_id, "Vary (Strong)", "strong"), 0)
        add(RerollButton(image_id), 0)
        add(UpscaleButton(image_id), 0)
        rating_rows = 1
    else:
        for number, image_id in enumerate(image_ids, 1):
            add(VaryButton(image_id, f"Vary {number}"), 0)
        add(RerollButton(image_ids[0]), 0)
        rating_rows = 1
        if 2 + len(image_ids) <= MAX_ROWS:
            for number, image_id in enumerate(image_ids, 1):
                add(UpscaleButton(image_id, f"Upscale {number}"), 1)
            rating_rows = 2
    several = len(image_ids) > 1
    for row, (number, image_id) in enumerate(enumerate(image_ids, 1), rating_rows):
        for score in range(1, cmd.MAX_SCORE + 1):
            label = f"{number}: {score}★" if several and score == 1 else f"{score}★"
            button = RateButton(image_id, score, label)
            button.row = row
            view.add_item(button)
    return view
