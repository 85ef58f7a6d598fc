"""What adapters and the service hand each other."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from bot.store import ImageRow, JobRow

# The console's user is the bot's owner: their commands wait for room instead of being refused.
OPERATOR_PLATFORM = "console"
OUR_FAULT = ("Sorry, something went wrong on my side (the bot's admins can see what in the "
             "log). Please try again later.")


@dataclass(frozen=True)
class User:
    platform: str
    user_id: str
    name: str | None = None


@dataclass(frozen=True)
class Attachment:
    data: bytes
    filename: str = ""


@dataclass(frozen=True)
class Reply:
    """The immediate answer to a command. `job_id` is set when a job was queued. A `private`
    reply is for the user's eyes only (a sign-in link): an adapter sends it where no one else
    sees it, or not at all."""

    text: str
    error: bool = False
    job_id: int | None = None
    position: int | None = None
    private: bool = False
    link: str | None = None  # the address the text gives, for adapters that show it apart
    confirm: str | None = None  # a command the user may confirm with a button: "forgetme"

    @property
    def queued(self) -> bool:
        """A new job was queued (rather than, say, a /cancel naming one)."""
        return self.position is not None


class Deliverer(Protocol):
    """What an adapter provides so the service can reach its users later."""

    async def progress(self, job: JobRow, step: int, total: int) -> None: ...

    async def deliver_images(self, job: JobRow, images: list[ImageRow]) -> None: ...

    async def deliver_failure(self, job: JobRow, message: str) -> None: ...

    async def announce(self, origin: dict[str, Any], text: str) -> None: ...

    # Optional: a deleted picture's message says so (Delivery calls it where it exists).
    # async def retract(self, job: JobRow, image: ImageRow) -> None: ...
