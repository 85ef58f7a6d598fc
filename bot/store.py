"""Everything users asked, got and rated, in SQLite (aiosqlite).

A job is written here before it is queued and its result before it is delivered; `delivered_at`
tells a restarted bot which finished jobs still owe the user a reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiosqlite

from bot.migrations import MIGRATIONS, migrate  # noqa: F401  (MIGRATIONS: for tests)
from engine.blobs import Blobs, LocalBlobs
from engine.params import Params

ACTIVE_STATUSES = ("queued", "running")


@dataclass(frozen=True)
class NewJob:
    """What the service knows about a job before the engine has seen it."""

    user_id: int
    params: Params
    source_image_id: int | None = None  # the bot's picture that /vary or Reroll started from
    origin: dict[str, Any] = field(default_factory=dict)
    # Attached pictures by their blob keys in `params`: put in the blob store only once the job
    # is admitted, so a refused one leaves nothing behind.
    uploads: tuple[tuple[str, bytes], ...] = ()


@dataclass(frozen=True)
class JobRow:
    id: int
    user_id: int
    platform: str
    platform_user_id: str
    params: Params  # as asked (the seed always set)
    resolved: Params | None  # as the engine ran it: every default filled in
    source_image_id: int | None
    width: int | None
    height: int | None
    status: str
    error: str | None
    origin: dict[str, Any]
    queued_at: float
    started_at: float | None
    finished_at: float | None
    delivered_at: float | None
    engine_seconds: float | None
    worker: str = ""  # the remote worker that made it; '' for the bot's own engine

    @property
    def kind(self) -> str:
        return self.params.kind

    @property
    def prompt(self) -> str:
        return self.params.prompt or ""


@dataclass(frozen=True)
class ImageRow:
    id: int
    job_id: int
    idx: int
    blob: str  # the PNG's key in the blob store
    seed: int
    width: int
    height: int
    version: str  # the LoRA version that drew it ("base": none)
    created_at: float
    flagged: bool = False  # the model's safety checker flagged it (sent hidden)


@dataclass(frozen=True)
class NewImage:
    blob: str
    seed: int
    width: int
    height: int
    flagged: bool = False


_JOB_SELECT = """
    SELECT jobs.*, users.platform, users.platform_user_id
    FROM jobs JOIN users ON users.id = jobs.user_id
