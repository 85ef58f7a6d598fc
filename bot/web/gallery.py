"""What the gallery and the image page read from the store, and who may see what.

Everything here runs on the web app's own read-only connection. A viewer who is not an admin
sees only their own pictures: every query that returns images takes a `Viewer` and filters by
it in SQL, so no page can forget to.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

from bot.store import Reader

PAGE_SIZE = 24
KINDS = {"txt2img": "imagine", "img2img": "vary", "inpaint": "inpaint", "upscale": "upscale"}
# An upscale is an image-to-image job with a scale: shown, and filtered, as its own kind.
_KIND = ("CASE WHEN json_extract(jobs.params, '$.scale') IS NOT NULL THEN 'upscale' "
         "ELSE jobs.kind END")
MAX_QUERY_CHARS = 200
_WORD = re.compile(r"\w+", re.UNICODE)


@dataclass(frozen=True)
class Scope:
    """Whose pictures a viewer may see: their own (user_id), or everyone's (admin)."""

    user_id: int
    admin: bool


@dataclass(frozen=True)
class Filters:
    """The gallery's search and filters, read leniently from a query string: a value that
    does not parse is ignored, so a hostile or stale link still gets an ordinary page."""

    q: str = ""
    platform: str = ""
    user: int | None = None  # admins only
    model: str = ""
    version: str = ""
    kind: str = ""  # txt2img, img2img or inpaint
    rating: str = ""  # "", "unrated", or "1".."5": an average of at least that
    since: dt.date | None = None
    until: dt.date | None = None
    before: int | None = None  # the page: images older than this id

    @classmethod
    def parse(cls, query: Mapping[str, str]) -> Filters:
        def text(name: str, limit: int = 100) -> str:
            return str(query.get(name, "")).strip()[:limit]

        return cls(
            q=text("q", MAX_QUERY_CHARS), platform=text("platform"), user=_whole(text("user")),
            model=text("model"), version=text("version"),
            kind=text("kind") if text("kind") in KINDS else "",
            rating=text("rating") if text("rating") in ("unrated", "1", "2", "3", "4", "5")
            else "",
            since=_date(text("since")), until=_date(text("until")),
            before=_whole(text("before")))

    def query(self, **changes: Any) -> dict[str, str]:
        """As query-string values (for links to the next page, or a filter removed)."""
        values = replace(self, **changes)
        out = {}
        for f in fields(values):
            value = getattr(values, f.name)
            if value not in (None, ""):
                out[f.name] = value.isoformat() if isinstance(value, dt.date) else str(value)
        return out

    @property
    def any(self) -> bool:
        return bool(self.query(before=None))


@dataclass(frozen=True)
class Tile:
    id: int
    prompt: str
    kind: str
    model: str
    version: str
    platform: str
    user_name: str
    width: int
    height: int
    created_at: float
    score: float | None


def fts_query(text: str) -> str:
    """The user's words as an FTS5 query that matches prompts holding all of them (each also
    as a prefix): quoted, so no word is read as FTS5 syntax or SQL."""
    words = _WORD.findall(text)[:20]
    return " ".join(f'"{word}"*' for word in words)


_TILE = f"""
    SELECT images.id, jobs.prompt, {_KIND} AS kind,
           COALESCE(json_extract(jobs.resolved, '$.checkpoint'), jobs.checkpoint, '') AS model,
           images.version, users.platform,
           COALESCE(users.name, users.platform_user_id) AS user_name,
           images.width, images.height, images.created_at,
           (SELECT AVG(score) FROM ratings WHERE ratings.image_id = images.id) AS score
    FROM images JOIN jobs ON jobs.id = images.job_id JOIN users ON users.id = jobs.user_id
"""


def _visible(scope: Scope) -> tuple[list[str], list[Any]]:
    return ([], []) if scope.admin else (["jobs.user_id = ?"], [scope.user_id])


async def tiles(db: Reader, scope: Scope, filters: Filters,
                limit: int = PAGE_SIZE) -> list[Tile]:
    """One page of the gallery, newest first."""
    where, params = _visible(scope)
    if filters.q and (match := fts_query(filters.q)):
        where.append("jobs.id IN (SELECT rowid FROM prompts WHERE prompts MATCH ?)")
        params.append(match)
    elif filters.q:
        where.append("0")  # only punctuation: nothing matches
    for column, value in (("users.platform", filters.platform), (_KIND, filters.kind),
                          ("images.version", filters.version)):
        if value:
            where.append(f"{column} = ?")
            params.append(value)
    if filters.model:
        where.append("COALESCE(json_extract(jobs.resolved, '$.checkpoint'), jobs.checkpoint)"
                     " = ?")
        params.append(filters.model)
    if filters.user is not None and scope.admin:
        where.append("jobs.user_id = ?")
        params.append(filters.user)
    if filters.rating == "unrated":
        where.append("NOT EXISTS (SELECT 1 FROM ratings WHERE ratings.image_id = images.id)")
    elif filters.rating:
        where.append("(SELECT AVG(score) FROM ratings WHERE ratings.image_id = images.id) >= ?")
        params.append(int(filters.rating))
    if filters.since:
        where.append("images.created_at >= ?")
        params.append(_start_of(filters.since))
    if filters.until:
        where.append("images.created_at < ?")
        params.append(_end_of(filters.until))
    if filters.before is not None:
        where.append("images.id < ?")
        params.append(filters.before)
    # First the page's ids alone (a search may match most of the store: sorting narrow rows
    # is cheap), then the details of those few.
    sql = f"""SELECT images.id FROM images JOIN jobs ON jobs.id = images.job_id
              JOIN users ON users.id = jobs.user_id
              WHERE {' AND '.join(where) or '1'} ORDER BY images.id DESC LIMIT ?"""
    async with db.execute(sql, [*params, limit]) as cursor:
        ids = [row[0] for row in await cursor.fetchall()]
    if not ids:
        return []
    marks = ", ".join("?" * len(ids))
    async with db.execute(f"{_TILE} WHERE images.id IN ({marks}) ORDER BY images.id DESC",
                          ids) as cursor:
        return [Tile(*row) for row in await cursor.fetchall()]


