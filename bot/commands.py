"""Parse chat command text into validated, platform-neutral requests.

The same words work on Discord, Telegram and the console, e.g.::

    /imagine a cat's hat, watercolour --no blurry, text --seed 42 --ar 16:9

Every malformed command raises CommandError with a polite message that says what was
wrong and what is allowed; adapters show that message to the user as is.

This module imports only the standard library: it runs in the bot process, which must
never import torch.
"""

from __future__ import annotations

import difflib
import math
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

MAX_SEED = 2**32 - 1
MAX_ID = 2**63 - 1  # SQLite's largest INTEGER; ids are database row ids

MAX_STEPS = 100
MAX_CFG = 30.0
MAX_SIDE = 64  # largest W or H in --ar W:H
MAX_RATIO = 4  # --ar may be at most 4:1 either way
MAX_IMAGES = 4
MAX_SCORE = 5
MAX_RANK = 128
MAX_TRAIN_STEPS = 100_000
MAX_NAME_CHARS = 200


class CommandError(ValueError):
    """A command the user typed could not be understood; `message` is for the user."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class Imagine:
    prompt: str
    negative: str = ""
    seed: int | None = None
    steps: int | None = None
    cfg: float | None = None
    aspect: tuple[int, int] = (1, 1)  # reduced to lowest terms: 32:18 becomes (16, 9)
    n: int = 1
    model: str | None = None


@dataclass(frozen=True)
class Vary:
    image_id: int | None = None  # None: the platform should supply an attached image
    strength: float | None = None
    seed: int | None = None
    prompt: str | None = None


@dataclass(frozen=True)
class Inpaint:
    prompt: str
    negative: str = ""
    seed: int | None = None
    steps: int | None = None
    cfg: float | None = None


@dataclass(frozen=True)
class Rate:
    image_id: int
    score: int


@dataclass(frozen=True)
class Cancel:
    job_id: int | None = None  # None: the user's most recent waiting or running job


@dataclass(frozen=True)
class ShowQueue:
    pass


@dataclass(frozen=True)
class History:
    pass


@dataclass(frozen=True)
class Help:
    pass


@dataclass(frozen=True)
class Retrain:
    action: Literal["start", "status", "cancel"] = "start"
    steps: int | None = None
    min_score: float | None = None
    rank: int | None = None


@dataclass(frozen=True)
class ModelCmd:
    action: Literal["list", "use"] = "list"
    version: str | None = None


Request = Imagine | Vary | Inpaint | Rate | Cancel | ShowQueue | History | Help | Retrain | ModelCmd


COMMANDS: dict[str, str] = {
    "imagine": "Make pictures from a description",
    "vary": "Make a variation of a picture",
    "inpaint": "Repaint the masked part of an attached picture",
    "rate": "Rate a picture from 1 to 5",
    "cancel": "Cancel a waiting or running job",
    "queue": "Show the jobs waiting and running",
    "history": "Show your recent pictures",
    "help": "Show every command and its options",
    "retrain": "Fine-tune the model on well-rated pictures",
    "model": "List model versions or switch to one",
}

HELP_TEXT = f"""\
Magic Canvas commands:

/imagine <prompt> [options] - make pictures from a description.
  --no <text to avoid>, --seed 0-{MAX_SEED}, --steps 1-{MAX_STEPS}, --cfg 0-{MAX_CFG:g},
  --ar W:H (each 1-{MAX_SIDE}, 1:{MAX_RATIO} to {MAX_RATIO}:1, e.g. 16:9), --n 1-{MAX_IMAGES}, \
