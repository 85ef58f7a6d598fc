"""Chat command text, or a platform's typed option values, into validated requests.

The same words work on Discord, Telegram and the console, e.g.::

    /imagine a cat's hat, watercolour --no blurry, text --seed 42 --ar 16:9

Both parsers follow the table (bot/commands/options.py) through the same steps: the form of
the command first (how many words, which action, which options go together), then each value
in the table's order, so that the first thing wrong is what the user reads. Every malformed
command raises CommandError with a polite message that says what was wrong and what is
allowed; adapters show that message to the user as is.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from bot.commands.help import COMMANDS, HELP_TEXT
from bot.commands.options import TABLE, Command, Option
from bot.commands.requests import Request
from bot.commands.values import CommandError, OneOf, Usage, clean, shown

_BY_NAME = {name: c for c in TABLE.values() for name in (c.name, *c.aliases)}


def parse(text: str, *, max_prompt_chars: int = 1000) -> Request:
    """Turn what the user typed into a request, or raise CommandError saying what is wrong.

    Control characters are removed and runs of whitespace collapse to one space before
    anything else happens; `max_prompt_chars` applies to the prompt, --no and --prompt
    after that normalisation.
    """
    tokens = clean(text).split()
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
    command = _BY_NAME.get(name)
    if command is None:
        raise _unknown_command(name)
    if command.anything:  # refusing a request for help helps nobody
        return command.make()
    words, values = _scan(command, tokens[1:])
    places = command.words
    if places and places[0].kind.rest:  # the prompt: every word
        values.update({places[0].name: " ".join(words)} if words else {})
    elif len(words) > len(places):
        raise CommandError(command.usage_of(words))
    else:
        values.update({option.name: word for option, word in zip(places, words, strict=False)})
    return _request(command, values, words, typed=False, limit=max_prompt_chars)


def parse_typed(command: str, values: Mapping[str, Any], *,
                max_prompt_chars: int = 1000) -> Request:
    """A request from a platform's typed option values, by option name (Discord's slash
    commands), with the same checks and messages as `parse`. None, and blank text, mean not
    given; attachments (image, mask) are the adapter's and are skipped here."""
    spec = TABLE.get(command)
    if spec is None:
        raise _unknown_command(command)
    if spec.anything:
        return spec.make()
    options = {option.name: option for option in spec.options}
    given: dict[str, Any] = {}
    for name, value in values.items():
        if name not in options:
            raise TypeError(f"/{command} has no option {name!r}")
        kind = options[name].kind
        if kind.field_type == "file" or value is None:
            continue
        if (value := kind.tidy(value)) is not None:
            given[name] = value
    return _request(spec, given, None, typed=True, limit=max_prompt_chars)


def _request(command: Command, values: dict[str, Any], words: list[str] | None, *,
             typed: bool, limit: int) -> Request:
    """Check the form, then each value, then make the request. `words` are what was typed
    after the command, for the usage message (typed: the word options' values)."""
    try:
        for option in command.options:
            if isinstance(option.kind, OneOf):
                raw = values.get(option.name, option.kind.values[0])
                values[option.name] = option.kind.text(str(raw), "", "", limit)
            elif option.required and option.name not in values and option.kind.field_type != "file":
                if option.missing:
                    raise CommandError(option.missing)
                raise Usage
        if command.rules:
            command.rules(values)
    except Usage:
        if words is None:
            words = [str(values[o.name]) for o in command.words if o.name in values]
        raise CommandError(command.usage_of(words)) from None
    checked = {}
    for option in command.options:
        if option.name in values:
            checked[option.target] = _value(option, values[option.name], typed, limit)
    return command.make(**checked)


def _value(option: Option, value: Any, typed: bool, limit: int) -> Any:
    label = option.label_for(typed)
    if typed:
        return option.kind.typed(value, label, option.like, limit)
    return option.kind.text(value, label, option.like, limit)


# ---- text options --------------------------------------------------------------------------


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


def _scan(command: Command, tokens: list[str]) -> tuple[list[str], dict[str, str]]:
    """Split tokens into plain words and option values (by option name), checking the
    options' names."""
    flags = {option.flag: option for option in command.flags}
    words: list[str] = []
    values: dict[str, str] = {}
    i = 0
    while i < len(tokens):
        token = tokens[i]
        flag = _option_name(token)
        i += 1
        if flag is None:
            words.append(token)
            continue
        flag, _, inline = flag.partition("=")  # `--seed=42` works as well as `--seed 42`
        flag = flag.lower().replace("_", "-")
        option = flags.get(flag)
        if option is None:
            raise _unknown_option(command, flag)
        if option.name in values:
            raise CommandError(f"You gave --{flag} twice; please give it only once.")
        parts = [inline] if inline else []
        if option.kind.rest:
            while i < len(tokens) and _option_name(tokens[i]) is None:
                parts.append(tokens[i])
                i += 1
        elif not parts and i < len(tokens) and _option_name(tokens[i]) is None:
            parts.append(tokens[i])
            i += 1
        if not parts:
            raise _missing_value(option)
        values[option.name] = " ".join(parts)
    return words, values


def _missing_value(option: Option) -> CommandError:
    if option.kind.rest:
        return CommandError(f"--{option.flag} needs some text after it, like {option.example}.")
    return CommandError(f"--{option.flag} needs a value right after it, like {option.example}.")


def _unknown_option(command: Command, flag: str) -> CommandError:
    name = command.name
    allowed = [option.flag for option in command.flags if option.flag]
    if not allowed:
        return CommandError(
            f"Unknown option --{shown(flag)} for /{name}. /{name} takes no options."
        )
    message = f"Unknown option --{shown(flag)} for /{name}. Options: " + ", ".join(
        f"--{option}" for option in allowed
    )
    guess = difflib.get_close_matches(flag, allowed, n=1)
    return CommandError(message + (f". Did you mean --{guess[0]}?" if guess else "."))


def _unknown_command(name: str) -> CommandError:
    message = f"Unknown command /{shown(name)}."
    guess = difflib.get_close_matches(name, COMMANDS, n=1)
    if guess:
        message += f" Did you mean /{guess[0]}?"
    return CommandError(f"{message}\n\n{HELP_TEXT}")
