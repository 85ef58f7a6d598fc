"""Who may do what, and the answer to each command.

Adapters call `handle()` with a parsed request and get a `Reply` at once; the job's progress and
outcome reach them later through their `Deliverer`, found by the job's platform, so a job
finished after a restart still reaches its chat. The work is done by parts with one job each:
JobMaker (requests into jobs), Admission (limits and the queue), Dispatch (the engines' events,
crashes and retries), Delivery (to the chats) and Learning (/retrain and /model).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

from bot import commands as cmd
from bot.config import Settings
from bot.errors import UserError
from bot.images import ImageError
from bot.learning import Learning
from bot.queue import JobQueue
from bot.service.admission import Admission
from bot.service.chats import Chats, chat_key
from bot.service.delivery import Delivery
from bot.service.dispatch import Dispatch
from bot.service.jobs import JobMaker
from bot.service.loras import LoraShelf
from bot.service.models import ModelBoard
from bot.service.privacy import Privacy
from bot.service.types import OUR_FAULT, Attachment, Deliverer, Reply, User
from bot.store import ImageRow, Store
from bot.web.auth import SignIns
from engine.blobs import LocalBlobs
from engine.pool import EnginePool

log = logging.getLogger(__name__)

HISTORY_LENGTH = 10


class Service:
    def __init__(self, settings: Settings, store: Store, engines: EnginePool,
                 blobs: LocalBlobs, queue: JobQueue | None = None) -> None:
        self.settings = settings
        self.store = store
        self.engines = engines
        self.blobs = blobs
        self.queue = queue or JobQueue()
        self.delivery = Delivery(store)
        self.models = ModelBoard(store, settings.engine.catalogue, settings.engine.model)
        self.admission = Admission(settings, store, blobs, self.queue, engines, self.is_admin)
        self.learning = Learning(store, engines, settings, self.delivery.announce, self.models)
        self.dispatch = Dispatch(store, engines, self.admission, self.delivery, self.learning,
                                 self.models)
        self.chats = Chats(store, self.models, settings.styles)
        self.loras = LoraShelf(settings.engine.loras, blobs)
        self.jobs = JobMaker(settings, store, self.models, self.chats, self.loras)
        self.sign_ins = SignIns(store)
        self.privacy = Privacy(store, blobs, settings.storage.images / "thumbs")
        self.web_running = False  # set by the web server (bot/web/) once it listens

    # ---- start and stop ------------------------------------------------------------------

    def register(self, platform: str, deliverer: Deliverer) -> None:
        self.delivery.register(platform, deliverer)

    async def start(self) -> None:
        """Start the engines, then take up what an earlier run left: undelivered results
        first, then the jobs that were waiting or running."""
        await self.engines.start()
        # Read before any event is handled: a result stored from now on is delivered by
        # the dispatch, and must not be found here as well.
        undelivered = await self.store.undelivered_jobs()
        self.dispatch.start()
        await self.learning.start()
        for job in undelivered:
            self.delivery.outcome(job)
        held = self.engines.joiner.held if self.engines.joiner else {}
        for job in await self.store.active_jobs():
            if not self.delivery.serves(job.platform):
                continue
            if job.id in held:  # a remote worker has it, or has answered it
                self.admission.active[job.id] = job
                continue
            await self.store.mark_requeued(job.id)
            await self.admission.enqueue(job)
        self.engines.feed_from(self.queue)

    async def stop(self) -> None:
        await self.dispatch.stop()
        await self.delivery.finish()

    @property
    def checkpoint(self) -> str:
        """The default model's name."""
        return self.settings.engine.model

    @property
    def chat_image_size(self) -> int:
        """Adapters enlarge results to at least this many pixels a side (a model setting)."""
        return self.engines.ready.min_output_size if self.engines.ready else 0

    def image_file(self, image: ImageRow) -> Path:
        """Where an image's PNG lies on this machine."""
        return self.blobs.path(image.blob)

    # ---- commands ------------------------------------------------------------------------

    async def handle(self, user: User, request: cmd.Request, *, image: Attachment | None = None,
                     mask: Attachment | None = None, origin: dict[str, Any] | None = None) -> Reply:
        """Answer one command. Never raises for anything a user can send."""
        return await self._answer(self._dispatch(user, request, image, mask, origin or {}),
                                  type(request).__name__, user)

    async def reroll(self, user: User, image_id: int,
                     origin: dict[str, Any] | None = None) -> Reply:
        """Run the job that made an image again with a new seed (the Reroll button)."""
        return await self._answer(self._reroll(user, image_id, origin or {}), "Reroll", user)

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

    async def _user_id(self, user: User) -> int:
        user_id = await self.store.ensure_user(user.platform, user.user_id, user.name)
        self.admission.seen(user, user_id)
        return user_id

    async def _dispatch(self, user: User, request: cmd.Request, image: Attachment | None,
                        mask: Attachment | None, origin: dict[str, Any]) -> Reply:
        user_id = await self._user_id(user)
        chat = chat_key(user.platform, origin)
        match request:
            case cmd.Imagine():
                return await self.admission.submit(
                    await self.jobs.imagine(user_id, request, origin, chat))
            case cmd.Vary():
                return await self.admission.submit(
                    await self.jobs.vary(user_id, request, image, origin, chat))
            case cmd.Inpaint():
                return await self.admission.submit(
                    await self.jobs.inpaint(user_id, request, image, mask, origin, chat))
            case cmd.Upscale():
                return await self.admission.submit(
                    await self.jobs.upscale(user_id, request, origin, chat))
            case cmd.Rate():
                return await self._rate(user_id, request.image_id, request.score)
            case cmd.Cancel():
                return await self._cancel(user, user_id, request.job_id)
            case cmd.ShowQueue():
                return Reply(self.admission.queue_text(user_id))
            case cmd.ShowModels():
                return Reply(await self.models.text(admin=self.is_admin(user)))
            case cmd.History():
                return await self._history(user_id)
            case cmd.Help():
                return Reply(self._help_text())
            case cmd.Web():
                return await self._web_link(user_id)
            case cmd.Delete():
                return await self._delete(user, user_id, request.image_id)
            case cmd.Training():
                await self.privacy.set_training(user_id, request.allowed)
                return Reply("Done: /retrain may use your pictures and ratings again."
                             if request.allowed else
                             "Done: /retrain will leave out your pictures and ratings from now "
                             "on (versions already trained stay as they are). /optin undoes "
                             "it.")
            case cmd.ForgetMe():
                return await self._forget(user_id, request.confirm)
            case cmd.ShowStyles():
                return Reply(self.chats.styles_text())
            case cmd.ShowLoras():
                return Reply(self.loras.text())
            case cmd.ChatSettings():
                return Reply(await self.chats.handle(chat, request, self.is_admin(user)))
            case cmd.Retrain() | cmd.ModelCmd():
                name = "/retrain" if isinstance(request, cmd.Retrain) else "/model"
                if not self.is_admin(user):
                    raise UserError(f"Sorry, only the bot's admins can use {name}.")
                return Reply(await self.learning.handle(user_id, request, origin))
        raise UserError(cmd.HELP_TEXT)

    async def _reroll(self, user: User, image_id: int, origin: dict[str, Any]) -> Reply:
        user_id = await self._user_id(user)
        chat = chat_key(user.platform, origin)
        return await self.admission.submit(await self.jobs.reroll(user_id, image_id, origin,
                                                                  chat))

    async def _rate(self, user_id: int, image_id: int, score: int) -> Reply:
        if not 1 <= score <= 5:
            raise UserError(f"A rating is a whole number from 1 to 5; you gave {score}.")
        await self.jobs.image(image_id)
        await self.store.rate(image_id, user_id, score)
        return Reply(f"Thanks! You rated image #{image_id} {score}/5.")

    async def _cancel(self, user: User, user_id: int, job_id: int | None) -> Reply:
        if job_id is None:
            job_id = self.admission.latest_of(user_id)
            if job_id is None:
                raise UserError("You have no waiting or running jobs to cancel.")
        job = await self.store.get_job(job_id)
        if job is None or (job.user_id != user_id and not self.is_admin(user)):
            raise UserError(f"You have no job #{job_id}.")
        if job.status not in ("queued", "running"):
            raise UserError(f"Job #{job_id} has already finished ({job.status}).")
        if self.admission.withdraw(job_id):
            await self.store.mark_failed(job_id, "Cancelled.", cancelled=True)
            await self.store.mark_delivered(job_id)
            await self.admission.forget(job_id)
            return Reply(f"Cancelled job #{job_id}.", job_id=job_id)
        await self.engines.cancel(job_id)
        return Reply(f"Stopping job #{job_id}…", job_id=job_id)

    async def _delete(self, user: User, user_id: int, image_id: int | None) -> Reply:
        if image_id is None:
            raise UserError("Which picture should I delete? Give its id, like /delete 12.")
        deleted = await self.privacy.delete(image_id, user_id, self.is_admin(user))
        self.delivery.retract(deleted.job, deleted.image)
        return Reply(f"Deleted image #{image_id}: its file, its ratings and its place in the "
                     "gallery are gone.")

    async def _forget(self, user_id: int, confirmed: bool) -> Reply:
        if not confirmed:
            return Reply("/forgetme removes everything I keep about you: your pictures (files "
                         "and messages' records), your prompts and jobs, your ratings and your "
                         "sign-ins to the web gallery. It cannot be undone. Press \"Yes, "
                         "forget me\" (or send /forgetme confirm) to go ahead.",
                         confirm="forgetme")
        busy = self.admission.latest_of(user_id) is not None
        count = await self.privacy.forget(user_id, busy)
        return Reply(f"Done: I have forgotten you ({count} picture{'s' if count != 1 else ''} "
                     "removed, with your prompts, ratings and sign-ins).")

    async def _web_link(self, user_id: int) -> Reply:
        if not self.web_running:
            raise UserError("The web gallery is not running on this bot (its admins can turn "
                            "it on with web.listen in the settings).")
        token = await self.sign_ins.new_link(user_id)
        link = f"{self.settings.web.base_url}/signin/{token}"
        return Reply("Your sign-in link for the web gallery (it works once, for the next 10 "
                     f"minutes; keep it to yourself): {link}", private=True, link=link)

    def _help_text(self) -> str:
        """The commands, then what this model's family does with the options."""
        ready = self.engines.ready
        if ready is None or not ready.family:
            return cmd.HELP_TEXT
        about = f"The model here is {ready.checkpoint} ({ready.family})."
        return "\n\n".join([cmd.HELP_TEXT, " ".join([about, *ready.option_notes])])

    async def _history(self, user_id: int) -> Reply:
        rows = await self.store.history(user_id, HISTORY_LENGTH)
        if not rows:
            return Reply("You have no images yet. Try /imagine a red circle.")
        lines = [f"image #{image.id} · seed {image.seed} · {_short(prompt)}"
                 for image, prompt in rows]
        return Reply("Your latest images:\n" + "\n".join(lines))

    # ---- for adapters --------------------------------------------------------------------

    def position(self, job_id: int) -> int | None:
        return self.admission.position(job_id)

    def active_jobs_on(self, platform: str) -> list[int]:
        return self.admission.active_jobs_on(platform)

    async def drained(self, platform: str) -> None:
        await self.admission.drained(platform)

    async def announce(self, platform: str, origin: dict[str, Any], text: str) -> None:
        await self.delivery.announce(platform, origin, text)


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
