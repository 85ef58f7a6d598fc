"""How one option's value is read and checked, and what a user reads when it cannot be.

Each kind of value reads two forms: `text`, the words typed after a command or an option, and
`typed`, a value that a platform's own option field (Discord's slash commands) has already
typed. Both make the same value and say the same thing when it is wrong. `field_type` and
`bounds` tell such a platform what field to show; `hint` and `span` are the kind's range for
/help and for option descriptions.
"""

from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import dataclass
from typing import Any, ClassVar

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


class Usage(Exception):  # noqa: N818  # a signal, not an error a caller sees
    """The words do not fit the command's form: its usage message is the answer."""


_KEPT_CONTROLS = frozenset(" \t\n\r\x0b\x0c")


def clean(text: str) -> str:
    """Drop control characters (null bytes, escapes, ...) but keep ordinary whitespace.

    Category Cc is what terminals and databases choke on; lone surrogates (Cs) cannot be
    encoded as UTF-8, so they go too. Everything else, emoji and right-to-left text
    included, is kept as typed.
    """
    return "".join(
        ch for ch in text if ch in _KEPT_CONTROLS or unicodedata.category(ch) not in ("Cc", "Cs")
    )


def shown(value: str, limit: int = 40) -> str:
    """The user's input, shortened so an error message never echoes a wall of text."""
    return value if len(value) <= limit else value[: limit - 1] + "…"


_INT = re.compile(r"[+-]?[0-9]+")
_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")  # no exponents, nan or inf
_ID = re.compile(r"#?([0-9]+)")
_ASPECT = re.compile(r"([0-9]+)[:xX×]([0-9]+)")


class Kind:
    """A kind of value. `label` names the option in messages, `like` is an example value."""

    field_type: ClassVar[str] = "str"  # a typed field's type: "int", "float", "str" or "file"
    rest: ClassVar[bool] = False  # as an option, takes all the words up to the next option

    @property
    def bounds(self) -> tuple[Any, Any] | None:
        """The lowest and highest value a typed field should allow, if it has a range."""
        return None

    @property
    def hint(self) -> str:
        """The value's form in /help, e.g. 1-100."""
        return ""

    @property
    def span(self) -> str:
        """The range in words for an option's description, e.g. 1 to 100; "" for none."""
        return ""

    @property
    def choices(self) -> tuple[str, ...]:
        """The only values allowed, if there is such a list."""
        return ()

    def tidy(self, value: Any) -> Any:
        """A typed value as it is read; None when it counts as not given (blank text)."""
        if isinstance(value, str):
            return value.strip() or None
        return value

    def text(self, value: str, label: str, like: str, limit: int) -> Any:
        raise NotImplementedError

    def typed(self, value: Any, label: str, like: str, limit: int) -> Any:
        return self.text(str(value), label, like, limit)


@dataclass(frozen=True)
class Whole(Kind):
    """A whole number from `low` to `high`."""

    low: int
    high: int
    field_type: ClassVar[str] = "int"

    @property
    def bounds(self) -> tuple[int, int]:
        return self.low, self.high

    @property
    def hint(self) -> str:
        return f"{self.low}-{self.high}"

    @property
    def span(self) -> str:
        return f"{self.low} to {self.high}"

    def text(self, value: str, label: str, like: str, limit: int) -> int:
        # The length check keeps int() away from huge digit strings (and its 4300-digit limit).
        if _INT.fullmatch(value) and len(value) <= 30:
            number = int(value)
            if self.low <= number <= self.high:
                return number
        raise CommandError(
            f"The {label} must be a whole number from {self.low} to {self.high}; "
            f"you gave {shown(value)}."
        )


@dataclass(frozen=True)
class Number(Kind):
    """A number from `low` to `high` (above `low`, if `above`), written without exponents."""

    low: float
    high: float
    above: bool = False
    field_type: ClassVar[str] = "float"

    @property
    def bounds(self) -> tuple[float, float]:
        return float(self.low), float(self.high)

    @property
    def hint(self) -> str:
        return f"{self.low:g}-{self.high:g}" + (f" (above {self.low:g})" if self.above else "")

    @property
    def span(self) -> str:
        if self.above:
            return f"above {self.low:g}, at most {self.high:g}"
        return f"{self.low:g} to {self.high:g}"

    def _fits(self, number: float) -> bool:
        low_ok = self.low < number if self.above else self.low <= number
        return math.isfinite(number) and low_ok and number <= self.high

    def _refuse(self, value: str, label: str, like: str) -> CommandError:
        if self.above:
            allowed = f"above {self.low:g} and at most {self.high:g}"
        else:
            allowed = f"from {self.low:g} to {self.high:g}"
        return CommandError(f"The {label} must be a number {allowed}, like {like}; "
                            f"you gave {shown(value)}.")

    def text(self, value: str, label: str, like: str, limit: int) -> float:
        if _NUMBER.fullmatch(value) and self._fits(float(value)):
            return float(value)
        raise self._refuse(value, label, like)

    def typed(self, value: Any, label: str, like: str, limit: int) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return self.text(str(value), label, like, limit)
        if self._fits(float(value)):
            return float(value)
        raise self._refuse(f"{value:g}", label, like)


