"""The slash commands: typed options with descriptions, turned into the same validated requests as
the text commands (bot/commands.py), then answered by discord_flow."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import discord
from discord import app_commands
from discord.app_commands import Choice, Range

from bot import commands as cmd
from bot.adapters.discord_flow import refuse, run_job, run_quick, service_of, user_of

ASPECTS = [
    Choice(name="1:1 square", value="1:1"),
    Choice(name="4:3 landscape", value="4:3"),
    Choice(name="3:2 landscape", value="3:2"),
    Choice(name="16:9 wide", value="16:9"),
    Choice(name="3:4 portrait", value="3:4"),
    Choice(name="2:3 portrait", value="2:3"),
    Choice(name="9:16 tall", value="9:16"),
]

Seed = Range[int, 0, cmd.MAX_SEED]
Steps = Range[int, 1, cmd.MAX_STEPS]
Cfg = Range[float, 0.0, cmd.MAX_CFG]
Prompt = Range[str, 1, 1000]  # Discord's limit is 6000; the configured limit is checked too


def _max_chars(interaction: discord.Interaction) -> int:
    return service_of(interaction).settings.limits.max_prompt_chars


async def _complete_model(interaction: discord.Interaction, current: str) -> list[Choice[str]]:
    name = service_of(interaction).model_name
    return [Choice(name=name[:100], value=name[:100])] if current.lower() in name.lower() else []


@app_commands.describe(
    prompt="What to draw, e.g. a red circle on a blue background",
    negative="What to keep out of the picture",
    seed="Same seed and prompt give the same picture (0 to 4294967295)",
    steps=f"Denoising steps, 1 to {cmd.MAX_STEPS}: more is slower and finer",
    cfg=f"How closely to follow the prompt, 0 to {cmd.MAX_CFG:g}",
    aspect="Shape of the picture",
    n=f"How many pictures, 1 to {cmd.MAX_IMAGES}",
    model="Model to draw with",
)
@app_commands.choices(aspect=ASPECTS)
@app_commands.autocomplete(model=_complete_model)
async def imagine(interaction: discord.Interaction, prompt: Prompt, negative: str | None = None,
                  seed: Seed | None = None, steps: Steps | None = None, cfg: Cfg | None = None,
                  aspect: Choice[str] | None = None, n: Range[int, 1, cmd.MAX_IMAGES] | None = None,
                  model: str | None = None) -> None:
    try:
        request = cmd.imagine_from_options(
            prompt, negative=negative, seed=seed, steps=steps, cfg=cfg,
            aspect=aspect.value if aspect else None, n=n, model=model,
            max_prompt_chars=_max_chars(interaction))
    except cmd.CommandError as error:
        await refuse(interaction, str(error))
        return
    await run_job(interaction, request)


@app_commands.describe(
    image="A picture to vary (or give the id of one of mine)",
    id="The id of one of my pictures, like 12 or #12",
    strength="How far from the original, above 0 and at most 1",
    seed="Seed for the new picture",
    prompt="A new description (default: the original one)",
)
async def vary(interaction: discord.Interaction, image: discord.Attachment | None = None,
               id: str | None = None, strength: Range[float, 0.0, 1.0] | None = None,
               seed: Seed | None = None, prompt: str | None = None) -> None:
    if image is not None and id is not None:
        await refuse(interaction, "Give either an image or an image id, not both.")
        return
    try:
        request = cmd.vary_from_options(id, strength=strength, seed=seed, prompt=prompt,
                                        max_prompt_chars=_max_chars(interaction))
    except cmd.CommandError as error:
        await refuse(interaction, str(error))
        return
    if image is None and request.image_id is None:
        await refuse(interaction, "Which picture should I vary? Attach one, give the id of one "
                                  "of mine (/history lists yours), or press Vary under it.")
        return
    await run_job(interaction, request, image=image)


@app_commands.describe(
    prompt="What to paint into the masked part",
    image="The picture; a PNG whose transparent part is to be repainted needs no mask",
    mask="Same size as the picture: white = repaint, black = keep",
    negative="What to keep out of the picture",
    seed="Seed for the new picture",
    steps=f"Denoising steps, 1 to {cmd.MAX_STEPS}",
    cfg=f"How closely to follow the prompt, 0 to {cmd.MAX_CFG:g}",
)
async def inpaint(interaction: discord.Interaction, prompt: Prompt, image: discord.Attachment,
                  mask: discord.Attachment | None = None, negative: str | None = None,
                  seed: Seed | None = None, steps: Steps | None = None,
                  cfg: Cfg | None = None) -> None:
    try:
        request = cmd.inpaint_from_options(prompt, negative=negative, seed=seed, steps=steps,
                                           cfg=cfg, max_prompt_chars=_max_chars(interaction))
    except cmd.CommandError as error:
        await refuse(interaction, str(error))
        return
    await run_job(interaction, request, image=image, mask=mask)


@app_commands.describe(image="The picture's id, like 12 or #12", score="1 (bad) to 5 (great)")
async def rate(interaction: discord.Interaction, image: str,
               score: Range[int, 1, cmd.MAX_SCORE]) -> None:
    try:
        request = cmd.rate_from_options(image, score)
    except cmd.CommandError as error:
        await refuse(interaction, str(error))
        return
    await run_quick(interaction, request)


@app_commands.describe(job="The job number (default: your latest waiting or running job)")
async def cancel(interaction: discord.Interaction,
                 job: Range[int, 1, cmd.MAX_ID] | None = None) -> None:
    await run_quick(interaction, cmd.Cancel(job))


async def queue(interaction: discord.Interaction) -> None:
    await run_quick(interaction, cmd.ShowQueue())


async def history(interaction: discord.Interaction) -> None:
    await run_quick(interaction, cmd.History())


async def help_command(interaction: discord.Interaction) -> None:
    await run_quick(interaction, cmd.Help())


@app_commands.describe(action="Start training, see its status, or stop it",
                       steps="Training steps", min_score="Use pictures rated at least this",
                       rank="LoRA rank")
@app_commands.choices(action=[Choice(name=a, value=a) for a in ("start", "status", "cancel")])
async def retrain(interaction: discord.Interaction, action: Choice[str] | None = None,
                  steps: Range[int, 1, cmd.MAX_TRAIN_STEPS] | None = None,
                  min_score: Range[float, 1.0, float(cmd.MAX_SCORE)] | None = None,
                  rank: Range[int, 1, cmd.MAX_RANK] | None = None) -> None:
    text = f"/retrain {action.value if action else ''}"
    options = {"steps": steps, "min-score": min_score, "rank": rank}
    text += "".join(f" --{name} {value}" for name, value in options.items() if value is not None)
    await _admin_only(interaction, "/retrain", text)


@app_commands.describe(action="List the versions or switch to one", version="Version to use")
@app_commands.choices(action=[Choice(name="list", value="list"), Choice(name="use", value="use")])
async def model(interaction: discord.Interaction, action: Choice[str] | None = None,
                version: str | None = None) -> None:
    text = f"/model {action.value if action else 'list'} {version or ''}"
    await _admin_only(interaction, "/model", text)


async def _admin_only(interaction: discord.Interaction, name: str, text: str) -> None:
    """Refused at once, ephemerally, for anyone not in `admins.discord`; the service checks
    again."""
    if not service_of(interaction).is_admin(user_of(interaction)):
        await refuse(interaction, f"Sorry, only the bot's admins can use {name}.")
        return
    try:
        request = cmd.parse(text)
    except cmd.CommandError as error:
        await refuse(interaction, str(error))
        return
    await run_quick(interaction, request)


CALLBACKS: dict[str, Callable[..., Any]] = {
    "imagine": imagine, "vary": vary, "inpaint": inpaint, "rate": rate, "cancel": cancel,
    "queue": queue, "history": history, "help": help_command, "retrain": retrain, "model": model,
}


def add_commands(tree: app_commands.CommandTree) -> None:
    """Put every slash command on `tree` (new Command objects each time, one set per client)."""
    for name, callback in CALLBACKS.items():
        tree.add_command(app_commands.Command(
            name=name, description=cmd.COMMANDS[name], callback=callback))
