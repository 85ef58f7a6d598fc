"""The store's schema, one numbered migration at a time.

The database's user_version counts how many have run. Append only: never edit a migration
that has shipped. A migration is SQL, or a function for what SQL cannot do (moving files
into the blob store); either runs in one transaction with its number.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import aiosqlite

from engine.blobs import Blobs
from engine.params import Params

FIRST_SCHEMA = """
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
    """

LORA_FILE = "pytorch_lora_weights.safetensors"  # what a version folder held before blobs


def _blob_of(blobs: Blobs, path: str | None, suffix: str) -> str | None:
    """The blob key for a file an older version kept on disk (None if it is gone)."""
    if not path:
        return None
    try:
        return blobs.put(Path(path).read_bytes(), suffix)
    except OSError:
        return None


async def params_and_blobs(db: aiosqlite.Connection, blobs: Blobs) -> None:
    """A job's parameters as one JSON record; images, masks and LoRAs in the blob store
    rather than at paths; "checkpoint" for the weights and "version" for a LoRA chain."""
    await db.execute("ALTER TABLE jobs ADD COLUMN params TEXT NOT NULL DEFAULT '{}'")
    await db.execute("ALTER TABLE jobs ADD COLUMN resolved TEXT")
    async with db.execute("SELECT * FROM jobs") as cursor:
        jobs = [dict(row) for row in await cursor.fetchall()]
    for job in jobs:
        aspect = (job["aspect_w"], job["aspect_h"])
        params = Params(
            kind=job["kind"], prompt=job["prompt"], negative=job["negative_prompt"] or None,
            seed=job["seed"], steps=job["steps"], cfg=job["guidance"],
            aspect=None if aspect == (1, 1) else aspect, n=job["n"], strength=job["strength"],
            checkpoint=job["model"], image=_blob_of(blobs, job["init_path"], ".png"),
            mask=_blob_of(blobs, job["mask_path"], ".png"))
        resolved = None
        if job["started_at"] is not None and job["steps"] is not None:
            resolved = params.complete().to_json()
        await db.execute("UPDATE jobs SET params = ?, resolved = ? WHERE id = ?",
                         (params.to_json(), resolved, job["id"]))
    for column in ("negative_prompt", "seed", "n", "steps", "guidance", "aspect_w", "aspect_h",
                   "strength", "init_path", "mask_path"):
        await db.execute(f"ALTER TABLE jobs DROP COLUMN {column}")
    await db.execute("ALTER TABLE jobs RENAME COLUMN model TO checkpoint")

    await db.execute("ALTER TABLE images ADD COLUMN blob TEXT NOT NULL DEFAULT ''")
    async with db.execute("SELECT id, path FROM images") as cursor:
        images = list(await cursor.fetchall())
    for image_id, path in images:
        await db.execute("UPDATE images SET blob = ? WHERE id = ?",
                         (_blob_of(blobs, path, ".png") or "", image_id))
    await db.execute("ALTER TABLE images DROP COLUMN path")
    await db.execute("ALTER TABLE images RENAME COLUMN model_version TO version")

    await db.execute("ALTER TABLE model_versions ADD COLUMN adapter TEXT")
    async with db.execute(
            "SELECT id, lora_path FROM model_versions WHERE lora_path IS NOT NULL") as cursor:
        versions = list(await cursor.fetchall())
    for version_id, folder in versions:
        key = _blob_of(blobs, str(Path(folder) / LORA_FILE), ".safetensors")
        await db.execute("UPDATE model_versions SET adapter = ? WHERE id = ?",
                         (key or "", version_id))
    await db.execute("ALTER TABLE model_versions DROP COLUMN lora_path")


MODEL_LOADS = """
    CREATE TABLE model_loads (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        came_from TEXT NOT NULL,
        seconds REAL NOT NULL,
        device_bytes INTEGER NOT NULL,
        evicted TEXT NOT NULL DEFAULT '[]',
        loaded_at REAL NOT NULL
    );
    CREATE INDEX jobs_by_model ON jobs(json_extract(resolved, '$.checkpoint'), status);
