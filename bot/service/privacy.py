"""Users' data in their own hands: /delete one picture, /optout and /optin of training, and
/forgetme, which removes everything the bot keeps about them.

A deleted picture goes with its file, its thumbnail, its ratings and, once a job has no
pictures left, the job itself; pictures made from it and training runs that used it keep
their own records but no longer point at it.
"""

from __future__ import annotations

import contextlib
import secrets
from dataclasses import dataclass
from pathlib import Path

import aiosqlite

from bot.errors import UserError
from bot.store import ImageRow, JobRow, Store, image_row
from engine.blobs import BlobMissing, LocalBlobs


@dataclass(frozen=True)
class Deleted:
    image: ImageRow
    job: JobRow  # as it was: where its pictures were posted


class Privacy:
    def __init__(self, store: Store, blobs: LocalBlobs, thumbs: Path) -> None:
        self.store = store
        self.blobs = blobs
        self.thumbs = thumbs

    async def delete(self, image_id: int, user_id: int, admin: bool) -> Deleted:
        image = await self.store.get_image(image_id)
        job = await self.store.get_job(image.job_id) if image else None
        if image is None or job is None or (job.user_id != user_id and not admin):
            raise UserError(f"You have no image #{image_id}. /history lists yours.")
        uploads: list[str] = []
        async with self.store.transaction() as db:
            await self._drop_images(db, [image_id])
            async with db.execute("SELECT COUNT(*) FROM images WHERE job_id = ?",
                                  (job.id,)) as cursor:
                (left,) = await cursor.fetchone()
            if not left:
                await db.execute("DELETE FROM jobs WHERE id = ?", (job.id,))
                uploads = _uploads_of([job])
        await self._drop_files([image.blob, *uploads])
        return Deleted(image, job)

    async def set_training(self, user_id: int, allowed: bool) -> None:
        async with self.store.transaction() as db:
            await db.execute("UPDATE users SET trains = ? WHERE id = ?", (int(allowed), user_id))

    async def trains(self, user_id: int) -> bool:
        async with self.store.reader.execute("SELECT trains FROM users WHERE id = ?",
                                             (user_id,)) as cursor:
            row = await cursor.fetchone()
        return bool(row and row[0])

    async def forget(self, user_id: int, busy: bool) -> int:
        """Remove the user's pictures, jobs, ratings and sign-ins; what others' records
        (a training run they started) need of their user row is kept, with nothing that
        names them. Returns how many pictures went."""
        if busy:
            raise UserError("You have jobs waiting or running: let them finish (or /cancel "
                            "them), then send /forgetme again.")
        async with self.store.reader.execute(
                "SELECT images.* FROM images JOIN jobs ON jobs.id = images.job_id"
                " WHERE jobs.user_id = ?", (user_id,)) as cursor:
            images = [image_row(row) for row in await cursor.fetchall()]
        async with self.store.reader.execute(
                "SELECT platform, platform_user_id FROM users WHERE id = ?",
                (user_id,)) as cursor:
            platform, platform_user_id = await cursor.fetchone()
        jobs = await self.store.jobs_of(user_id)
        async with self.store.transaction() as db:
            await self._drop_images(db, [image.id for image in images])
            await db.execute("DELETE FROM ratings WHERE user_id = ?", (user_id,))
            await db.execute("DELETE FROM jobs WHERE user_id = ?", (user_id,))
            await db.execute("DELETE FROM web_sessions WHERE user_id = ?", (user_id,))
            await db.execute("DELETE FROM web_links WHERE user_id = ?", (user_id,))
            # Where their training runs' news went, and their private chat's settings (a
            # Telegram private chat's id is the user's): both name them.
            await db.execute("UPDATE training_runs SET origin = '{}' WHERE user_id = ?",
                             (user_id,))
            await db.execute("DELETE FROM chat_settings WHERE chat = ?",
                             (f"{platform}:{platform_user_id}",))
            await db.execute(
                "UPDATE users SET platform_user_id = ?, name = NULL, trains = 0 WHERE id = ?",
                (f"forgotten-{secrets.token_hex(8)}", user_id))
        await self._drop_files([image.blob for image in images] + _uploads_of(jobs))
        return len(images)

    async def _drop_images(self, db: aiosqlite.Connection, image_ids: list[int]) -> None:
        for image_id in image_ids:
            await db.execute("UPDATE jobs SET source_image_id = NULL WHERE source_image_id = ?",
                             (image_id,))
            await db.execute("UPDATE training_run_images SET image_id = NULL WHERE image_id = ?",
                             (image_id,))
            await db.execute("DELETE FROM ratings WHERE image_id = ?", (image_id,))
            await db.execute("DELETE FROM images WHERE id = ?", (image_id,))

    async def _drop_files(self, blobs: list[str]) -> None:
        """The files (pictures, their thumbnails, pictures users sent) that no picture left
        uses (a blob is its content: two rows may share one) and no waiting job needs. A
        finished job made from a deleted picture keeps its record but not that file."""
        for blob in dict.fromkeys(blobs):
            if not blob:
                continue
            async with self.store.reader.execute(
                    "SELECT 1 FROM images WHERE blob = ? UNION ALL SELECT 1 FROM jobs WHERE"
                    " status IN ('queued', 'running') AND instr(params, ?) LIMIT 1",
                    (blob, blob)) as cursor:
                if await cursor.fetchone() is not None:
                    continue
            with contextlib.suppress(BlobMissing, OSError):
                path = self.blobs.path(blob)
                (self.thumbs / f"{path.stem}.webp").unlink(missing_ok=True)
                path.unlink(missing_ok=True)


def _uploads_of(jobs: list[JobRow]) -> list[str]:
    """The pictures and masks users attached to these jobs (not one of the bot's own, which
    a /vary or an upscale names by its source image)."""
    return [key for job in jobs if job.source_image_id is None
            for key in (job.params.image, job.params.mask) if key]
