"""The slash commands, made from the command table (bot/commands/options.py): each option's
name, description, type, range, choices and suggestions come from there, and what a user picks
goes through the same typed parser (`cmd.parse_typed`) as every platform's, then is answered
by discord_flow. Attachments stay here: discord_flow checks and downloads them."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any, Optional

import discord
from discord import app_commands
from discord.app_commands import Choice, Range

from bot import commands as cmd
from bot.adapters.discord_flow import refuse, run_job, run_quick, service_of, user_of

PROMPT_CHARS = 1000  # a required prompt field's limit (Discord's is 6000); the configured one too
JOBS = (cmd.Imagine, cmd.Vary, cmd.Inpaint, cmd.Upscale)
_TYPES: dict[str, type] = {"int": int, "float": float, "str": str, "file": discord.Attachment}


async def _complete_checkpoint(interaction: discord.Interaction,
                               current: str) -> list[Choice[str]]:
    names = service_of(interaction).models.names
    return [Choice(name=name[:100], value=name[:100]) for name in names
            if current.lower() in name.lower()][:25]  # Discord shows at most 25


async def _complete_style(interaction: discord.Interaction, current: str) -> list[Choice[str]]:
    names = ["none", *service_of(interaction).settings.styles]
    return [Choice(name=name, value=name) for name in names
            if current.lower() in name.lower()][:25]


async def _complete_lora(interaction: discord.Interaction, current: str) -> list[Choice[str]]:
    """The LoRA names, completing the last of those typed so far (`ink:0.8, wa`)."""
    done, _, last = current.rpartition(",")
    prefix = f"{done}, " if done else ""
    names = [lora.name for lora in service_of(interaction).loras.all()]
    return [Choice(name=f"{prefix}{name}"[:100], value=f"{prefix}{name}"[:100])
            for name in names if last.strip().lower() in name.lower()][:25]


COMPLETERS: dict[str, Callable[[discord.Interaction, str], Awaitable[list[Choice[str]]]]] = {
    "checkpoints": _complete_checkpoint,
    "styles": _complete_style,
    "loras": _complete_lora,
}


def annotation(option: cmd.Option) -> Any:
    """The type discord.py makes the option's field from."""
    kind = option.kind
    base: Any = _TYPES[kind.field_type]
    if option.offered:
        base = Choice[str]
    elif kind.bounds is not None:
        base = Range[base, kind.bounds[0], kind.bounds[1]]
    elif kind.rest and option.required:  # a prompt
        base = Range[str, 1, PROMPT_CHARS]
    return base if option.required else Optional[base]  # noqa: UP045  # a runtime object


def _max_chars(interaction: discord.Interaction) -> int:
    return service_of(interaction).settings.limits.max_prompt_chars


async def answer(interaction: discord.Interaction, command: cmd.Command,
                 values: dict[str, Any]) -> None:
    """One slash command: refuse what is wrong at once, ephemerally; run the rest."""
    if command.admin and not service_of(interaction).is_admin(user_of(interaction)):
        # Refused at once for anyone not in `admins.discord`; the service checks again.
        await refuse(interaction, f"Sorry, only the bot's admins can use /{command.name}.")
        return
    values = {name: value.value if isinstance(value, Choice) else value
              for name, value in values.items()}
    files = {o.name: values.pop(o.name, None) for o in command.options
             if o.kind.field_type == "file"}
    if files.get("image") is not None and values.get("id") is not None:  # /vary
        await refuse(interaction, "Give either an image or an image id, not both.")
        return
    try:
        request = cmd.parse_typed(command.name, values, max_prompt_chars=_max_chars(interaction))
    except cmd.CommandError as error:
        await refuse(interaction, str(error))
        return
    if isinstance(request, cmd.Vary) and request.image_id is None and files["image"] is None:
        await refuse(interaction, "Which picture should I vary? Attach one, give the id of one "
                                  "of mine (/history lists yours), or press Vary under it.")
        return
    if isinstance(request, JOBS):
        await run_job(interaction, request, **files)
    else:
        await run_quick(interaction, request)


def callback(command: cmd.Command) -> Callable[..., Any]:
    """A callback whose signature and decorations discord.py reads the options from."""

    async def slash_command(interaction: discord.Interaction, **values: Any) -> None:
        await answer(interaction, command, values)

    first = inspect.Parameter("interaction", inspect.Parameter.POSITIONAL_OR_KEYWORD,
                              annotation=discord.Interaction)
    slash_command.__signature__ = inspect.Signature([first, *(  # type: ignore[attr-defined]
        inspect.Parameter(o.name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation(o),
                          default=inspect.Parameter.empty if o.required else None)
        for o in command.options)])
    options = command.options
    if options:
        app_commands.describe(**{o.name: o.description for o in options})(slash_command)
    if choices := {o.name: [Choice(name=n, value=v) for n, v in o.offered]
                   for o in options if o.offered}:
        app_commands.choices(**choices)(slash_command)
    if completers := {o.name: COMPLETERS[o.complete] for o in options if o.complete}:
        app_commands.autocomplete(**completers)(slash_command)
    return slash_command


def add_commands(tree: app_commands.CommandTree) -> None:
    """Put every slash command on `tree` (new Command objects each time, one set per client)."""
    for command in cmd.TABLE.values():
        tree.add_command(app_commands.Command(
            name=command.name, description=command.summary, callback=callback(command)))
