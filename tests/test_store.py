"""The SQLite store: migrations, pragmas, and the rules the service relies on."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from bot.learning_store import LearningStore
from bot.migrations import MIGRATIONS
from bot.store import NewImage, NewJob, Store
from engine.params import Params


def txt2img(prompt: str, **given) -> Params:
    return Params(kind="txt2img", prompt=prompt, **given)


async def test_a_new_database_is_migrated_with_wal_and_foreign_keys(tmp_path):
    store = await Store.open(tmp_path / "sub" / "canvas.db")
    assert await store.schema_version() == len(MIGRATIONS)
    await store.close()
    db = sqlite3.connect(tmp_path / "sub" / "canvas.db")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with pytest.raises(sqlite3.IntegrityError):
        db.execute("PRAGMA foreign_keys = ON")
        db.execute("INSERT INTO images (job_id, idx, blob, seed, width, height, version,"
                   " created_at) VALUES (999, 0, 'x', 1, 1, 1, 'base', 0)")
    db.close()


async def test_reopening_keeps_data_and_runs_no_migration_twice(tmp_path):
    store = await Store.open(tmp_path / "canvas.db")
    user = await store.ensure_user("telegram", "5", "ann")
    assert await store.ensure_user("telegram", "5") == user
    job = await store.add_job(NewJob(user, txt2img("a red circle", seed=1)))
    await store.close()
    store = await Store.open(tmp_path / "canvas.db")
    row = await store.get_job(job)
    assert (row.prompt, row.platform, row.platform_user_id, row.status) == (
        "a red circle", "telegram", "5", "queued")
    await store.close()


async def test_results_ratings_and_delivery(tmp_path):
    store = await Store.open(tmp_path / "canvas.db")
    user = await store.ensure_user("console", "me")
    job = await store.add_job(NewJob(user, txt2img("a red circle", seed=9, n=2)))
    await store.mark_started(job, 64, 64, txt2img("a red circle", seed=9, n=2, steps=20,
                                                  cfg=5.0).complete())
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
            job = await store.add_job(NewJob(user, txt2img("a red circle", seed=round_)))
            images = [NewImage(f"{round_}-{i}.png", i, 64, 64) for i in range(4)]

            async def failing() -> None:
                with pytest.raises(AttributeError):  # no such run: it fails half way
                    await learning.finish_run_with_version(999, "lora", 0.1, 1.0)

            await asyncio.gather(store.save_result(job, images, 1.0, "base"),
                                 *(failing() for _ in range(3)))
            assert [image.blob for image in await store.images_for_job(job)] == [
                f"{round_}-{i}.png" for i in range(4)]
            assert (await store.get_job(job)).status == "done"
    finally:
        await store.close()


async def test_a_database_of_the_first_schema_keeps_its_jobs_pictures_and_versions(tmp_path):
    """An older bot kept parameters in columns and files at paths: after the migration the
    same jobs have the same parameters, and their pictures and LoRA are in the blob store."""
    from bot.migrations import FIRST_SCHEMA, LORA_FILE
    from engine.blobs import LocalBlobs

    db_path = tmp_path / "canvas.db"
    (tmp_path / "in.png").write_bytes(b"picture")
    (tmp_path / "out.png").write_bytes(b"result")
    (tmp_path / "v1").mkdir()
    (tmp_path / "v1" / LORA_FILE).write_bytes(b"lora weights")
    with sqlite3.connect(db_path) as db:
        db.executescript(f"BEGIN; {FIRST_SCHEMA}; PRAGMA user_version = 1; COMMIT;")
        db.execute("INSERT INTO users VALUES (1, 'telegram', '5', 'ann', 0)")
        db.execute("""INSERT INTO jobs (user_id, kind, prompt, negative_prompt, seed, n, steps,
                          guidance, aspect_w, aspect_h, strength, model, init_path, status,
                          queued_at, started_at)
                      VALUES (1, 'img2img', 'a fox', 'blurry', 7, 2, 12, 4.5, 1, 1, 0.5, NULL,
                              ?, 'done', 0, 1)""", (str(tmp_path / "in.png"),))
        db.execute("""INSERT INTO images (job_id, idx, path, seed, width, height, model_version,
                          created_at) VALUES (1, 0, ?, 7, 64, 64, 'v1', 0)""",
                   (str(tmp_path / "out.png"),))
        db.execute("""INSERT INTO model_versions (name, base_model, lora_path, created_at)
                      VALUES ('v1', 'bundled:shapes', ?, 0)""", (str(tmp_path / "v1"),))
    db.close()

    blobs = LocalBlobs(tmp_path / "blobs")
    store = await Store.open(db_path, blobs)
    try:
        assert await store.schema_version() == len(MIGRATIONS)
        job = await store.get_job(1)
        assert job.params == Params(kind="img2img", prompt="a fox", negative="blurry", seed=7,
                                    steps=12, cfg=4.5, n=2, strength=0.5,
                                    image=blobs.put(b"picture", ".png"))
        assert job.resolved.steps == 12 and job.resolved.aspect == (1, 1)
        [image] = await store.images_for_job(1)
        assert blobs.get(image.blob) == b"result" and image.version == "v1"
        version = await LearningStore(store).version("bundled:shapes", "v1")
        assert blobs.get(version.adapter) == b"lora weights"
    finally:
        await store.close()
