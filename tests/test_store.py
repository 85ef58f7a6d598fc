"""The SQLite store: migrations, pragmas, and the rules the service relies on."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from bot.learning_store import LearningStore
from bot.store import MIGRATIONS, NewImage, NewJob, Store


async def test_a_new_database_is_migrated_with_wal_and_foreign_keys(tmp_path):
    store = await Store.open(tmp_path / "sub" / "canvas.db")
    assert await store.schema_version() == len(MIGRATIONS)
    await store.close()
    db = sqlite3.connect(tmp_path / "sub" / "canvas.db")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with pytest.raises(sqlite3.IntegrityError):
        db.execute("PRAGMA foreign_keys = ON")
        db.execute("INSERT INTO images (job_id, idx, path, seed, width, height, model_version,"
                   " created_at) VALUES (999, 0, 'x', 1, 1, 1, 'base', 0)")
    db.close()


async def test_reopening_keeps_data_and_runs_no_migration_twice(tmp_path):
    store = await Store.open(tmp_path / "canvas.db")
    user = await store.ensure_user("telegram", "5", "ann")
    assert await store.ensure_user("telegram", "5") == user
    job = await store.add_job(NewJob(user, "txt2img", "a red circle", seed=1))
    await store.close()
    store = await Store.open(tmp_path / "canvas.db")
    row = await store.get_job(job)
    assert (row.prompt, row.platform, row.platform_user_id, row.status) == (
        "a red circle", "telegram", "5", "queued")
    await store.close()


async def test_results_ratings_and_delivery(tmp_path):
    store = await Store.open(tmp_path / "canvas.db")
    user = await store.ensure_user("console", "me")
    job = await store.add_job(NewJob(user, "txt2img", "a red circle", seed=9, n=2))
    await store.mark_started(job, 64, 64, 20, 5.0)
    images = await store.save_result(job, [NewImage("a.png", 9, 64, 64),
                                           NewImage("b.png", 10, 64, 64)], 0.5, "base")
    assert [(i.idx, i.seed) for i in images] == [(0, 9), (1, 10)]
    assert [j.id for j in await store.undelivered_jobs()] == [job]
    await store.mark_delivered(job)
    assert await store.undelivered_jobs() == []

    await store.rate(images[0].id, user, 5)
    await store.rate(images[0].id, user, 3)
    assert await store.rating(images[0].id, user) == 3
    with pytest.raises(sqlite3.IntegrityError):
        await store.rate(images[0].id, user, 6)
    await store.close()


async def test_a_write_that_fails_beside_another_takes_nothing_of_the_other_with_it(tmp_path):
    """Every coroutine shares the store: one write's rollback must not drop another's
    uncommitted work (each write is its own transaction)."""
    store = await Store.open(tmp_path / "canvas.db")
    learning = LearningStore(store)
    user = await store.ensure_user("telegram", "5", "ann")
    try:
        for round_ in range(5):
            job = await store.add_job(NewJob(user, "txt2img", "a red circle", seed=round_))
            images = [NewImage(f"{round_}-{i}.png", i, 64, 64) for i in range(4)]

            async def failing() -> None:
                with pytest.raises(AttributeError):  # no such run: it fails half way
                    await learning.finish_run_with_version(999, "lora", 0.1, 1.0)

            await asyncio.gather(store.save_result(job, images, 1.0, "base"),
                                 *(failing() for _ in range(3)))
            assert [image.path for image in await store.images_for_job(job)] == [
                f"{round_}-{i}.png" for i in range(4)]
            assert (await store.get_job(job)).status == "done"
    finally:
        await store.close()