async def choices(db: Reader, scope: Scope) -> dict[str, list[tuple[str, str]]]:
    """What the filter menus offer: (value, label) pairs. Versions and users come from their
    own small tables, not from scanning every image."""
    async def pairs(sql: str, params: Sequence[Any] = ()) -> list[tuple[str, str]]:
        async with db.execute(sql, params) as cursor:
            return [(str(value), str(label)) for value, label in await cursor.fetchall()]

    out = {
        "platform": await pairs(
            "SELECT DISTINCT platform, platform FROM users"
            + ("" if scope.admin else " WHERE id = ?") + " ORDER BY 1",
            () if scope.admin else (scope.user_id,)),
        "version": [("base", "base"), *await pairs(
            "SELECT DISTINCT name, name FROM model_versions WHERE name != 'base' ORDER BY id")],
        "kind": [(kind, label) for kind, label in KINDS.items()],
        "rating": [("unrated", "not rated"), *((str(n), f"{n}★ or more") for n in range(5, 0, -1))],
    }
    if scope.admin:
        out["user"] = await pairs(
            "SELECT id, COALESCE(name, platform_user_id) || ' (' || platform || ')' FROM users"
            " ORDER BY 2 LIMIT 500")
    return out


@dataclass(frozen=True)
class Picture:
    """Everything the image page shows about one image."""

    tile: Tile
    job_id: int
    user_id: int
    seed: int
    params: dict[str, Any]  # as the engine ran it
    queued_at: float
    started_at: float | None
    engine_seconds: float | None
    worker: str
    ratings: list[int]  # every score given, for the count and the average
    my_rating: int | None
    parent: Tile | None  # the image it was varied, rerolled or inpainted from
    children: list[Tile]  # what was made from it
    from_hidden: bool = False  # made from a picture the viewer may not see

    @property
    def waited(self) -> float | None:
        return None if self.started_at is None else self.started_at - self.queued_at


async def picture(db: Reader, scope: Scope, image_id: int) -> Picture | None:
    """The image with its job, ratings and lineage; None if it does not exist or the viewer
    may not see it (the same answer, so nothing tells one from the other)."""
    where, params = _visible(scope)
    sql = f"{_TILE} WHERE {' AND '.join([*where, 'images.id = ?'])}"
    async with db.execute(sql, [*params, image_id]) as cursor:
        row = await cursor.fetchone()
    if row is None:
        return None
    tile = Tile(*row)
    async with db.execute(
            """SELECT jobs.id, jobs.user_id, images.seed, COALESCE(jobs.resolved, jobs.params),
                      jobs.queued_at, jobs.started_at, jobs.engine_seconds, jobs.worker,
                      jobs.source_image_id
               FROM images JOIN jobs ON jobs.id = images.job_id WHERE images.id = ?""",
            (image_id,)) as cursor:
        (job_id, user_id, seed, params, queued_at, started_at, engine_seconds, worker,
         source) = await cursor.fetchone()
    async with db.execute("SELECT user_id, score FROM ratings WHERE image_id = ?",
                          (image_id,)) as cursor:
        ratings = list(await cursor.fetchall())
    parent = None
    if source is not None:
        found = await _tiles_where(db, scope, "images.id = ?", [source])
        parent = found[0] if found else None
    children = await _tiles_where(
        db, scope, "images.job_id IN (SELECT id FROM jobs WHERE source_image_id = ?)",
        [image_id])
    return Picture(tile, job_id, user_id, seed, json.loads(params), queued_at, started_at,
                   engine_seconds, worker, [score for _, score in ratings],
                   next((score for who, score in ratings if who == scope.user_id), None),
                   parent, children, from_hidden=source is not None and parent is None)


async def _tiles_where(db: Reader, scope: Scope, condition: str,
                       params: list[Any], limit: int = 48) -> list[Tile]:
    where, visible = _visible(scope)
    sql = f"{_TILE} WHERE {' AND '.join([*where, condition])} ORDER BY images.id DESC LIMIT ?"
    async with db.execute(sql, [*visible, *params, limit]) as cursor:
        return [Tile(*row) for row in await cursor.fetchall()]


async def image_blob(db: Reader, scope: Scope, image_id: int) -> str | None:
    """The blob key of an image the viewer may see (None for any other)."""
    where, params = _visible(scope)
    async with db.execute(
            f"""SELECT images.blob FROM images JOIN jobs ON jobs.id = images.job_id
                WHERE {' AND '.join([*where, 'images.id = ?'])}""",
            [*params, image_id]) as cursor:
        row = await cursor.fetchone()
    return row[0] if row else None


def _whole(text: str) -> int | None:
    if not re.fullmatch(r"[0-9]{1,18}", text):
        return None
    return int(text)


def _date(text: str) -> dt.date | None:
    try:
        return dt.date.fromisoformat(text) if text else None
    except ValueError:
        return None


def _end_of(day: dt.date) -> float:
    try:
        return _start_of(day + dt.timedelta(days=1))
    except OverflowError:  # 9999-12-31
        return 1e12


def _start_of(day: dt.date) -> float:
    """Midnight at the start of `day`, in the server's local time, as a Unix time."""
    try:
        return dt.datetime.combine(day, dt.time()).timestamp()
    except (OverflowError, OSError, ValueError):  # year 1 or 9999
        return 0.0 if day.year < 2000 else 1e12
