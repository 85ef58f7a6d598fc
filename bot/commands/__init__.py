"""Chat commands: what users type (or pick in a platform's option fields) into validated,
platform-neutral requests.

    options.py   every command and option, declared once (TABLE)
    values.py    how each kind of value is read and checked, and the limits
    parse.py     `parse` for chat text, `parse_typed` for typed option fields
    help.py      /help (HELP_TEXT) and the one-line command list (COMMANDS)
    requests.py  the requests they make

Standard library and engine.params only: this runs in the bot process, which must never
import torch.
"""

from bot.commands.help import COMMANDS, HELP_TEXT
from bot.commands.options import TABLE, Command, Option
from bot.commands.parse import parse, parse_typed
from bot.commands.requests import (
    VARY_STRENGTHS,
    Cancel,
    ChatSettings,
    Delete,
    ForgetMe,
    Help,
    History,
    Imagine,
    Inpaint,
    ModelCmd,
    Rate,
    Request,
    Retrain,
    ShowLoras,
    ShowModels,
    ShowQueue,
    ShowStyles,
    Training,
    Upscale,
    Vary,
    Web,
    varied,
)
from bot.commands.values import (
    MAX_CFG,
    MAX_ID,
    MAX_IMAGES,
    MAX_NAME_CHARS,
    MAX_RANK,
    MAX_RATIO,
    MAX_SCORE,
    MAX_SEED,
    MAX_SIDE,
    MAX_STEPS,
    MAX_TRAIN_STEPS,
    CommandError,
)

__all__ = [
    "COMMANDS", "HELP_TEXT", "MAX_CFG", "MAX_ID", "MAX_IMAGES", "MAX_NAME_CHARS", "MAX_RANK",
    "MAX_RATIO", "MAX_SCORE", "MAX_SEED", "MAX_SIDE", "MAX_STEPS", "MAX_TRAIN_STEPS", "TABLE",
    "Cancel", "ChatSettings", "Command", "CommandError", "Delete", "ForgetMe", "Help", "History",
    "Imagine", "Inpaint", "Training",
    "ModelCmd", "Option", "Rate", "Request", "Retrain", "ShowLoras", "ShowModels", "ShowQueue",
    "ShowStyles",
    "Upscale", "VARY_STRENGTHS", "Vary", "Web", "varied",
    "parse", "parse_typed",
]
