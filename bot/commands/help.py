"""/help and the one-line command list, made from the table (bot/commands/options.py)."""

from __future__ import annotations

import textwrap

from bot.commands.options import TABLE, Command, Option

WIDTH = 92  # short enough for a phone held sideways and for a terminal

# Telegram's setMyCommands and Discord's command descriptions.
COMMANDS: dict[str, str] = {name: command.summary for name, command in TABLE.items()}


def _wrap(text: str, indent: str = "", more: str = "  ") -> list[str]:
    return textwrap.wrap(text, WIDTH, initial_indent=indent, subsequent_indent=more,
                         break_long_words=False, break_on_hyphens=False)


def _word(option: Option) -> str:
    return f"<{option.placeholder}>" if option.required else f"[{option.placeholder}]"


def _entry(command: Command) -> list[str]:
    usage = [f"/{command.name}", *map(_word, command.words)]
    if command.flags:
        usage.append("[options]")
    line = f"{' '.join(usage)} - {command.summary[0].lower()}{command.summary[1:]}."
    lines = _wrap(f"{line} {command.more}".rstrip())
    if command.flags:
        lines += _wrap(", ".join(f"--{o.flag} {o.placeholder}" for o in command.flags), "  ")
    return lines


def _help() -> str:
    rest = list(dict.fromkeys(f"--{o.flag}" for c in TABLE.values() for o in c.flags
                              if o.kind.rest))
    takers = " and ".join([", ".join(rest[:-1]), rest[-1]] if len(rest) > 1 else rest)
    footer = (f"Ids may be written 12 or #12. Options may come anywhere after the command; "
              f"{takers} take all the text up to the next option.")
    lines = [line for command in TABLE.values() for line in _entry(command)]
    return "\n".join(["Magic Canvas commands:", "", *lines, "", *_wrap(footer, more="")])


HELP_TEXT = _help()
