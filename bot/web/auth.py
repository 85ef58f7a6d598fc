"""Sign-in without passwords: `/web` in a chat makes a one-time link; opening it (and pressing
Sign in) starts a browser session.

Only SHA-256 hashes of the tokens are stored, so the database alone signs no one in. A link
works once, for LINK_SECONDS; a session lasts SESSION_SECONDS. This module touches only the
store (no aiohttp), so the service can make links without the web server's code.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bot.store import Store

if TYPE_CHECKING:
    from bot.service.types import User

LINK_SECONDS = 10 * 60
TOKEN = re.compile(r"[A-Za-z0-9_-]{20,64}")  # the form secrets.token_urlsafe(32) takes
SESSION_SECONDS = 30 * 24 * 3600


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class LinkRefused(Exception):
    """The link cannot sign anyone in; the message says why, politely."""


@dataclass(frozen=True)
class Viewer:
    """Who is signed in, as the store knows them."""

    user_id: int
    platform: str
    platform_user_id: str
    name: str | None
    csrf: str  # this session's token for forms

    @property
    def user(self) -> User:
        """The signed-in viewer as the service knows users."""
        from bot.service.types import User  # the service imports this module

        return User(self.platform, self.platform_user_id, self.name)

    @property
    def shown_name(self) -> str:
        return self.name or f"{self.platform} user {self.platform_user_id}"


class SignIns:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def new_link(self, user_id: int) -> str:
        """A token for the user's sign-in link: valid once, for LINK_SECONDS."""
        token = secrets.token_urlsafe(32)
        now = time.time()
        async with self.store.transaction() as db:
            await db.execute("DELETE FROM web_links WHERE expires_at < ?", (now - 86400,))
            await db.execute(
                "INSERT INTO web_links (token_hash, user_id, expires_at) VALUES (?, ?, ?)",
                (_hash(token), user_id, now + LINK_SECONDS))
        return token

    async def check_link(self, token: str) -> None:
        """Raises LinkRefused if the link is unknown, used or expired."""
        _well_formed(token)
        async with self.store.reader.execute(
                "SELECT expires_at, used_at FROM web_links WHERE token_hash = ?",
                (_hash(token),)) as cursor:
            row = await cursor.fetchone()
        _check(row)

    async def redeem(self, token: str) -> str:
        """Use the link up and start a session; its token (for the cookie) is returned."""
        _well_formed(token)
        session = secrets.token_urlsafe(32)
        now = time.time()
        async with self.store.transaction() as db:
            async with db.execute(
                    "SELECT expires_at, used_at, user_id FROM web_links WHERE token_hash = ?",
                    (_hash(token),)) as cursor:
                row = await cursor.fetchone()
            _check(row)
            await db.execute("UPDATE web_links SET used_at = ? WHERE token_hash = ?",
                             (now, _hash(token)))
            await db.execute("DELETE FROM web_sessions WHERE expires_at < ?", (now,))
            await db.execute(
                """INSERT INTO web_sessions (token_hash, user_id, csrf, created_at, expires_at)
                   VALUES (?, ?, ?, ?, ?)""",
                (_hash(session), row[2], secrets.token_urlsafe(24), now,
                 now + SESSION_SECONDS))
        return session

    async def viewer(self, session: str) -> Viewer | None:
        """Who the session's cookie belongs to; None if it is unknown, over or malformed."""
        if not TOKEN.fullmatch(session):
            return None
        async with self.store.reader.execute(
                """SELECT users.id, users.platform, users.platform_user_id, users.name,
                          web_sessions.csrf
                   FROM web_sessions JOIN users ON users.id = web_sessions.user_id
                   WHERE web_sessions.token_hash = ? AND web_sessions.expires_at > ?""",
                (_hash(session), time.time())) as cursor:
            row = await cursor.fetchone()
        return Viewer(*row) if row else None

    async def end(self, session: str) -> None:
        async with self.store.transaction() as db:
            await db.execute("DELETE FROM web_sessions WHERE token_hash = ?", (_hash(session),))


NOT_MINE = "This sign-in link is not one of mine. Send /web to the bot for a new one."


def _well_formed(token: str) -> None:
    if not TOKEN.fullmatch(token):  # before it is hashed: odd bytes cannot be encoded
        raise LinkRefused(NOT_MINE)


def _check(row: tuple | None) -> None:
    if row is None:
        raise LinkRefused(NOT_MINE)
    if row[1] is not None:
        raise LinkRefused("This sign-in link has been used already: each link works once. "
                          "Send /web to the bot for a new one.")
    if row[0] < time.time():
        raise LinkRefused("This sign-in link has expired (links last 10 minutes). Send /web "
                          "to the bot for a new one.")