--model <name>
/vary [#id] [--strength 0-1] [--seed N] [--prompt <text>] - a variation of picture #id
  (or of an attached picture). Strength is above 0 and at most 1.
/inpaint <prompt> [--no <text>] [--seed N] [--steps N] [--cfg X] - repaint the masked area;
  attach the picture and its mask.
/rate <#id> <1-{MAX_SCORE}> - rate a picture, e.g. /rate #12 4.
/cancel [#job] - cancel a job; without a number, your latest waiting or running one.
/queue - show the jobs waiting and running.
/history - show your recent pictures.
/retrain [--steps 1-{MAX_TRAIN_STEPS}] [--min-score 1-{MAX_SCORE}] [--rank 1-{MAX_RANK}] \
- fine-tune on well-rated pictures;
  /retrain status shows progress, /retrain cancel stops it.
/model - list model versions; /model use <version> switches to one.
/help - show this help.

Ids may be written 12 or #12. Options may come anywhere after the command;
--no and --prompt take all the text up to the next option."""


# ---------------------------------------------------------------------------
# Text normalisation

_KEPT_CONTROLS = frozenset(" \t\n\r\x0b\x0c")


def _clean(text: str) -> str:
    """Drop control characters (null bytes, escapes, ...) but keep ordinary whitespace.

    Category Cc is what terminals and databases choke on; lone surrogates (Cs) cannot be
    encoded as UTF-8, so they go too. Everything else, emoji and right-to-left text
    included, is kept as typed.
    """
    return "".join(
        ch for ch in text if ch in _KEPT_CONTROLS or unicodedata.category(ch) not in ("Cc", "Cs")
    )


def _shown(value: str, limit: int = 40) -> str:
    """The user's input, shortened so an error message never echoes a wall of text."""
    return value if len(value) <= limit else value[: limit - 1] + "…"


# ---------------------------------------------------------------------------
# Options

# Options whose value is all the text up to the next option; the rest take one token.
_TEXT_OPTIONS = frozenset({"no", "prompt"})

_EXAMPLES = {
    "no": "--no blurry, text",
    "prompt": "--prompt a red fox",
    "seed": "--seed 42",
    "steps": "--steps 30",
    "cfg": "--cfg 7.5",
    "ar": "--ar 16:9",
    "n": "--n 4",
    "model": "--model sdxl-base",
    "strength": "--strength 0.6",
    "min-score": "--min-score 4",
    "rank": "--rank 16",
}


@dataclass
class _Args:
    words: list[str]  # everything that is not an option or an option's value, in order
    options: dict[str, str]


def _option_name(token: str) -> str | None:
    """What follows the dashes of an option token (`--seed` -> "seed"), or None for text.

    Phones turn `--` into an em-dash, so `—seed` counts as `--seed` too.
    """
    if token.startswith("--"):
        rest = token[2:]
    elif token.startswith("—"):
        rest = token[1:]
    else:
        return None
    if not rest[:1].isalpha():
        return None  # "--", "—" or "--5" are prose, not options
    return rest


def _unknown_option(command: str, name: str, allowed: tuple[str, ...]) -> CommandError:
    if not allowed:
        return CommandError(
            f"Unknown option --{_shown(name)} for /{command}. /{command} takes no options."
        )
    message = f"Unknown option --{_shown(name)} for /{command}. Options: " + ", ".join(
        f"--{option}" for option in allowed
    )
    guess = difflib.get_close_matches(name, allowed, n=1)
    if guess:
        message += f". Did you mean --{guess[0]}?"
    else:
        message += "."
    return CommandError(message)


def _missing_value(name: str) -> CommandError:
    if name in _TEXT_OPTIONS:
        return CommandError(f"--{name} needs some text after it, like {_EXAMPLES[name]}.")
    return CommandError(f"--{name} needs a value right after it, like {_EXAMPLES[name]}.")


def _scan(command: str, tokens: list[str], allowed: tuple[str, ...]) -> _Args:
    """Split tokens into plain words and option values, checking option names."""
    words: list[str] = []
    options: dict[str, str] = {}
    i = 0
    while i < len(tokens):
        token = tokens[i]
        name = _option_name(token)
        i += 1
        if name is None:
            words.append(token)
            continue
        name, _, inline = name.partition("=")  # `--seed=42` works as well as `--seed 42`
        name = name.lower().replace("_", "-")
        if name not in allowed:
            raise _unknown_option(command, name, allowed)
        if name in options:
            raise CommandError(f"You gave --{name} twice; please give it only once.")
        values = [inline] if inline else []
        if name in _TEXT_OPTIONS:
            while i < len(tokens) and _option_name(tokens[i]) is None:
                values.append(tokens[i])
                i += 1
        elif not values and i < len(tokens) and _option_name(tokens[i]) is None:
            values.append(tokens[i])
            i += 1
        if not values:
            raise _missing_value(name)
        options[name] = " ".join(values)
    return _Args(words, options)


# ---------------------------------------------------------------------------
# Values

_INT = re.compile(r"[+-]?[0-9]+")
_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")  # no exponents, nan or inf
_ID = re.compile(r"#?([0-9]+)")
_ASPECT = re.compile(r"([0-9]+)[:xX×]([0-9]+)")


def _int_in(value: str, label: str, low: int, high: int) -> int:
    # The length check keeps int() away from huge digit strings (and its 4300-digit limit).
    if _INT.fullmatch(value) and len(value) <= 30:
        number = int(value)
        if low <= number <= high:
            return number
    raise CommandError(
        f"The {label} must be a whole number from {low} to {high}; you gave {_shown(value)}."
    )


def _number_in(value: str, label: str, low: float, high: float, example: str) -> float:
    if _NUMBER.fullmatch(value):
        number = float(value)
        if math.isfinite(number) and low <= number <= high:
            return number
    raise CommandError(
        f"The {label} must be a number from {low:g} to {high:g}, like {example}; "
        f"you gave {_shown(value)}."
    )


def _id(value: str, label: str) -> int:
    match = _ID.fullmatch(value)
    if match and len(match[1]) <= 30 and 1 <= int(match[1]) <= MAX_ID:
        return int(match[1])
    raise CommandError(
        f"The {label} must be a positive whole number like 12 or #12; you gave {_shown(value)}."
    )


def _seed(value: str) -> int:
    return _int_in(value, "seed", 0, MAX_SEED)


def _steps(value: str) -> int:
    return _int_in(value, "number of steps", 1, MAX_STEPS)


def _cfg(value: str) -> float:
    return _number_in(value, "CFG scale", 0, MAX_CFG, "7.5")


def _strength(value: str) -> float:
    if _NUMBER.fullmatch(value):
        number = float(value)
        if 0 < number <= 1:
            return number
    raise CommandError(
        f"The strength must be a number above 0 and at most 1, like 0.6; you gave {_shown(value)}."
    )


def _aspect(value: str) -> tuple[int, int]:
    match = _ASPECT.fullmatch(value)
    if match and len(match[1]) <= 5 and len(match[2]) <= 5:
        width, height = int(match[1]), int(match[2])
        in_range = 1 <= width <= MAX_SIDE and 1 <= height <= MAX_SIDE
        if in_range and max(width, height) <= MAX_RATIO * min(width, height):
            divisor = math.gcd(width, height)
            return width // divisor, height // divisor
    raise CommandError(
        f"The aspect ratio must be W:H with whole numbers from 1 to {MAX_SIDE}, "
        f"between 1:{MAX_RATIO} and {MAX_RATIO}:1, like 16:9 or 2:3; you gave {_shown(value)}."
    )


def _name(value: str, label: str) -> str:
    # Values are single tokens, so they already contain no whitespace.
    if 1 <= len(value) <= MAX_NAME_CHARS:
        return value
    raise CommandError(
        f"The {label} must be 1 to {MAX_NAME_CHARS} characters with no spaces; "
        f"yours is {len(value)} characters."
    )


def _text(value: str, label: str, max_chars: int) -> str:
    if len(value) > max_chars:
        raise CommandError(
            f"{label} is {len(value)} characters long; the limit is {max_chars}. Please shorten it."
        )
    return value


def _prompt(args: _Args, example: str, max_chars: int) -> str:
    if not args.words:
        raise CommandError(f"Please describe the picture you want, like {example}.")
    return _text(" ".join(args.words), "Your prompt", max_chars)


def _no_words(command: str, args: _Args) -> None:
    if args.words:
        raise CommandError(
            f'/{command} takes nothing after it; you gave "{_shown(" ".join(args.words))}".'
        )


# ---------------------------------------------------------------------------
# Commands

_IMAGINE_OPTIONS = ("no", "seed", "steps", "cfg", "ar", "n", "model")
_INPAINT_OPTIONS = ("no", "seed", "steps", "cfg")
_VARY_OPTIONS = ("strength", "seed", "prompt")
_RETRAIN_OPTIONS = ("steps", "min-score", "rank")

_NEGATIVE_LABEL = "The --no text"


def _parse_imagine(tokens: list[str], max_chars: int) -> Imagine:
    args = _scan("imagine", tokens, _IMAGINE_OPTIONS)
    opts = args.options
    return Imagine(
        prompt=_prompt(args, "/imagine a red fox in the snow", max_chars),
        negative=_text(opts.get("no", ""), _NEGATIVE_LABEL, max_chars),
        seed=_seed(opts["seed"]) if "seed" in opts else None,
        steps=_steps(opts["steps"]) if "steps" in opts else None,
        cfg=_cfg(opts["cfg"]) if "cfg" in opts else None,
        aspect=_aspect(opts["ar"]) if "ar" in opts else (1, 1),
        n=_int_in(opts["n"], "number of pictures (--n)", 1, MAX_IMAGES) if "n" in opts else 1,
        model=_name(opts["model"], "model name") if "model" in opts else None,
    )


def _parse_inpaint(tokens: list[str], max_chars: int) -> Inpaint:
    args = _scan("inpaint", tokens, _INPAINT_OPTIONS)
    opts = args.options
    return Inpaint(
        prompt=_prompt(args, "/inpaint a red woollen hat", max_chars),
        negative=_text(opts.get("no", ""), _NEGATIVE_LABEL, max_chars),
        seed=_seed(opts["seed"]) if "seed" in opts else None,
        steps=_steps(opts["steps"]) if "steps" in opts else None,
        cfg=_cfg(opts["cfg"]) if "cfg" in opts else None,
    )


def _parse_vary(tokens: list[str], max_chars: int) -> Vary:
    args = _scan("vary", tokens, _VARY_OPTIONS)
    if len(args.words) > 1:
        raise CommandError(
            "/vary takes at most one image id, like /vary #12; "
            "to change the description use --prompt, like /vary #12 --prompt a red fox."
        )
    opts = args.options
    return Vary(
        image_id=_id(args.words[0], "image id") if args.words else None,
        strength=_strength(opts["strength"]) if "strength" in opts else None,
        seed=_seed(opts["seed"]) if "seed" in opts else None,
        prompt=_text(opts["prompt"], "The --prompt text", max_chars) if "prompt" in opts else None,
    )


def _parse_rate(tokens: list[str], max_chars: int) -> Rate:
    args = _scan("rate", tokens, ())
    if len(args.words) != 2:
        raise CommandError(
            f"/rate needs an image id and a score from 1 to {MAX_SCORE}, like /rate #12 4; "
            f"you gave {len(args.words)} word{'' if len(args.words) == 1 else 's'}."
        )
    image, score = args.words
    return Rate(image_id=_id(image, "image id"), score=_int_in(score, "score", 1, MAX_SCORE))


def _parse_cancel(tokens: list[str], max_chars: int) -> Cancel:
    args = _scan("cancel", tokens, ())
    if len(args.words) > 1:
        raise CommandError(
            "/cancel takes at most one job number, like /cancel #7; "
            "on its own it cancels your latest job."
        )
    return Cancel(job_id=_id(args.words[0], "job id") if args.words else None)


def _parse_queue(tokens: list[str], max_chars: int) -> ShowQueue:
    _no_words("queue", _scan("queue", tokens, ()))
    return ShowQueue()


def _parse_history(tokens: list[str], max_chars: int) -> History:
    _no_words("history", _scan("history", tokens, ()))
    return History()


def _parse_help(tokens: list[str], max_chars: int) -> Help:
    # Anything after /help is ignored: refusing a request for help helps nobody.
    return Help()


def _parse_retrain(tokens: list[str], max_chars: int) -> Retrain:
    args = _scan("retrain", tokens, _RETRAIN_OPTIONS)
    action = args.words[0].lower() if args.words else "start"
    if len(args.words) > 1 or action not in ("start", "status", "cancel"):
        raise CommandError(
            f'I don\'t know /retrain "{_shown(" ".join(args.words))}". Use /retrain '
            "(with optional --steps, --min-score, --rank), /retrain status or /retrain cancel."
        )
    opts = args.options
    if action != "start" and opts:
        raise CommandError(f"/retrain {action} takes no options.")
    return Retrain(
        action=action,  # type: ignore[arg-type]  # checked against the Literal just above
        steps=(
            _int_in(opts["steps"], "number of training steps", 1, MAX_TRAIN_STEPS)
            if "steps" in opts
            else None
        ),
        min_score=(
            _number_in(opts["min-score"], "minimum score", 1, MAX_SCORE, "4")
            if "min-score" in opts
            else None
        ),
        rank=_int_in(opts["rank"], "rank", 1, MAX_RANK) if "rank" in opts else None,
    )


def _parse_model(tokens: list[str], max_chars: int) -> ModelCmd:
    words = _scan("model", tokens, ()).words
    action = words[0].lower() if words else "list"
    if action == "list" and len(words) <= 1:
        return ModelCmd()
    if action == "use" and len(words) == 2:
        return ModelCmd(action="use", version=_name(words[1], "model version"))
    if action == "use":
        raise CommandError(
            "/model use needs exactly one version name, like /model use v3; "
            "/model lists the versions."
        )
    raise CommandError(
        f'I don\'t know /model "{_shown(" ".join(words))}". '
        "Use /model to list the versions, or /model use <version> to switch."
    )


_PARSERS: dict[str, Callable[[list[str], int], Request]] = {
    "imagine": _parse_imagine,
    "vary": _parse_vary,
    "inpaint": _parse_inpaint,
    "rate": _parse_rate,
    "cancel": _parse_cancel,
    "queue": _parse_queue,
    "history": _parse_history,
    "help": _parse_help,
    "retrain": _parse_retrain,
    "model": _parse_model,
    "start": _parse_help,  # Telegram sends /start when someone first opens the bot
}


def _unknown_command(name: str) -> CommandError:
    message = f"Unknown command /{_shown(name)}."
    guess = difflib.get_close_matches(name, COMMANDS, n=1)
    if guess:
        message += f" Did you mean /{guess[0]}?"
    return CommandError(f"{message}\n\n{HELP_TEXT}")


def parse(text: str, *, max_prompt_chars: int = 1000) -> Request:
    """Turn what the user typed into a request, or raise CommandError saying what is wrong.

    Control characters are removed and runs of whitespace collapse to one space before
    anything else happens; `max_prompt_chars` applies to the prompt, --no and --prompt
    after that normalisation.
    """
    tokens = _clean(text).split()
    if not tokens or not tokens[0].startswith("/"):
        raise CommandError(
            "I only understand commands that start with a slash, like "
            "/imagine a red fox in the snow. Type /help to see them all."
        )
    # `/imagine@SomeBot` is how Telegram addresses one bot in a group.
    name = tokens[0][1:].partition("@")[0].lower()
    if not name:
        raise CommandError(
            "Please put a command right after the slash, like /imagine a red fox. "
            "Type /help to see them all."
        )
    parser = _PARSERS.get(name)
    if parser is None:
        raise _unknown_command(name)
    return parser(tokens[1:], max_prompt_chars)


# ---------------------------------------------------------------------------
# Typed options (platforms with their own option fields, such as Discord's slash commands)
#
# The same checks and messages as the text syntax, for values that arrive already typed.
# None means the option was not given.


def _typed_text(value: str | None, label: str, max_chars: int) -> str:
    """Normalised like typed text: control characters dropped, whitespace runs collapsed."""
    return _text(" ".join(_clean(value or "").split()), label, max_chars)


def _typed_prompt(value: str | None, example: str, max_chars: int) -> str:
    prompt = _typed_text(value, "Your prompt", max_chars)
    if not prompt:
        raise CommandError(f"Please describe the picture you want, like {example}.")
    return prompt


def _typed_number(value: float, label: str, low: float, high: float, example: str) -> float:
    if math.isfinite(value) and low <= value <= high:
        return float(value)
    raise CommandError(
        f"The {label} must be a number from {low:g} to {high:g}, like {example}; "
        f"you gave {value:g}."
    )


def imagine_from_options(prompt: str, *, negative: str | None = None, seed: int | None = None,
                         steps: int | None = None, cfg: float | None = None,
                         aspect: str | None = None, n: int | None = None,
                         model: str | None = None, max_prompt_chars: int = 1000) -> Imagine:
    """An Imagine request from typed option values, checked like `/imagine` text."""
    return Imagine(
        prompt=_typed_prompt(prompt, "a red fox in the snow", max_prompt_chars),
        negative=_typed_text(negative, "The negative prompt", max_prompt_chars),
        seed=None if seed is None else _seed(str(seed)),
        steps=None if steps is None else _steps(str(steps)),
        cfg=None if cfg is None else _typed_number(cfg, "CFG scale", 0, MAX_CFG, "7.5"),
        aspect=(1, 1) if aspect is None else _aspect(aspect.strip()),
        n=1 if n is None else _int_in(str(n), "number of pictures", 1, MAX_IMAGES),
        model=None if model is None or not model.strip() else _name(model.strip(), "model name"),
    )


def inpaint_from_options(prompt: str, *, negative: str | None = None, seed: int | None = None,
                         steps: int | None = None, cfg: float | None = None,
                         max_prompt_chars: int = 1000) -> Inpaint:
    """An Inpaint request from typed option values, checked like `/inpaint` text."""
    return Inpaint(
        prompt=_typed_prompt(prompt, "a red woollen hat", max_prompt_chars),
        negative=_typed_text(negative, "The negative prompt", max_prompt_chars),
        seed=None if seed is None else _seed(str(seed)),
        steps=None if steps is None else _steps(str(steps)),
        cfg=None if cfg is None else _typed_number(cfg, "CFG scale", 0, MAX_CFG, "7.5"),
    )


def vary_from_options(image_id: str | int | None = None, *, strength: float | None = None,
                      seed: int | None = None, prompt: str | None = None,
                      max_prompt_chars: int = 1000) -> Vary:
    """A Vary request from typed option values; `image_id` may be written 12 or #12."""
    if strength is not None and not (math.isfinite(strength) and 0 < strength <= 1):
        raise CommandError(
            f"The strength must be a number above 0 and at most 1, like 0.6; you gave {strength:g}."
        )
    text = None if prompt is None else _typed_text(prompt, "The prompt", max_prompt_chars)
    return Vary(
        image_id=None if image_id is None else _id(str(image_id).strip(), "image id"),
        strength=None if strength is None else float(strength),
        seed=None if seed is None else _seed(str(seed)),
        prompt=text or None,
    )


def rate_from_options(image_id: str | int, score: int) -> Rate:
    """A Rate request from typed option values; `image_id` may be written 12 or #12."""
    return Rate(image_id=_id(str(image_id).strip(), "image id"),
                score=_int_in(str(score), "score", 1, MAX_SCORE))
