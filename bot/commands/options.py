"""Every command and option, declared once.

The text parser, the typed parser (bot/commands/parse.py), /help and the one-line command list
(bot/commands/help.py) and Discord's slash commands (bot/adapters/discord_commands.py) are all
made from `TABLE`. An option shared by several commands (the seed, the steps, ...) is one
`Option` used in each.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bot.commands import requests as rq
from bot.commands.values import (
    MAX_CFG,
    MAX_IMAGES,
    MAX_RANK,
    MAX_SCORE,
    MAX_SEED,
    MAX_STEPS,
    MAX_TRAIN_STEPS,
    Aspect,
    CommandError,
    File,
    Id,
    Kind,
    Loras,
    Name,
    Number,
    OneOf,
    Text,
    Usage,
    Whole,
    Word,
    shown,
)


@dataclass(frozen=True)
class Option:
    name: str  # the typed field's name (Discord's option name)
    kind: Kind
    about: str  # what it is for: its description on Discord, with the kind's range added
    flag: str | None = None  # typed as --flag; None: the words right after the command
    field: str = ""  # the request field (or Params field) it fills, when not `name`
    label: str = ""  # how messages name it; {opt} becomes --flag or the typed name
    example: str = ""  # a use of it, for messages: "--seed 42"
    hint: str = ""  # its placeholder in /help when not the kind's
    required: bool = False
    missing: str = ""  # said when a required option is not given (default: the usage)
    choices: tuple[tuple[str, str], ...] = ()  # (name, value) a typed field offers
    complete: str = ""  # what a typed field may suggest as the user types: "checkpoints"

    @property
    def target(self) -> str:
        return self.field or self.name

    @property
    def description(self) -> str:
        span = "" if self.offered else self.kind.span
        return f"{self.about} ({span})" if span else self.about

    @property
    def offered(self) -> tuple[tuple[str, str], ...]:
        return self.choices or tuple((value, value) for value in self.kind.choices)

    @property
    def placeholder(self) -> str:
        return self.hint or self.kind.hint

    @property
    def like(self) -> str:
        """The example's value: "--cfg 7.5" gives 7.5."""
        return self.example.partition(" ")[2]

    def label_for(self, typed: bool) -> str:
        return self.label.format(opt=self.name if typed else f"--{self.flag}")


@dataclass(frozen=True)
class Command:
    name: str
    summary: str  # one line: Telegram's command list, Discord's description and /help
    make: Callable[..., rq.Request]  # called with the checked values by request field
    options: tuple[Option, ...] = ()  # in the order Discord shows them
    usage: str | Callable[[list[str]], str] = ""  # said when the words do not fit; see usage_of
    rules: Callable[[dict[str, Any]], None] | None = None  # between options; may raise Usage
    more: str = ""  # what /help adds to the summary
    aliases: tuple[str, ...] = ()
    admin: bool = False  # for the bot's admins only
    anything: bool = False  # whatever follows is ignored (/help)

    @property
    def words(self) -> tuple[Option, ...]:
        """The options given as plain words after the command, in order."""
        return tuple(o for o in self.options if o.flag is None and o.kind.field_type != "file")

    @property
    def flags(self) -> tuple[Option, ...]:
        return tuple(o for o in self.options if o.flag is not None)

    def usage_of(self, words: list[str]) -> str:
        if callable(self.usage):
            return self.usage(words)
        template = self.usage or '/{name} takes nothing after it; you gave "{words}".'
        return template.format(
            name=self.name, words=shown(" ".join(words)), count=len(words),
            s="" if len(words) == 1 else "s",
            options=", ".join(f"--{o.flag}" for o in self.flags))


# ---- the options ------------------------------------------------------------------------------


def _prompt(about: str, example: str) -> Option:
    return Option("prompt", Text(), about, label="Your prompt", example=example, hint="prompt",
                  required=True, missing=f"Please describe the picture you want, like {example}.")


NEGATIVE = Option("negative", Text(), "What to keep out of the picture", flag="no",
                  label="The {opt} text", example="--no blurry, text", hint="<text to avoid>")
SEED = Option("seed", Whole(0, MAX_SEED), "Same seed and prompt give the same picture",
              flag="seed", label="seed", example="--seed 42")
STEPS = Option("steps", Whole(1, MAX_STEPS), "Denoising steps: more is slower and finer",
               flag="steps", label="number of steps", example="--steps 30")
CFG = Option("cfg", Number(0, MAX_CFG), "How closely to follow the prompt", flag="cfg",
             label="CFG scale", example="--cfg 7.5")
ASPECT = Option("aspect", Aspect(), "Shape of the picture", flag="ar", example="--ar 16:9",
                choices=(("1:1 square", "1:1"), ("4:3 landscape", "4:3"),
                         ("3:2 landscape", "3:2"), ("16:9 wide", "16:9"),
                         ("3:4 portrait", "3:4"), ("2:3 portrait", "2:3"), ("9:16 tall", "9:16")))
