"""Everything users asked, got and rated, in SQLite (aiosqlite).

A job is written here before it is queued and its result before it is delivered; `delivered_at`
tells a restarted bot which finished jobs still owe the user a reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiosqlite

# Each entry is one migration; the database's user_version counts how many have run.
# Append only: never edit a migration that has shipped.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE users (
        id INTEGER PRIMARY KEY,
        platform TEXT NOT NULL,
        platform_user_id TEXT NOT NULL,
        name TEXT,
        created_at REAL NOT NULL,
        UNIQUE (platform, platform_user_id)
    );
    CREATE TABLE model_versions (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        base_model TEXT NOT NULL,
        parent_id INTEGER REFERENCES model_versions(id),
        lora_path TEXT,
        images_used INTEGER,
        ratings_used INTEGER,
        steps INTEGER,
        rank INTEGER,
        final_loss REAL,
        seconds REAL,
        created_at REAL NOT NULL,
        UNIQUE (base_model, name)
    );
    CREATE TABLE active_versions (
        base_model TEXT PRIMARY KEY,
        version_id INTEGER NOT NULL REFERENCES model_versions(id)
    );
    CREATE TABLE jobs (
        id INTEGER PRIMARY KEY,
        user_id INTEGER NOT NULL REFERENCES users(id),
        kind TEXT NOT NULL CHECK (kind IN ('txt2img', 'img2img', 'inpaint')),
        prompt TEXT NOT NULL,
        negative_prompt TEXT NOT NULL DEFAULT '',
        seed INTEGER NOT NULL,
        n INTEGER NOT NULL DEFAULT 1,
        steps INTEGER,
        guidance REAL,
        aspect_w INTEGER NOT NULL DEFAULT 1,
        aspect_h INTEGER NOT NULL DEFAULT 1,
        width INTEGER,
        height INTEGER,
        strength REAL,
        model TEXT,
        source_image_id INTEGER REFERENCES images(id),
        init_path TEXT,
        mask_path TEXT,
        status TEXT NOT NULL DEFAULT 'queued'
            CHECK (status IN ('queued', 'running', 'done', 'failed', 'cancelled')),
        error TEXT,
        origin TEXT NOT NULL DEFAULT '{}',
        queued_at REAL NOT NULL,
        started_at REAL,
        finished_at REAL,
        delivered_at REAL,
        engine_seconds REAL
    );
    CREATE INDEX jobs_by_status ON jobs(status);
    CREATE INDEX jobs_by_user ON jobs(user_id, id);
    CREATE INDEX jobs_by_request ON jobs(json_extract(origin, '$.request_key'));
    CREATE TABLE images (
        id INTEGER PRIMARY KEY,
        job_id INTEGER NOT NULL REFERENCES jobs(id),
        idx INTEGER NOT NULL,
        path TEXT NOT NULL,
        seed INTEGER NOT NULL,
        width INTEGER NOT NULL,
        height INTEGER NOT NULL,
        model_version TEXT NOT NULL,
        created_at REAL NOT NULL,
        UNIQUE (job_id, idx)
    );
    CREATE TABLE ratings (
        image_id INTEGER NOT NULL REFERENCES images(id),
        user_id INTEGER NOT NULL REFERENCES users(id),
        score INTEGER NOT NULL CHECK (score BETWEEN 1 AND 5),
        rated_at REAL NOT NULL,
        PRIMARY KEY (image_id, user_id)
    );
    CREATE TABLE training_runs (
        id INTEGER PRIMARY KEY,
        version TEXT NOT NULL,
        base_model TEXT NOT NULL,
        parent_id INTEGER NOT NULL REFERENCES model_versions(id),
        user_id INTEGER NOT NULL REFERENCES users(id),
        status TEXT NOT NULL DEFAULT 'running'
            CHECK (status IN ('running', 'done', 'failed', 'cancelled')),
        steps INTEGER NOT NULL,
        rank INTEGER NOT NULL,
        min_score REAL NOT NULL,
        images_used INTEGER NOT NULL,
        ratings_used INTEGER NOT NULL,
        step INTEGER NOT NULL DEFAULT 0,
        loss REAL,
        error TEXT,
        origin TEXT NOT NULL DEFAULT '{}',
        started_at REAL NOT NULL,
        finished_at REAL
    );
    """,
)

