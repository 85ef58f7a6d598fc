"""The figures of the status page and of /metrics: what waits and runs now, the engines online,
and images per minute and wait times over the last hour."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

from bot.service import Service
from bot.store import Reader

HOUR = 3600.0


@dataclass(frozen=True)
class QueuedJob:
    id: int
    position: int
    user_name: str
    platform: str
    prompt: str
    model: str
    percent: int | None  # None: waiting; else how far the engine is


@dataclass(frozen=True)
class Engine:
    name: str
    online: bool
    models: tuple[str, ...]
    jobs: int  # on it now


@dataclass(frozen=True)
class Hour:
    """The last hour, minute by minute (minute starts as Unix times)."""

    images_per_minute: list[tuple[float, float]]
    wait_p50: list[tuple[float, float]]
    wait_p95: list[tuple[float, float]]
    images: int
    p50: float | None
    p95: float | None


def percentile(values: Sequence[float], share: float) -> float | None:
    """The nearest-rank percentile (share 0.5 is the median); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def queue(service: Service) -> list[QueuedJob]:
    """The active jobs in the order they will be served, running ones first."""
    admission = service.admission
    out = []
    for position, job_id in enumerate(admission.order(), start=1):
        job = admission.active.get(job_id)
        if job is None:
            continue
        progress = admission.progress.get(job_id)
        percent = (100 * progress.step // progress.total
                   if progress and progress.total else None)
        if percent is None and job_id in service.engines.in_flight:
            percent = 0
        out.append(QueuedJob(job.id, position, job.platform_user_id, job.platform, job.prompt,
                             (job.resolved or job.params).checkpoint or service.checkpoint,
                             percent))
    return out


def engines(service: Service) -> list[Engine]:
    return [Engine(handle.name or f"engine {number}", handle.ready is not None,
                   tuple(sorted(handle.models)), len(handle.in_flight))
            for number, handle in enumerate(service.engines.handles, start=1)]


async def last_hour(db: Reader, now: float | None = None) -> Hour:
    now = time.time() if now is None else now
    start = now - HOUR
    first = math.floor(start / 60) * 60
    minutes = [first + 60 * n for n in range(61)]
    made = dict.fromkeys(minutes, 0.0)
    async with db.execute(
            "SELECT CAST(created_at / 60 AS INTEGER) * 60, COUNT(*) FROM images"
            " WHERE created_at >= ? GROUP BY 1", (start,)) as cursor:
        for minute, count in await cursor.fetchall():
            made[float(minute)] = made.get(float(minute), 0.0) + count
    async with db.execute(
            "SELECT started_at, started_at - queued_at FROM jobs WHERE started_at >= ?",
            (start,)) as cursor:
        waits = list(await cursor.fetchall())
    by_minute: dict[float, list[float]] = {}
    for started, wait in waits:
        by_minute.setdefault(math.floor(started / 60) * 60.0, []).append(wait)
    every_wait = [wait for _, wait in waits]
    return Hour(
        images_per_minute=sorted(made.items()),
        wait_p50=sorted((m, percentile(w, 0.5)) for m, w in by_minute.items()),
        wait_p95=sorted((m, percentile(w, 0.95)) for m, w in by_minute.items()),
        images=int(sum(made.values())), p50=percentile(every_wait, 0.5),
        p95=percentile(every_wait, 0.95))