PICTURES = Option("n", Whole(1, MAX_IMAGES), "How many pictures", flag="n",
                  label="number of pictures ({opt})", example="--n 4")
CHECKPOINT = Option("model", Name(), "Model to draw with", flag="model", field="checkpoint",
                    label="model name", example="--model sdxl-base", complete="checkpoints")
STYLE = Option("style", Name(), "A style to draw in (/styles lists them; none: no style)",
               flag="style", label="style name", example="--style watercolor",
               complete="styles")
LORAS = Option("loras", Loras(), "LoRAs to add, NAME[:WEIGHT], up to 3 (/loras lists them)",
               flag="lora", label="LoRAs", example="--lora ink:0.8", complete="loras")
OF_MODEL = Option("model", Name(), "Which model (default: the default one)", flag="model",
                  field="checkpoint", label="model name", example="--model sdxl-base",
                  complete="checkpoints")

VARY_IMAGE = Option("image", File(), "A picture to vary (or give the id of one of mine)")
VARY_ID = Option("id", Id(), "The id of one of my pictures, like 12 or #12", field="image_id",
                 label="image id", hint="#id")
STRENGTH = Option("strength", Number(0, 1, above=True), "How far from the original",
                  flag="strength", label="strength", example="--strength 0.6")
NEW_PROMPT = Option("prompt", Text(), "A new description (default: the original one)",
                    flag="prompt", label="The {opt} text", example="--prompt a red fox",
                    hint="<text>")

PICTURE = Option("image", File(), "The picture; a PNG whose transparent part is to be repainted "
                 "needs no mask", required=True)
MASK = Option("mask", File(), "Same size as the picture: white = repaint, black = keep")

UPSCALED = Option("image", Id(), "The picture's id, like 12 or #12", field="image_id",
                  label="image id", hint="#id")
SCALE = Option("scale", Word(("2", "4")), "How many times wider and taller", flag="scale",
               label="scale", example="--scale 4", choices=(("2×", "2"), ("4×", "4")))

DELETED = Option("image", Id(), "The id of your picture, like 12 or #12", field="image_id",
                 label="image id", hint="#id")
CONFIRM = Option("action", OneOf(("ask", "confirm")), "ask: say what goes first; confirm: do it")

RATED = Option("image", Id(), "The picture's id, like 12 or #12", field="image_id",
               label="image id", hint="#id", required=True)
SCORE = Option("score", Whole(1, MAX_SCORE), "From bad to great", label="score", required=True)

JOB = Option("job", Id(whole=True), "The job number (default: your latest waiting or running "
             "job)", field="job_id", label="job id", hint="#job")

TRAINING = Option("action", OneOf(("start", "status", "cancel")),
                  "Start training, see its status, or stop it")
TRAIN_STEPS = Option("steps", Whole(1, MAX_TRAIN_STEPS), "Training steps", flag="steps",
                     label="number of training steps", example="--steps 30")
MIN_SCORE = Option("min_score", Number(1, MAX_SCORE), "Use pictures rated at least this",
                   flag="min-score", label="minimum score", example="--min-score 4")
RANK = Option("rank", Whole(1, MAX_RANK), "LoRA rank", flag="rank", label="rank",
              example="--rank 16")

VERSIONS = Option("action", OneOf(("list", "use")), "List the versions or switch to one")

CHAT_ACTION = Option("action", OneOf(("show", "reset")),
                     "Show this chat's defaults, or reset them all")
CHAT_MODEL = Option("model", Name(), "This chat's default model", flag="model",
                    field="checkpoint", label="model name", example="--model shapes",
                    complete="checkpoints")
CHAT_STEPS = Option("steps", Whole(1, MAX_STEPS), "This chat's default steps", flag="steps",
                    label="number of steps", example="--steps 30")
CHAT_ASPECT = Option("aspect", Aspect(), "This chat's default shape", flag="ar",
                     example="--ar 16:9", choices=ASPECT.choices)
CHAT_STYLE = Option("style", Name(), "This chat's default style (none: no style)",
                    flag="style", label="style name", example="--style watercolor",
                    complete="styles")
SAFETY = Option("safety", Word(("refuse", "spoiler")),
                "A picture the safety checker flags: refused, or sent hidden as a spoiler",
                flag="safety", label="safety policy", example="--safety spoiler")
VERSION = Option("version", Name(), "Version to use", label="model version", hint="version")


# ---- rules between options ---------------------------------------------------------------------


def _retrain_rules(values: dict[str, Any]) -> None:
    action = values["action"]
    if action != "start" and any(o.name in values for o in (TRAIN_STEPS, MIN_SCORE, RANK,
                                                             OF_MODEL)):
        raise CommandError(f"/retrain {action} takes no options.")


def _model_rules(values: dict[str, Any]) -> None:
    if ("version" in values) != (values["action"] == "use"):
        raise Usage


def _settings_rules(values: dict[str, Any]) -> None:
    if values["action"] == "reset" and len(values) > 1:
        raise CommandError("/settings reset takes no options: it clears all of this chat's "
                           "defaults.")