"""


# Kept in columns for queries (history, the gallery); the record itself is `params`.
_QUERIED_PARAMS = ("kind", "prompt", "checkpoint")


def _job(row: aiosqlite.Row) -> JobRow:
    values = dict(row)
    for name in _QUERIED_PARAMS:
        del values[name]
    values["origin"] = json.loads(values["origin"])
    values["params"] = Params.from_json(values["params"])
    values["resolved"] = values["resolved"] and Params.from_json(values["resolved"])
    return JobRow(**values)


def image_row(row: aiosqlite.Row | dict) -> ImageRow:
    values = dict(row)
    values["flagged"] = bool(values.get("flagged"))
    return ImageRow(**values)


def _file_uri(path: Path) -> str:
    return path.absolute().as_uri()


class _Fetched:
    def __init__(self, rows: list[aiosqlite.Row]) -> None:
        self._rows = rows

    async def fetchall(self) -> list[aiosqlite.Row]:
        return self._rows

    async def fetchone(self) -> aiosqlite.Row | None:
        return self._rows[0] if self._rows else None


class Reader:
    """A read-only connection on which every query runs to its end in one step.

    A statement left open across an await (execute now, fetch later) keeps its read snapshot
    for the whole connection: any query run on it meanwhile, by any coroutine, misses what
    was committed since, such as the row its caller has just written. So each query here is
    executed and fetched in one call, and used as `async with reader.execute(...) as rows`."""

    def __init__(self, connection: aiosqlite.Connection) -> None:
        self.connection = connection

    @contextlib.asynccontextmanager
    async def execute(self, sql: str, params: Sequence[Any] = ()) -> AsyncIterator[_Fetched]:
        yield _Fetched(list(await self.connection.execute_fetchall(sql, params)))

    async def close(self) -> None:
        await self.connection.close()


async def open_reader(path: Path) -> Reader:
    """A read-only connection to the database at `path` (WAL lets it read during writes)."""
    connection = await aiosqlite.connect(f"{_file_uri(path)}?mode=ro", uri=True)
    connection.row_factory = aiosqlite.Row
    await connection.execute("PRAGMA busy_timeout = 5000")
    return Reader(connection)


class Store:
    """The SQLite store. Open with `await Store.open(path)`; close with `await store.close()`.

    Every coroutine shares it, so writes go through `transaction()`: one at a time (a lock)
    in a BEGIN IMMEDIATE transaction, so no one's commit can carry half of another's work nor
    a rollback drop it. Reads go through a read-only connection of their own, which sees
    what is committed (WAL lets it read while the writer writes)."""

    def __init__(self, db: aiosqlite.Connection, reader: Reader) -> None:
        self._db = db
        self._read = reader
        self._write_lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: Path, blobs: Blobs | None = None) -> Store:
        """Open (creating and migrating as needed) the database at `path`. `blobs` is where a
        migration moves files an older version kept on disk (default: `blobs` beside it)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        db = await aiosqlite.connect(path)
        db.row_factory = aiosqlite.Row
        await db.execute("PRAGMA journal_mode = WAL")
        await db.execute("PRAGMA foreign_keys = ON")
        await db.execute("PRAGMA busy_timeout = 5000")
        await db.execute("PRAGMA synchronous = NORMAL")
        await migrate(db, blobs or LocalBlobs(path.parent / "blobs"))
        return cls(db, await open_reader(path))

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
    def reader(self) -> Reader:
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
            params = job.params
            cursor = await db.execute(
                """INSERT INTO jobs (user_id, kind, prompt, checkpoint, params, source_image_id,
                       origin, queued_at)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?)""",
                (job.user_id, params.kind, params.prompt or "", params.checkpoint,
                 params.to_json(), job.source_image_id, json.dumps(job.origin), time.time()),
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

    async def jobs_of(self, user_id: int) -> list[JobRow]:
        return await self._jobs("jobs.user_id = ? ORDER BY jobs.id", (user_id,))

    async def active_jobs(self) -> list[JobRow]:
        """Queued and running jobs, oldest first: the work a restarted bot takes up again."""
        return await self._jobs("jobs.status IN ('queued', 'running') ORDER BY jobs.id")

    async def undelivered_jobs(self) -> list[JobRow]:
        """Finished jobs whose outcome has not reached the user yet, oldest first."""
        return await self._jobs(
            "jobs.status IN ('done', 'failed', 'cancelled') AND jobs.delivered_at IS NULL"
            " ORDER BY jobs.id"
        )

    async def mark_started(self, job_id: int, width: int, height: int,
                           resolved: Params) -> None:
        """The engine began the job, with every parameter resolved as `resolved` says."""
        async with self.transaction() as db:
            await db.execute(
                """UPDATE jobs SET status = 'running', started_at = ?, width = ?, height = ?,
                       resolved = ?
                   WHERE id = ? AND status = 'queued'""",
                (time.time(), width, height, resolved.to_json(), job_id),
            )

    async def mark_requeued(self, job_id: int) -> None:
        async with self.transaction() as db:
            await db.execute(
                """UPDATE jobs SET status = 'queued', started_at = NULL
                   WHERE id = ? AND status = 'running'""",
                (job_id,),
            )

    async def save_result(self, job_id: int, images: Iterable[NewImage], engine_seconds: float,
                          version: str, worker: str = "") -> list[ImageRow] | None:
        """Store the images and finish the job, in one transaction. None if the job was
        finished already (a second answer for it, from a worker it was taken back from)."""
        now = time.time()
        async with self.transaction() as db:
            async with db.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)) as cursor:
                row = await cursor.fetchone()
            if row is None or row[0] in ("done", "failed", "cancelled"):
                return None
            for idx, image in enumerate(images):
                await db.execute(
                    """INSERT INTO images (job_id, idx, blob, seed, width, height, version,
                           created_at, flagged) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                    (job_id, idx, image.blob, image.seed, image.width, image.height, version,
                     now, int(image.flagged)),
                )
            await db.execute(
                """UPDATE jobs SET status = 'done', finished_at = ?, engine_seconds = ?,
                       error = NULL, worker = ?
                   WHERE id = ?""",
                (now, engine_seconds, worker, job_id),
            )
        return await self.images_for_job(job_id)

    async def mark_failed(self, job_id: int, error: str, *, cancelled: bool = False) -> None:
        async with self.transaction() as db:
            await db.execute(
                "UPDATE jobs SET status = ?, error = ?, finished_at = ? WHERE id = ?"
                " AND status IN ('queued', 'running')",
                ("cancelled" if cancelled else "failed", error, time.time(), job_id),
            )

    async def note_posted(self, job_id: int, messages: dict[int | str, Any]) -> None:
        """Where each of a job's pictures was posted (by image id, and whatever else the
        platform needs), for a later /delete to edit: kept in the job's origin as `posted`."""
        async with self.transaction() as db:
            await db.execute(
                "UPDATE jobs SET origin = json_set(origin, '$.posted', json(?)) WHERE id = ?",
                (json.dumps({str(key): where for key, where in messages.items()}),
                 job_id))

    async def mark_delivered(self, job_id: int) -> None:
        async with self.transaction() as db:
            await db.execute(
                "UPDATE jobs SET delivered_at = ? WHERE id = ? AND delivered_at IS NULL",
                (time.time(), job_id),
            )

    # ---- models --------------------------------------------------------------------------

    async def record_load(self, name: str, came_from: str, seconds: float, device_bytes: int,
                          evicted: Sequence[str]) -> None:
        async with self.transaction() as db:
            await db.execute(
                """INSERT INTO model_loads (name, came_from, seconds, device_bytes, evicted,
                       loaded_at) VALUES (?, ?, ?, ?, ?, ?)""",
                (name, came_from, seconds, device_bytes, json.dumps(list(evicted)), time.time()))

    async def recent_loads(self, limit: int = 5) -> list[dict[str, Any]]:
        async with self._read.execute(
                "SELECT * FROM model_loads ORDER BY id DESC LIMIT ?", (limit,)) as cursor:
            return [dict(row) for row in await cursor.fetchall()]

    async def seconds_per_image(self, recent: int = 200) -> dict[str, float]:
        """Each model's median engine seconds per image, over its latest finished jobs."""
        async with self._read.execute(
                """SELECT json_extract(resolved, '$.checkpoint') AS model,
                          engine_seconds / json_extract(resolved, '$.n') AS each
                   FROM jobs WHERE status = 'done' AND resolved IS NOT NULL
                   ORDER BY id DESC LIMIT ?""", (recent * 10,)) as cursor:
            rows = await cursor.fetchall()
        times: dict[str, list[float]] = {}
        for model, each in rows:
            if model is not None and each is not None and len(times.get(model, ())) < recent:
                times.setdefault(model, []).append(each)
        return {model: statistics.median(values) for model, values in times.items()}

    # ---- images and ratings --------------------------------------------------------------

    async def get_image(self, image_id: int) -> ImageRow | None:
        async with self._read.execute("SELECT * FROM images WHERE id = ?", (image_id,)) as cursor:
            row = await cursor.fetchone()
        return image_row(row) if row else None

    async def images_for_job(self, job_id: int) -> list[ImageRow]:
        async with self._read.execute(
            "SELECT * FROM images WHERE job_id = ? ORDER BY idx", (job_id,)
        ) as cursor:
            return [image_row(row) for row in await cursor.fetchall()]

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
            result.append((image_row(values), prompt))
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

