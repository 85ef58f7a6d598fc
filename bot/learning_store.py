"""Ratings as training data, training runs and model versions: the store of the learning loop.

It shares the main Store's SQLite connection (and so its transactions and migrations)."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiosqlite

from bot.store import Store


@dataclass(frozen=True)
class VersionRow:
    id: int
    name: str
    base_model: str
    parent_id: int | None
    adapter: str | None  # blob key of its LoRA weights (None: the base model)
    images_used: int | None
    ratings_used: int | None
    steps: int | None
    rank: int | None
    final_loss: float | None
    seconds: float | None
    created_at: float


@dataclass(frozen=True)
class TrainingExample:
    image_id: int
    blob: str
    prompt: str
    score: float
    ratings: int


@dataclass(frozen=True)
class RunRow:
    id: int
    version: str
    base_model: str
    parent_id: int
    user_id: int
    status: str
    steps: int
    rank: int
    min_score: float
    images_used: int
    ratings_used: int
    step: int
    loss: float | None
    error: str | None
    origin: dict[str, Any]
    started_at: float
    finished_at: float | None
    platform: str


class LearningStore:
    """`LearningStore(store)`: the learning loop's tables, on the store's connection."""

    def __init__(self, store: Store) -> None:
        self._read = store.reader
        self.transaction = store.transaction

    async def _all(self, sql: str, params: Sequence[Any] = ()) -> list[aiosqlite.Row]:
        async with self._read.execute(sql, params) as cursor:
            return list(await cursor.fetchall())

    async def training_examples(self, min_score: float) -> list[TrainingExample]:
        """Images whose average rating is at least `min_score`, with the prompts that made
        them, oldest first. Neither the pictures nor the ratings of users who opted out
        (/optout) count."""
        rows = await self._all(
            """SELECT images.id AS image_id, images.blob, jobs.prompt,
                   AVG(ratings.score) AS score, COUNT(*) AS ratings
               FROM images JOIN jobs ON jobs.id = images.job_id
               JOIN users AS makers ON makers.id = jobs.user_id AND makers.trains
               JOIN ratings ON ratings.image_id = images.id
               JOIN users AS raters ON raters.id = ratings.user_id AND raters.trains
               GROUP BY images.id HAVING AVG(ratings.score) >= ? ORDER BY images.id""",
            (min_score,))
        return [TrainingExample(**dict(row)) for row in rows]

    # ---- versions ------------------------------------------------------------------------

    async def versions(self, base_model: str) -> list[VersionRow]:
        rows = await self._all(
            "SELECT * FROM model_versions WHERE base_model = ? ORDER BY id", (base_model,))
        return [VersionRow(**dict(row)) for row in rows]

    async def version(self, base_model: str, name: str) -> VersionRow | None:
        rows = await self._all(
            "SELECT * FROM model_versions WHERE base_model = ? AND name = ?", (base_model, name))
        return VersionRow(**dict(rows[0])) if rows else None

    async def chain(self, version: VersionRow) -> list[VersionRow]:
        """The LoRA versions to stack for `version`, oldest first (empty for the base)."""
        by_id = {row.id: row for row in await self.versions(version.base_model)}
        chain: list[VersionRow] = []
        current: VersionRow | None = version
        while current is not None and current.adapter:
            chain.append(current)
            current = by_id.get(current.parent_id)
        return chain[::-1]

    async def adopt(self, old: str, new: str) -> None:
        """Versions kept under `old` (a model's source, as older bots named models) go by
        `new` (its name now), unless `new` has versions of its own."""
        if old == new or await self.versions(new) or not await self.versions(old):
            return
        async with self.transaction() as db:
            for table in ("model_versions", "active_versions", "training_runs"):
                await db.execute(f"UPDATE {table} SET base_model = ? WHERE base_model = ?",
                                 (new, old))

    async def active_version(self, base_model: str) -> VersionRow | None:
        rows = await self._all(
            """SELECT model_versions.* FROM active_versions
               JOIN model_versions ON model_versions.id = active_versions.version_id
               WHERE active_versions.base_model = ?""", (base_model,))
        return VersionRow(**dict(rows[0])) if rows else None

    async def set_active_version(self, version: VersionRow) -> None:
        async with self.transaction() as db:
            await db.execute(
                """INSERT INTO active_versions (base_model, version_id) VALUES (?, ?)
                   ON CONFLICT (base_model) DO UPDATE SET version_id = excluded.version_id""",
                (version.base_model, version.id))

    # ---- training runs -------------------------------------------------------------------

    async def start_run(self, *, version: str, base_model: str, parent_id: int, user_id: int,
                        steps: int, rank: int, min_score: float,
                        examples: Sequence[TrainingExample], origin: dict[str, Any]) -> int:
        """The run's record, with each picture it trains on and that picture's ratings."""
        async with self.transaction() as db:
            cursor = await db.execute(
                """INSERT INTO training_runs (version, base_model, parent_id, user_id, steps, rank,
                       min_score, images_used, ratings_used, origin, started_at)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                (version, base_model, parent_id, user_id, steps, rank, min_score, len(examples),
                 sum(example.ratings for example in examples), json.dumps(origin),
                 time.time()))
            await db.executemany(
                """INSERT INTO training_run_images (run_id, image_id, score, ratings)
                   VALUES (?, ?, ?, ?)""",
                [(cursor.lastrowid, e.image_id, e.score, e.ratings) for e in examples])
        return cursor.lastrowid

    async def run_images(self, run_id: int) -> list[tuple[int | None, float, int]]:
        """What a run trained on: (image id, or None once deleted; its score; its ratings)."""
        rows = await self._all("SELECT image_id, score, ratings FROM training_run_images"
                               " WHERE run_id = ? ORDER BY rowid", (run_id,))
        return [tuple(row) for row in rows]

    async def run(self, run_id: int) -> RunRow | None:
        rows = await self._all(
            """SELECT training_runs.*, users.platform FROM training_runs
               JOIN users ON users.id = training_runs.user_id WHERE training_runs.id = ?""",
            (run_id,))
        if not rows:
            return None
        values = dict(rows[0])
        values["origin"] = json.loads(values["origin"])
        return RunRow(**values)

    async def record_progress(self, run_id: int, step: int, loss: float,
                              losses: Sequence[float] = ()) -> None:
        """The run is at `step` with `loss`; `losses` are the steps' own up to it (for the
        chart), else only this step's is kept."""
        steps = losses or (loss,)
        first = step - len(steps) + 1
        async with self.transaction() as db:
            await db.execute("UPDATE training_runs SET step = ?, loss = ? WHERE id = ?",
                             (step, loss, run_id))
            await db.executemany(
                "INSERT OR REPLACE INTO training_losses (run_id, step, loss) VALUES (?, ?, ?)",
                [(run_id, first + n, value) for n, value in enumerate(steps)
                 if value == value])  # NaN: a step with no loss to draw

    async def finish_run(self, run_id: int, status: str, error: str | None = None) -> None:
        async with self.transaction() as db:
            await db.execute(
                """UPDATE training_runs SET status = ?, error = ?, finished_at = ?
                   WHERE id = ? AND status = 'running'""",
                (status, error, time.time(), run_id))

    async def interrupt_runs(self) -> int:
        """Runs left 'running' by a crash or a restart: they can never finish now."""
        async with self.transaction() as db:
            cursor = await db.execute(
                """UPDATE training_runs SET status = 'failed', finished_at = ?,
                       error = 'Interrupted: the bot stopped during training.'
                   WHERE status = 'running'""", (time.time(),))
        return cursor.rowcount

    async def finish_run_with_version(self, run_id: int, adapter: str, final_loss: float,
                                      seconds: float) -> VersionRow:
        """The run succeeded: store its version and make it active, in one transaction."""
        run = await self.run(run_id)
        async with self.transaction() as db:
            cursor = await db.execute(
                """INSERT INTO model_versions (name, base_model, parent_id, adapter,
                       images_used, ratings_used, steps, rank, final_loss, seconds, created_at)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                (run.version, run.base_model, run.parent_id, adapter, run.images_used,
                 run.ratings_used, run.steps, run.rank, final_loss, seconds, time.time()))
            await db.execute(
                """INSERT INTO active_versions (base_model, version_id) VALUES (?, ?)
                   ON CONFLICT (base_model) DO UPDATE SET version_id = excluded.version_id""",
                (run.base_model, cursor.lastrowid))
            await db.execute(
                """UPDATE training_runs SET status = 'done', step = steps, loss = ?,
                       finished_at = ? WHERE id = ?""", (final_loss, time.time(), run_id))
        return await self.version(run.base_model, run.version)