@dataclass(frozen=True)
class Aspect(Kind):
    """W:H (or WxH), reduced to lowest terms: 32:18 becomes (16, 9)."""

    @property
    def hint(self) -> str:
        return f"W:H (each 1-{MAX_SIDE}, 1:{MAX_RATIO} to {MAX_RATIO}:1, e.g. 16:9)"

    def text(self, value: str, label: str, like: str, limit: int) -> tuple[int, int]:
        match = _ASPECT.fullmatch(value)
        if match and len(match[1]) <= 5 and len(match[2]) <= 5:
            width, height = int(match[1]), int(match[2])
            in_range = 1 <= width <= MAX_SIDE and 1 <= height <= MAX_SIDE
            if in_range and max(width, height) <= MAX_RATIO * min(width, height):
                divisor = math.gcd(width, height)
                return width // divisor, height // divisor
        raise CommandError(
            f"The aspect ratio must be W:H with whole numbers from 1 to {MAX_SIDE}, "
            f"between 1:{MAX_RATIO} and {MAX_RATIO}:1, like 16:9 or 2:3; you gave {shown(value)}."
        )


@dataclass(frozen=True)
class Id(Kind):
    """A database id, written 12 or #12. A typed field holds a whole number if `whole`, else
    text (so that #12 works there too)."""

    whole: bool = False

    @property
    def field_type(self) -> str:  # type: ignore[override]
        return "int" if self.whole else "str"

    @property
    def bounds(self) -> tuple[int, int] | None:
        return (1, MAX_ID) if self.whole else None

    def text(self, value: str, label: str, like: str, limit: int) -> int:
        match = _ID.fullmatch(value)
        if match and len(match[1]) <= 30 and 1 <= int(match[1]) <= MAX_ID:
            return int(match[1])
        raise CommandError(
            f"The {label} must be a positive whole number like 12 or #12; you gave {shown(value)}."
        )


@dataclass(frozen=True)
class Name(Kind):
    """One word of 1 to MAX_NAME_CHARS characters: a model or version name, spelt as given."""

    @property
    def hint(self) -> str:
        return "<name>"

    def text(self, value: str, label: str, like: str, limit: int) -> str:
        # Text values are single tokens, so they already contain no whitespace.
        if 1 <= len(value) <= MAX_NAME_CHARS:
            return value
        raise CommandError(
            f"The {label} must be 1 to {MAX_NAME_CHARS} characters with no spaces; "
            f"yours is {len(value)} characters."
        )

    def typed(self, value: Any, label: str, like: str, limit: int) -> str:
        value = str(value)
        if len(value.split()) > 1:
            raise CommandError(f"The {label} must be 1 to {MAX_NAME_CHARS} characters with no "
                               f"spaces; you gave {shown(value)}.")
        return self.text(value, label, like, limit)


@dataclass(frozen=True)
class Text(Kind):
    """Free text, whitespace collapsed, at most `limit` (the configured prompt length)
    characters. Blank typed text counts as not given."""

    rest: ClassVar[bool] = True

    def tidy(self, value: Any) -> str | None:
        return " ".join(clean(str(value)).split()) or None

    def text(self, value: str, label: str, like: str, limit: int) -> str:
        if len(value) > limit:
            raise CommandError(
                f"{label} is {len(value)} characters long; the limit is {limit}. "
                "Please shorten it."
            )
        return value


MAX_LORAS = 3
MAX_LORA_WEIGHT = 2.0
_LORA = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]{0,63})(?::([+-]?[0-9]*\.?[0-9]+))?")


@dataclass(frozen=True)
class Loras(Kind):
    """Up to MAX_LORAS LoRAs by name, each NAME or NAME:WEIGHT, separated by spaces or
    commas: a tuple of (name, weight)."""

    rest: ClassVar[bool] = True

    @property
    def hint(self) -> str:
        return "<name>[:weight]"

    def text(self, value: str, label: str, like: str, limit: int) -> tuple[tuple[str, float], ...]:
        found = []
        for word in re.split(r"[\s,]+", value.strip()):
            match = _LORA.fullmatch(word)
            if match is None:
                raise CommandError(f"A LoRA is NAME or NAME:WEIGHT, like --lora ink:0.8; you "
                                   f"gave {shown(word)}.")
            weight = float(match[2]) if match[2] else 1.0
            if not 0 < weight <= MAX_LORA_WEIGHT:
                raise CommandError(f"A LoRA's weight is above 0 and at most "
                                   f"{MAX_LORA_WEIGHT:g}; {match[1]} has {shown(match[2])}.")
            found.append((match[1], weight))
        if len(found) > MAX_LORAS:
            raise CommandError(f"At most {MAX_LORAS} LoRAs go in one picture; you gave "
                               f"{len(found)}.")
        if len({name.lower() for name, _ in found}) != len(found):
            raise CommandError("Each LoRA goes in once; give it one weight.")
        return tuple(found)


@dataclass(frozen=True)
class _Words(Kind):
    """One word from `values`, any case."""

    values: tuple[str, ...]

    @property
    def hint(self) -> str:
        return "|".join(self.values)

    @property
    def choices(self) -> tuple[str, ...]:
        return self.values


@dataclass(frozen=True)
class Word(_Words):
    """One word from `values`, given as an option's value; anything else is refused by name."""

    def text(self, value: str, label: str, like: str, limit: int) -> str:
        if value.lower() in self.values:
            return value.lower()
        raise CommandError(f"The {label} is one of {', '.join(self.values)}; you gave "
                           f"{shown(value)}.")


@dataclass(frozen=True)
class OneOf(_Words):
    """One word from `values`, `values[0]` when not given. Anything else does not fit the
    command's form, so its usage message answers."""

    def text(self, value: str, label: str, like: str, limit: int) -> str:
        if value.lower() not in self.values:
            raise Usage
        return value.lower()


@dataclass(frozen=True)
class File(Kind):
    """An attached picture: the platform's adapter fetches it; neither parser reads it."""

    field_type: ClassVar[str] = "file"