"""

# The remote worker that made a job's images ('' where the bot's own engine did).
JOB_WORKER = "ALTER TABLE jobs ADD COLUMN worker TEXT NOT NULL DEFAULT ''"

# The web app: prompts searched with FTS5 (kept in step with jobs by triggers), a training
# run's loss at each step for its chart, one-time sign-in links and sessions (only hashes of
# their tokens are kept, so a copy of the database signs no one in), and the indexes the
# gallery's filters use.
WEB = """
    CREATE VIRTUAL TABLE prompts USING fts5(prompt, content='jobs', content_rowid='id');
    INSERT INTO prompts (rowid, prompt) SELECT id, prompt FROM jobs;
    CREATE TRIGGER prompts_add AFTER INSERT ON jobs BEGIN
        INSERT INTO prompts (rowid, prompt) VALUES (new.id, new.prompt);
    END;
    CREATE TRIGGER prompts_drop AFTER DELETE ON jobs BEGIN
        INSERT INTO prompts (prompts, rowid, prompt) VALUES ('delete', old.id, old.prompt);
    END;
    CREATE TRIGGER prompts_change AFTER UPDATE OF prompt ON jobs BEGIN
        INSERT INTO prompts (prompts, rowid, prompt) VALUES ('delete', old.id, old.prompt);
        INSERT INTO prompts (rowid, prompt) VALUES (new.id, new.prompt);
    END;
    CREATE TABLE training_losses (
        run_id INTEGER NOT NULL REFERENCES training_runs(id),
        step INTEGER NOT NULL,
        loss REAL NOT NULL,
        PRIMARY KEY (run_id, step)
    );
    CREATE TABLE web_links (
        token_hash TEXT PRIMARY KEY,
        user_id INTEGER NOT NULL REFERENCES users(id),
        expires_at REAL NOT NULL,
        used_at REAL
    );
    CREATE TABLE web_sessions (
        token_hash TEXT PRIMARY KEY,
        user_id INTEGER NOT NULL REFERENCES users(id),
        csrf TEXT NOT NULL,
        created_at REAL NOT NULL,
        expires_at REAL NOT NULL
    );
    CREATE INDEX images_by_version ON images(version, id);
    CREATE INDEX jobs_by_source ON jobs(source_image_id);
"""

# Chats' defaults (/settings), users' say in training (/optout), what each training run used,
# image by image (a deleted image's row loses its pointer, the run keeps its count), and
# which pictures the model's safety checker flagged (sent hidden where a chat allows it).
CHATS_AND_CONSENT = """
    CREATE TABLE chat_settings (
        chat TEXT PRIMARY KEY,
        settings TEXT NOT NULL DEFAULT '{}',
        updated_at REAL NOT NULL
    );
    ALTER TABLE users ADD COLUMN trains INTEGER NOT NULL DEFAULT 1;
    CREATE TABLE training_run_images (
        run_id INTEGER NOT NULL REFERENCES training_runs(id),
        image_id INTEGER,
        score REAL NOT NULL,
        ratings INTEGER NOT NULL
    );
    CREATE INDEX training_run_images_by_image ON training_run_images(image_id);
    ALTER TABLE images ADD COLUMN flagged INTEGER NOT NULL DEFAULT 0;
"""

Migration = str | Callable[[aiosqlite.Connection, Blobs], Awaitable[None]]
MIGRATIONS: tuple[Migration, ...] = (FIRST_SCHEMA, params_and_blobs, MODEL_LOADS, JOB_WORKER,
                                     WEB, CHATS_AND_CONSENT)


async def migrate(db: aiosqlite.Connection, blobs: Blobs) -> None:
    async with db.execute("PRAGMA user_version") as cursor:
        (version,) = await cursor.fetchone()
    for number, migration in enumerate(MIGRATIONS[version:], start=version + 1):
        # One transaction per migration: the schema and its number change together.
        if isinstance(migration, str):
            await db.executescript(
                f"BEGIN; {migration}; PRAGMA user_version = {number}; COMMIT;")
            continue
        await db.execute("BEGIN IMMEDIATE")
        try:
            await migration(db, blobs)
            await db.execute(f"PRAGMA user_version = {number}")
        except BaseException:
            await db.rollback()
            raise
        await db.commit()