ACTIVE_STATUSES = ("queued", "running")


@dataclass(frozen=True)
class NewJob:
    """What the service knows about a job before the engine has seen it."""

    user_id: int
    kind: str
    prompt: str
    seed: int
    negative_prompt: str = ""
    n: int = 1
    steps: int | None = None
    guidance: float | None = None
    aspect: tuple[int, int] = (1, 1)
    strength: float | None = None
    model: str | None = None
    source_image_id: int | None = None
    init_path: str | None = None
    mask_path: str | None = None
    origin: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class JobRow:
    id: int
    user_id: int
    platform: str
    platform_user_id: str
    kind: str
    prompt: str
    negative_prompt: str
    seed: int
    n: int
    steps: int | None
    guidance: float | None
    aspect_w: int
    aspect_h: int
    width: int | None
    height: int | None
    strength: float | None
    model: str | None
    source_image_id: int | None
    init_path: str | None
    mask_path: str | None
    status: str
    error: str | None
    origin: dict[str, Any]
    queued_at: float
    started_at: float | None
    finished_at: float | None
    delivered_at: float | None
    engine_seconds: float | None


@dataclass(frozen=True)
class ImageRow:
    id: int
    job_id: int
    idx: int
    path: str
    seed: int
    width: int
    height: int
    model_version: str
    created_at: float


@dataclass(frozen=True)
class NewImage:
    path: str
    seed: int
    width: int
    height: int


_JOB_SELECT = """
    SELECT jobs.*, users.platform, users.platform_user_id
    FROM jobs JOIN users ON users.id = jobs.user_id
"""


def _job(row: aiosqlite.Row) -> JobRow:
    values = dict(row)
    values["origin"] = json.loads(values["origin"])
    return JobRow(**values)


def _image(row: aiosqlite.Row) -> ImageRow:
    return ImageRow(**dict(row))


def _file_uri(path: Path) -> str:
    return path.absolute().as_uri()


async def _migrate(db: aiosqlite.Connection) -> None:
    async with db.execute("PRAGMA user_version") as cursor:
        (version,) = await cursor.fetchone()
    for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
        # One transaction per migration: the schema and its number change together.
        await db.executescript(f"BEGIN; {script}; PRAGMA user_version = {number}; COMMIT;")