def _model_usage(words: list[str]) -> str:
    if words and words[0].lower() == "use":
        return ("/model use needs exactly one version name, like /model use v3; "
                "/model lists the versions.")
    return (f'I don\'t know /model "{shown(" ".join(words))}". '
            "Use /model to list the versions, or /model use <version> to switch.")


# ---- the commands ------------------------------------------------------------------------------

_COMMANDS = (
    Command("imagine", "Make pictures from a description", rq.imagine, (
        _prompt("What to draw, e.g. a red circle on a blue background",
                "/imagine a red fox in the snow"),
        NEGATIVE, SEED, STEPS, CFG, ASPECT, PICTURES, CHECKPOINT, STYLE, LORAS)),
    Command("vary", "Make a variation of a picture", rq.vary,
            (VARY_IMAGE, VARY_ID, STRENGTH, SEED, NEW_PROMPT),
            usage="/vary takes at most one image id, like /vary #12; to change the description "
                  "use --prompt, like /vary #12 --prompt a red fox.",
            more="Without #id: an attached picture."),
    Command("inpaint", "Repaint the masked part of an attached picture", rq.inpaint, (
        _prompt("What to paint into the masked part", "/inpaint a red woollen hat"),
        PICTURE, MASK, NEGATIVE, SEED, STEPS, CFG, STYLE, STRENGTH, LORAS),
            more="Attach its mask too (white = repaint)."),
    Command("upscale", "Make a picture twice or four times as large", rq.upscale,
            (UPSCALED, SCALE),
            usage="/upscale takes one image id, like /upscale #12 (add --scale 4 for four "
                  "times as large).",
            more="Default: twice as large."),
    Command("rate", f"Rate a picture from 1 to {MAX_SCORE}", rq.Rate, (RATED, SCORE),
            usage=f"/rate needs an image id and a score from 1 to {MAX_SCORE}, like /rate #12 4; "
                  "you gave {count} word{s}.",
            more="E.g. /rate #12 4."),
    Command("cancel", "Cancel a waiting or running job", rq.Cancel, (JOB,),
            usage="/cancel takes at most one job number, like /cancel #7; "
                  "on its own it cancels your latest job.",
            more="Without a number: your latest one."),
    Command("queue", "Show the jobs waiting and running", rq.ShowQueue),
    Command("models", "List the models to draw with", rq.ShowModels,
            more="Use one with /imagine ... --model <name>."),
    Command("loras", "List the LoRAs to add to a picture", rq.ShowLoras,
            more="Add one with /imagine ... --lora <name>[:weight]."),
    Command("styles", "List the styles to draw in", rq.ShowStyles,
            more="Use one with /imagine ... --style <name>."),
    Command("settings", "Show or set this chat's defaults", rq.ChatSettings,
            (CHAT_ACTION, CHAT_MODEL, CHAT_STEPS, CHAT_ASPECT, CHAT_STYLE, SAFETY),
            rules=_settings_rules,
            usage='I don\'t know /settings "{words}". Use /settings to see this chat\'s '
                  "defaults, /settings {options} to set them, or /settings reset.",
            more="Admins set them; everyone's own options still win."),
    Command("history", "Show your recent pictures", rq.History),
    Command("delete", "Delete one of your pictures", rq.Delete, (DELETED,),
            usage="/delete takes one image id, like /delete #12.",
            more="Its file, its ratings and its message go too."),
    Command("optout", "Keep your pictures and ratings out of training",
            lambda: rq.Training(False), more="/optin undoes it."),
    Command("optin", "Let training use your pictures and ratings (the default)",
            lambda: rq.Training(True)),
    Command("forgetme", "Remove everything the bot keeps about you", rq.forget_me, (CONFIRM,),
            usage="/forgetme asks first; /forgetme confirm goes ahead.",
            more="It asks you to confirm first."),
    Command("web", "Get a link that signs you in to the web gallery", rq.Web,
            more="The link is sent to you alone, works once, for 10 minutes."),
    Command("help", "Show every command and its options", rq.Help, aliases=("start",),
            anything=True),  # Telegram sends /start when someone first opens the bot
    Command("retrain", "Fine-tune the model on well-rated pictures", rq.Retrain,
            (TRAINING, TRAIN_STEPS, MIN_SCORE, RANK, OF_MODEL), rules=_retrain_rules,
            admin=True,
            usage='I don\'t know /retrain "{words}". Use /retrain (with optional {options}), '
                  "/retrain status or /retrain cancel.",
            more="/retrain status shows progress, /retrain cancel stops it."),
    Command("model", "List model versions or switch to one", rq.ModelCmd,
            (VERSIONS, VERSION, OF_MODEL),
            usage=_model_usage, rules=_model_rules, admin=True,
            more="/model use v3 switches to v3; --model names another model than the default."),
)

TABLE: dict[str, Command] = {command.name: command for command in _COMMANDS}
