"""Who may do what, limits, and the life of a job: stored before it is queued, its result stored
before it is delivered, delivered once through the adapter of the platform it came from.

Adapters call `handle()` with a parsed request and get a `Reply` at once; the job's progress and
outcome reach them later through their `Deliverer`, found by the job's platform, so a job
finished after a restart still reaches its chat.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from bot import commands as cmd
from bot.config import Settings
from bot.errors import UserError
from bot.images import ImageError, ImageLimits, open_image, save_png, split_image_and_mask
from bot.learning import Learning
from bot.queue import JobQueue
from bot.store import ImageRow, JobRow, NewImage, NewJob, Store
from engine import protocol
from engine.client import EngineClient, EngineExited

log = logging.getLogger(__name__)

HISTORY_LENGTH = 10
# The console's user is the bot's owner: their commands wait for room instead of being refused.
OPERATOR_PLATFORM = "console"
OUR_FAULT = ("Sorry, something went wrong on my side (the bot's admins can see what in the "
             "log). Please try again later.")


@dataclass(frozen=True)
class User:
    platform: str
    user_id: str
    name: str | None = None


@dataclass(frozen=True)
class Attachment:
    data: bytes
    filename: str = ""


@dataclass(frozen=True)
class Reply:
    """The immediate answer to a command. `job_id` is set when a job was queued."""

    text: str
    error: bool = False
    job_id: int | None = None
    position: int | None = None

    @property
    def queued(self) -> bool:
        """A new job was queued (rather than, say, a /cancel naming one)."""
        return self.position is not None


class Deliverer(Protocol):
    """What an adapter provides so the service can reach its users later."""

    async def progress(self, job: JobRow, step: int, total: int) -> None: ...

    async def deliver_images(self, job: JobRow, images: list[ImageRow]) -> None: ...

    async def deliver_failure(self, job: JobRow, message: str) -> None: ...

    async def announce(self, origin: dict[str, Any], text: str) -> None: ...


@dataclass
class _Progress:
    step: int = 0
    total: int = 0


@dataclass
class Service:
    settings: Settings
    store: Store
    engine: EngineClient
    queue: JobQueue = field(default_factory=JobQueue)
    deliverers: dict[str, Deliverer] = field(default_factory=dict)
    # every queued or running job, as stored when it was queued
    _active: dict[int, JobRow] = field(default_factory=dict)
    _progress: dict[int, _Progress] = field(default_factory=dict)
    # Checking the limits and queuing must be one step, or two commands could both pass.
    _admission: asyncio.Lock = field(default_factory=asyncio.Lock)
    _job_left: asyncio.Condition = field(default_factory=asyncio.Condition)
    # Jobs that were in the engine when it died once already; a second death fails them.
    _retried: set[int] = field(default_factory=set)
    _operators: set[int] = field(default_factory=set)  # store ids of the console's users
    _stopping: bool = False
    _tasks: set[asyncio.Task] = field(default_factory=set)
    _pump: asyncio.Task | None = None
    learning: Learning = field(init=False)

    def __post_init__(self) -> None:
        self.learning = Learning(self.store, self.engine, self.settings, self.announce)

    # ---- start and stop ------------------------------------------------------------------

    def register(self, platform: str, deliverer: Deliverer) -> None:
        self.deliverers[platform] = deliverer

    async def start(self) -> None:
        """Start the engine, then take up what an earlier run left: undelivered results first,
        then the jobs that were waiting or running."""
        await self.engine.start()
        self._pump = asyncio.create_task(self._pump_events(), name="engine-events")
        await self.learning.start()
        for job in await self.store.undelivered_jobs():
            self._spawn(self._deliver_outcome(job))
        for job in await self.store.active_jobs():
            if job.platform in self.deliverers:
                await self.store.mark_requeued(job.id)
                await self._enqueue(job)
        self.engine.feed_from(self.queue)

    async def stop(self) -> None:
        self._stopping = True  # the engine's exit from here on is expected, not a crash
        await self.engine.stop()
        if self._pump:
            await self._pump
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    @property
    def model_name(self) -> str:
        return self.engine.ready.model if self.engine.ready else self.settings.engine.model

    # ---- commands ------------------------------------------------------------------------

    async def handle(self, user: User, request: cmd.Request, *, image: Attachment | None = None,
                     mask: Attachment | None = None, origin: dict[str, Any] | None = None) -> Reply:
        """Answer one command. Never raises for anything a user can send."""
        return await self._answer(self._dispatch(user, request, image, mask, origin or {}),
                                  type(request).__name__, user)

    async def _answer(self, work: Awaitable[Reply], what: str, user: User) -> Reply:
        try:
            return await work
        except (UserError, ImageError) as error:
            return Reply(str(error), error=True)
        except Exception:
            # A full disk, a database error, a bug: the user gets an answer, the log the
            # details, and the bot goes on serving everyone else.
            log.exception("could not handle %s from %s:%s", what, user.platform, user.user_id)
            return Reply(OUR_FAULT, error=True)

    def is_admin(self, user: User) -> bool:
        if user.platform == "console":
            return True
        admins = getattr(self.settings.admins, user.platform, frozenset())
        return user.user_id in admins

    async def _dispatch(self, user: User, request: cmd.Request, image: Attachment | None,
                        mask: Attachment | None, origin: dict[str, Any]) -> Reply:
        user_id = await self.store.ensure_user(user.platform, user.user_id, user.name)
        if user.platform == OPERATOR_PLATFORM:
            self._operators.add(user_id)
        match request:
            case cmd.Imagine():
                return await self._imagine(user_id, request, origin)
            case cmd.Vary():
                return await self._vary(user_id, request, image, origin)
            case cmd.Inpaint():
                return await self._inpaint(user_id, request, image, mask, origin)
            case cmd.Rate():
                return await self._rate(user_id, request.image_id, request.score)
            case cmd.Cancel():
                return await self._cancel(user, user_id, request.job_id)
            case cmd.ShowQueue():
                return Reply(self._queue_text(user_id))
            case cmd.History():
                return await self._history(user_id)
            case cmd.Help():
                return Reply(self._help_text())
            case cmd.Retrain() | cmd.ModelCmd():
                name = "/retrain" if isinstance(request, cmd.Retrain) else "/model"
                if not self.is_admin(user):
                    raise UserError(f"Sorry, only the bot's admins can use {name}.")
                return Reply(await self.learning.handle(user_id, request, origin))
        raise UserError(cmd.HELP_TEXT)

    async def _imagine(self, user_id: int, request: cmd.Imagine, origin: dict) -> Reply:
        self._check_model(request.model)
        return await self._submit(NewJob(
            user_id=user_id, kind="txt2img", prompt=request.prompt,
            negative_prompt=request.negative, seed=self._seed(request.seed), n=request.n,
            steps=request.steps, guidance=request.cfg, aspect=request.aspect,
            model=request.model, origin=origin))

    async def _vary(self, user_id: int, request: cmd.Vary, image: Attachment | None,
                    origin: dict) -> Reply:
        if image is not None:
            picture = await asyncio.to_thread(open_image, image.data, self._image_limits)
            init_path = await asyncio.to_thread(save_png, picture.convert("RGB"), self._uploads)
            prompt, negative, source_id = request.prompt or "", "", None
        elif request.image_id is not None:
            source = await self._image(request.image_id)
            source_job = await self.store.get_job(source.job_id)
            init_path, source_id = source.path, source.id
            prompt = request.prompt if request.prompt is not None else source_job.prompt
            negative = source_job.negative_prompt
        else:
            raise UserError("Which image should I vary? Give its id (for example /vary 12) "
                            "or attach an image.")
        return await self._submit(NewJob(
            user_id=user_id, kind="img2img", prompt=prompt, negative_prompt=negative,
            seed=self._seed(request.seed), strength=request.strength,
            source_image_id=source_id, init_path=str(init_path), origin=origin))

    async def _inpaint(self, user_id: int, request: cmd.Inpaint, image: Attachment | None,
                       mask: Attachment | None, origin: dict) -> Reply:
        if image is None:
            raise UserError("Inpainting needs an image and a mask: attach both (white in the "
                            "mask = repaint), or one PNG whose transparent part is to be "
                            "repainted.")
        init_path, mask_path = await asyncio.to_thread(self._save_inpaint_inputs, image, mask)
        return await self._submit(NewJob(
            user_id=user_id, kind="inpaint", prompt=request.prompt,
            negative_prompt=request.negative, seed=self._seed(request.seed),
            steps=request.steps, guidance=request.cfg, init_path=str(init_path),
            mask_path=str(mask_path), origin=origin))

    def _save_inpaint_inputs(self, image: Attachment, mask: Attachment | None) -> tuple[Path, Path]:
        picture = open_image(image.data, self._image_limits)
        mask_picture = open_image(mask.data, self._image_limits, "mask") if mask else None
        picture, mask_picture = split_image_and_mask(picture, mask_picture)
        return save_png(picture, self._uploads), save_png(mask_picture, self._uploads)

    async def reroll(self, user: User, image_id: int,
                     origin: dict[str, Any] | None = None) -> Reply:
        """Run the job that made an image again with a new seed (the Reroll button)."""
        return await self._answer(self._reroll(user, image_id, origin or {}), "Reroll", user)

    async def _reroll(self, user: User, image_id: int, origin: dict[str, Any]) -> Reply:
        source = await self._image(image_id)
        job = await self.store.get_job(source.job_id)
        user_id = await self.store.ensure_user(user.platform, user.user_id, user.name)
        return await self._submit(NewJob(
            user_id=user_id, kind=job.kind, prompt=job.prompt,
            negative_prompt=job.negative_prompt, seed=self._seed(None), n=job.n,
            steps=job.steps, guidance=job.guidance, aspect=(job.aspect_w, job.aspect_h),
            strength=job.strength, model=job.model, source_image_id=job.source_image_id,
            init_path=job.init_path, mask_path=job.mask_path, origin=origin))

    @property
    def chat_image_size(self) -> int:
        """Adapters enlarge results to at least this many pixels a side (a model setting)."""
        return self.engine.ready.min_output_size if self.engine.ready else 0

    async def _rate(self, user_id: int, image_id: int, score: int) -> Reply:
        if not 1 <= score <= 5:
            raise UserError(f"A rating is a whole number from 1 to 5; you gave {score}.")
        await self._image(image_id)
        await self.store.rate(image_id, user_id, score)
        return Reply(f"Thanks! You rated image #{image_id} {score}/5.")

    async def _cancel(self, user: User, user_id: int, job_id: int | None) -> Reply:
        if job_id is None:
            mine = [job.id for job in self._active.values() if job.user_id == user_id]
            if not mine:
                raise UserError("You have no waiting or running jobs to cancel.")
            job_id = mine[-1]
        job = await self.store.get_job(job_id)
        if job is None or (job.user_id != user_id and not self.is_admin(user)):
            raise UserError(f"You have no job #{job_id}.")
        if job.status not in ("queued", "running"):
            raise UserError(f"Job #{job_id} has already finished ({job.status}).")
        if self.queue.remove(job_id):
            await self.store.mark_failed(job_id, "Cancelled.", cancelled=True)
            await self.store.mark_delivered(job_id)
            await self._forget(job_id)
            return Reply(f"Cancelled job #{job_id}.", job_id=job_id)
        await self.engine.cancel(job_id)
        return Reply(f"Stopping job #{job_id}…", job_id=job_id)

    def _help_text(self) -> str:
        """The commands, then what this model's family does with the options."""
        ready = self.engine.ready
        if ready is None or not ready.family:
            return cmd.HELP_TEXT
        about = f"The model here is {ready.model} ({ready.family})."
        return "\n\n".join([cmd.HELP_TEXT, " ".join([about, *ready.option_notes])])

    async def _history(self, user_id: int) -> Reply:
        rows = await self.store.history(user_id, HISTORY_LENGTH)
        if not rows:
            return Reply("You have no images yet. Try /imagine a red circle.")
        lines = [f"image #{image.id} · seed {image.seed} · {_short(prompt)}"
                 for image, prompt in rows]
        return Reply("Your latest images:\n" + "\n".join(lines))

    # ---- the queue -----------------------------------------------------------------------

    def _order(self) -> list[int]:
        """Active job ids in the order the engine will finish them: its own first."""
        return list(self.engine.in_flight) + self.queue.waiting()

    def active_jobs_on(self, platform: str) -> list[int]:
        """Queued and running jobs that came from `platform` (new or taken up at start)."""
        return [job.id for job in self._active.values() if job.platform == platform]

    def position(self, job_id: int) -> int | None:
        order = self._order()
        return order.index(job_id) + 1 if job_id in order else None

    def _queue_text(self, user_id: int) -> str:
        order = self._order()
        mine = [job_id for job_id in order
                if job_id in self._active and self._active[job_id].user_id == user_id]
        if not mine:
            return f"You have no jobs waiting. {len(order)} job(s) in the queue in all."
        lines = []
        for job_id in mine:
            progress = self._progress.get(job_id)
            if progress and progress.total:
                lines.append(f"job #{job_id}: generating, {100 * progress.step // progress.total}%")
            else:
                lines.append(f"job #{job_id}: waiting, position {order.index(job_id) + 1}")
        return "\n".join(lines) + f"\n{len(order)} job(s) in the queue in all."

    async def _submit(self, new: NewJob) -> Reply:
        self._check_blocked_words(new.prompt)
        operator = new.user_id in self._operators
        while True:
            if operator:
                await self._room_in_queue()
            async with self._admission:
                if operator and len(self._active) >= self.settings.limits.max_queue:
                    continue  # another command took the room first: wait again
                return await self._admit(new, operator=operator)

    async def _room_in_queue(self) -> None:
        """Wait until the queue has room: the operator's piped commands wait for it (so the
        console stops reading) where a chat user's would be refused."""
        async with self._job_left:
            await self._job_left.wait_for(
                lambda: len(self._active) < self.settings.limits.max_queue)

    async def _admit(self, new: NewJob, operator: bool = False) -> Reply:
        key = new.origin.get("request_key")
        if key and (earlier := await self.store.job_for_request(key)) is not None:
            # The platform sent the same request again (Telegram re-sends updates a bot that
            # died had not confirmed): answer with the job it already made, make no other.
            position = self.position(earlier.id)
            state = f"position {position}" if position else earlier.status
            return Reply(f"Already on it: that is job #{earlier.id} ({state}).",
                         job_id=earlier.id, position=position)
        limits = self.settings.limits
        waiting_for_user = sum(1 for job in self._active.values() if job.user_id == new.user_id)
        if waiting_for_user >= limits.max_waiting_per_user and not operator:
            raise UserError(f"You already have {waiting_for_user} job(s) waiting; the limit is "
                            f"{limits.max_waiting_per_user}. Please wait for one to finish.")
        if len(self._active) >= limits.max_queue:
            raise UserError("The bot is busy right now (the queue is full). Please try again "
                            "in a minute.")
        job_id = await self.store.add_job(new)
        job = await self.store.get_job(job_id)
        await self._enqueue(job)
        position = self.position(job_id)
        return Reply(f"Queued job #{job_id}, position {position}.", job_id=job_id,
                     position=position)

    async def _enqueue(self, job: JobRow) -> None:
        self._active[job.id] = job
        user = f"{job.platform}:{job.platform_user_id}"
        chat_id = job.origin.get("chat_id") or job.origin.get("channel_id")  # Telegram, Discord
        priority = self.settings.limits.admin_priority and self.is_admin(
            User(job.platform, job.platform_user_id))
        await self.queue.put(_engine_job(job), user=user,
                             chat=f"{job.platform}:{chat_id}" if chat_id else user,
                             priority=priority)

    # ---- engine events -------------------------------------------------------------------

    async def _pump_events(self) -> None:
        while True:
            event = await self.engine.events.get()
            try:
                if isinstance(event, EngineExited):
                    if self._stopping or not await self._engine_died(event):
                        return
                    continue
                await self._on_event(event)
            except Exception:
                log.exception("could not handle engine event %r", event)

    async def _on_event(self, event: protocol.FromEngine) -> None:
        match event:
            case protocol.Started():
                await self.store.mark_started(event.job_id, event.width, event.height,
                                              event.steps, event.guidance)
            case protocol.Progress():
                self._progress[event.job_id] = _Progress(event.step, event.total)
                job = self._active.get(event.job_id)
                deliverer = self.deliverers.get(job.platform) if job else None
                if deliverer:
                    self._spawn(deliverer.progress(job, event.step, event.total))
            case protocol.Result():
                images = [NewImage(i.path, i.seed, i.width, i.height) for i in event.images]
                await self.store.save_result(event.job_id, images, event.engine_seconds,
                                             event.model_version)
                await self._finished(event.job_id)
            case protocol.Failed():
                await self._fail(event.job_id, event.error,
                                 cancelled=event.kind == "cancelled")
            case _:
                await self.learning.on_event(event)

    async def _forget(self, job_id: int) -> None:
        """The job left the queue and the engine: it no longer counts against any limit."""
        self._active.pop(job_id, None)
        self._progress.pop(job_id, None)
        self._retried.discard(job_id)
        async with self._job_left:
            self._job_left.notify_all()

    async def drained(self, platform: str) -> None:
        """Wait until no job from `platform` is queued or running."""
        async with self._job_left:
            await self._job_left.wait_for(lambda: not self.active_jobs_on(platform))

    async def _finished(self, job_id: int) -> None:
        await self._forget(job_id)
        job = await self.store.get_job(job_id)
        if job is not None:
            self._spawn(self._deliver_outcome(job))

    async def _engine_died(self, event: EngineExited) -> bool:
        """Start a new engine and give each job it held one more try. False if no engine
        could be started: then every waiting job fails with a clear message."""
        log.error("the engine died (exit code %s) holding jobs %s; restarting it",
                  event.returncode, list(event.in_flight))
        for job_id in reversed(event.in_flight):  # put back at the front, in their order
            if job_id in self._retried:
                await self._fail(job_id, "The image engine stopped twice while making this "
                                 "image, so I gave up on it. Please try again, perhaps with "
                                 "fewer steps or a smaller size.")
                continue
            self._retried.add(job_id)
            await self.store.mark_requeued(job_id)
            await self.queue.put_back(_engine_job(await self.store.get_job(job_id)))
        await self.learning.engine_died()
        try:
            await self.engine.restart()
        except Exception:
            log.exception("could not restart the engine")
            for job_id in list(self._active):
                self.queue.remove(job_id)
                await self._fail(job_id, "The image engine stopped and could not be "
                                 "restarted. Please tell the bot's admins.")
            return False
        # The version first, then the jobs: the engine applies what it is sent in order, so
        # no requeued job runs on the base model while a trained version is active.
        restoring = await self.learning.send_restore()
        self.engine.feed_from(self.queue)
        self._spawn(self.learning.await_restore(restoring))  # answered through this pump
        return True

    async def _fail(self, job_id: int, error: str, *, cancelled: bool = False) -> None:
        await self.store.mark_failed(job_id, error, cancelled=cancelled)
        await self._finished(job_id)

    async def _deliver_outcome(self, job: JobRow) -> None:
        """Send a finished job's outcome to its chat once, then record that it was sent."""
        deliverer = self.deliverers.get(job.platform)
        if deliverer is None:
            return  # that adapter is not running now; delivered when it next starts
        try:
            if job.status == "done":
                await deliverer.deliver_images(job, await self.store.images_for_job(job.id))
            elif job.status == "cancelled":
                await deliverer.deliver_failure(job, f"Job #{job.id} was cancelled.")
            else:
                await deliverer.deliver_failure(job, f"Sorry, job #{job.id} failed: {job.error}")
        except Exception:
            log.exception("could not deliver job %d; will retry at next start", job.id)
            return
        await self.store.mark_delivered(job.id)

    async def announce(self, platform: str, origin: dict[str, Any], text: str) -> None:
        """A message that belongs to no job (retraining news) to where a command came from.
        Sent in the background: the engine's events must not wait on a chat's API."""
        self._spawn(self._announce(platform, origin, text))

    async def _announce(self, platform: str, origin: dict[str, Any], text: str) -> None:
        deliverer = self.deliverers.get(platform)
        try:
            if deliverer is not None:
                await deliverer.announce(origin, text)
        except Exception:
            log.exception("could not announce on %s: %s", platform, text)

    def _spawn(self, coroutine) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---- small helpers -------------------------------------------------------------------

    @property
    def _uploads(self) -> Path:
        return self.settings.storage.images / "uploads"

    @property
    def _image_limits(self) -> ImageLimits:
        limits = self.settings.limits
        return ImageLimits(limits.max_image_bytes, limits.max_image_pixels)

    def _check_blocked_words(self, prompt: str) -> None:
        words = set(re.findall(r"\w+", prompt.casefold()))
        blocked = [word for word in self.settings.limits.blocked_words
                   if word.casefold() in words]
        if blocked:
            raise UserError("Sorry, this bot's admins do not allow prompts with the word "
                            f"{blocked[0]!r}. Please rephrase.")

    def _check_model(self, model: str | None) -> None:
        if model is not None and model != self.model_name:
            raise UserError(f"The model {model!r} is not available; this bot runs "
                            f"{self.model_name}.")

    @staticmethod
    def _seed(seed: int | None) -> int:
        return secrets.randbelow(cmd.MAX_SEED + 1) if seed is None else seed

    async def _image(self, image_id: int) -> ImageRow:
        image = await self.store.get_image(image_id)
        if image is None:
            raise UserError(f"There is no image #{image_id}. /history lists yours.")
        return image


def _engine_job(job: JobRow) -> protocol.Job:
    return protocol.Job(
        job_id=job.id, kind=job.kind, prompt=job.prompt, seed=job.seed,
        negative_prompt=job.negative_prompt, n=job.n, steps=job.steps, guidance=job.guidance,
        aspect=(job.aspect_w, job.aspect_h), strength=job.strength, init_image=job.init_path,
        mask_image=job.mask_path, model=job.model)


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"