class Store:
    """The SQLite store. Open with `await Store.open(path)`; close with `await store.close()`.

    Every coroutine shares it, so writes go through `transaction()`: one at a time (a lock)
    in a BEGIN IMMEDIATE transaction, so no one's commit can carry half of another's work nor
    a rollback drop it. Reads go through a read-only connection of their own, which sees
    what is committed (WAL lets it read while the writer writes)."""

    def __init__(self, db: aiosqlite.Connection, reader: aiosqlite.Connection) -> None:
        self._db = db
        self._read = reader
        self._write_lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: Path) -> Store:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = await aiosqlite.connect(path)
        db.row_factory = aiosqlite.Row
        await db.execute("PRAGMA journal_mode = WAL")
        await db.execute("PRAGMA foreign_keys = ON")
        await db.execute("PRAGMA busy_timeout = 5000")
        await db.execute("PRAGMA synchronous = NORMAL")
        await _migrate(db)
        reader = await aiosqlite.connect(f"{_file_uri(path)}?mode=ro", uri=True)
        reader.row_factory = aiosqlite.Row
        await reader.execute("PRAGMA busy_timeout = 5000")
        return cls(db, reader)

    async def close(self) -> None:
        await self._read.close()
        await self._db.close()

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """The writing connection, inside a transaction of its own: committed when the block
        ends, rolled back if it raises."""
        async with self._write_lock:
            await self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                await self._db.rollback()
                raise
            await self._db.commit()

    @property
    def reader(self) -> aiosqlite.Connection:
        """For stores of other tables (bot/learning_store.py) that share this database."""
        return self._read

    async def schema_version(self) -> int:
        async with self._read.execute("PRAGMA user_version") as cursor:
            (version,) = await cursor.fetchone()
        return version

    # ---- users ---------------------------------------------------------------------------

    async def ensure_user(self, platform: str, platform_user_id: str,
                          name: str | None = None) -> int:
        async with self.transaction() as db:
            await db.execute(
                """INSERT INTO users (platform, platform_user_id, name, created_at)
                   VALUES (?, ?, ?, ?)
                   ON CONFLICT (platform, platform_user_id)
                   DO UPDATE SET name = COALESCE(excluded.name, users.name)""",
                (platform, platform_user_id, name, time.time()),
            )
        async with self._read.execute(
            "SELECT id FROM users WHERE platform = ? AND platform_user_id = ?",
            (platform, platform_user_id),
        ) as cursor:
            (user_id,) = await cursor.fetchone()
        return user_id

    # ---- jobs ----------------------------------------------------------------------------

    async def add_job(self, job: NewJob) -> int:
        async with self.transaction() as db:
            cursor = await db.execute(
                """INSERT INTO jobs (user_id, kind, prompt, negative_prompt, seed, n, steps,
                       guidance, aspect_w, aspect_h, strength, model, source_image_id,
                       init_path, mask_path, origin, queued_at)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                (job.user_id, job.kind, job.prompt, job.negative_prompt, job.seed, job.n, job.steps,
                 job.guidance, job.aspect[0], job.aspect[1], job.strength, job.model,
                 job.source_image_id, job.init_path, job.mask_path, json.dumps(job.origin),
                 time.time()),
            )
        return cursor.lastrowid

    async def job_for_request(self, request_key: str) -> JobRow | None:
        """The job an adapter's request (a chat message, a button press) already made."""
        rows = await self._jobs("json_extract(jobs.origin, '$.request_key') = ? LIMIT 1",
                                (request_key,))
        return rows[0] if rows else None

    async def get_job(self, job_id: int) -> JobRow | None:
        async with self._read.execute(f"{_JOB_SELECT} WHERE jobs.id = ?", (job_id,)) as cursor:
            row = await cursor.fetchone()
        return _job(row) if row else None

    async def _jobs(self, where: str, params: Sequence[Any] = ()) -> list[JobRow]:
        async with self._read.execute(f"{_JOB_SELECT} WHERE {where}", params) as cursor:
            return [_job(row) for row in await cursor.fetchall()]

    async def active_jobs(self) -> list[JobRow]:
        """Queued and running jobs, oldest first: the work a restarted bot takes up again."""
        return await self._jobs("jobs.status IN ('queued', 'running') ORDER BY jobs.id")

    async def undelivered_jobs(self) -> list[JobRow]:
        """Finished jobs whose outcome has not reached the user yet, oldest first."""
        return await self._jobs(
            "jobs.status IN ('done', 'failed', 'cancelled') AND jobs.delivered_at IS NULL"
            " ORDER BY jobs.id"
        )

    async def mark_started(self, job_id: int, width: int, height: int, steps: int,
                           guidance: float) -> None:
        async with self.transaction() as db:
            await db.execute(
                """UPDATE jobs SET status = 'running', started_at = ?, width = ?, height = ?,
                       steps = ?, guidance = ?
                   WHERE id = ? AND status = 'queued'""",
                (time.time(), width, height, steps, guidance, job_id),
            )

    async def mark_requeued(self, job_id: int) -> None:
        async with self.transaction() as db:
            await db.execute(
                """UPDATE jobs SET status = 'queued', started_at = NULL
                   WHERE id = ? AND status = 'running'""",
                (job_id,),
            )

    async def save_result(self, job_id: int, images: Iterable[NewImage], engine_seconds: float,
                          model_version: str) -> list[ImageRow]:
        """Store the images and finish the job, in one transaction."""
        now = time.time()
        async with self.transaction() as db:
            for idx, image in enumerate(images):
                await db.execute(
                    """INSERT INTO images (job_id, idx, path, seed, width, height, model_version,
                           created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)""",
                    (job_id, idx, image.path, image.seed, image.width, image.height,
                     model_version, now),
                )
            await db.execute(
                """UPDATE jobs SET status = 'done', finished_at = ?, engine_seconds = ?,
                       error = NULL
                   WHERE id = ?""",
                (now, engine_seconds, job_id),
            )
        return await self.images_for_job(job_id)

    async def mark_failed(self, job_id: int, error: str, *, cancelled: bool = False) -> None:
        async with self.transaction() as db:
            await db.execute(
                "UPDATE jobs SET status = ?, error = ?, finished_at = ? WHERE id = ?",
                ("cancelled" if cancelled else "failed", error, time.time(), job_id),
            )

    async def mark_delivered(self, job_id: int) -> None:
        async with self.transaction() as db:
            await db.execute(
                "UPDATE jobs SET delivered_at = ? WHERE id = ? AND delivered_at IS NULL",
                (time.time(), job_id),
            )

    # ---- images and ratings --------------------------------------------------------------

    async def get_image(self, image_id: int) -> ImageRow | None:
        async with self._read.execute("SELECT * FROM images WHERE id = ?", (image_id,)) as cursor:
            row = await cursor.fetchone()
        return _image(row) if row else None

    async def images_for_job(self, job_id: int) -> list[ImageRow]:
        async with self._read.execute(
            "SELECT * FROM images WHERE job_id = ? ORDER BY idx", (job_id,)
        ) as cursor:
            return [_image(row) for row in await cursor.fetchall()]

    async def history(self, user_id: int, limit: int = 10) -> list[tuple[ImageRow, str]]:
        """The user's most recent images, newest first, each with the prompt that made it."""
        async with self._read.execute(
            """SELECT images.*, jobs.prompt AS prompt
               FROM images JOIN jobs ON jobs.id = images.job_id
               WHERE jobs.user_id = ? ORDER BY images.id DESC LIMIT ?""",
            (user_id, limit),
        ) as cursor:
            rows = await cursor.fetchall()
        result = []
        for row in rows:
            values = dict(row)
            prompt = values.pop("prompt")
            result.append((ImageRow(**values), prompt))
        return result

    async def rate(self, image_id: int, user_id: int, score: int) -> None:
        """Record a score; a second rating by the same user replaces the first."""
        async with self.transaction() as db:
            await db.execute(
                """INSERT INTO ratings (image_id, user_id, score, rated_at) VALUES (?, ?, ?, ?)
                   ON CONFLICT (image_id, user_id)
                   DO UPDATE SET score = excluded.score, rated_at = excluded.rated_at""",
                (image_id, user_id, score, time.time()),
            )

    async def rating(self, image_id: int, user_id: int) -> int | None:
        async with self._read.execute(
            "SELECT score FROM ratings WHERE image_id = ? AND user_id = ?", (image_id, user_id)
        ) as cursor:
            row = await cursor.fetchone()
        return row[0] if row else None

    # ---- model versions ------------------------------------------------------------------

    async def ensure_model_version(self, name: str, base_model: str) -> int:
        async with self.transaction() as db:
            await db.execute(
                """INSERT INTO model_versions (name, base_model, created_at) VALUES (?, ?, ?)
                   ON CONFLICT (base_model, name) DO NOTHING""",
                (name, base_model, time.time()),
            )
        async with self._read.execute(
            "SELECT id FROM model_versions WHERE base_model = ? AND name = ?",
            (base_model, name),
        ) as cursor:
            (version_id,) = await cursor.fetchone()
        return version_id

