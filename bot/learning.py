"""The learning loop, bot side: /retrain turns well-rated images into a new model version (a
LoRA trained by the engine between generation batches), /model lists and switches versions.

The store is the source of truth: a version exists once its row does, and the active version
is re-applied whenever an engine starts. A run interrupted by a crash is marked failed and
leaves the active version as it was.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bot import commands as cmd
from bot.config import Settings
from bot.errors import UserError
from bot.learning_store import LearningStore, VersionRow
from bot.store import Store
from engine import protocol
from engine.client import EngineHandle
from engine.pool import EnginePool

if TYPE_CHECKING:  # bot.service imports this module
    from bot.service.models import ModelBoard

log = logging.getLogger(__name__)


@dataclass
class Switch:
    """A version switch sent to the engines, and their answer (the version they then use:
    the first that is not the one asked for, if any engine could not load it)."""

    version: VersionRow
    answer: asyncio.Future[str]
    given_up: bool = False  # whoever asked stopped waiting
    waiting_for: set[str] = field(default_factory=set)  # engines yet to answer
    now: str = ""

MIN_EXAMPLES = 4
DEFAULT_STEPS = 200
DEFAULT_RANK = 4
DEFAULT_MIN_SCORE = 4.0
SWITCH_TIMEOUT = 120.0

Announce = Callable[[str, dict[str, Any], str], Awaitable[None]]


class Learning:
    def __init__(self, store: Store, engines: EnginePool, settings: Settings,
                 announce: Announce, board: ModelBoard) -> None:
        self.board = board  # the configured models
        self.store = store
        self.versions = LearningStore(store)
        self.engines = engines
        self.settings = settings
        self.announce = announce
        self.run_id: int | None = None
        self.progress: protocol.TrainProgress | None = None
        self._announced_quarter = 0
        self._starting = asyncio.Lock()
        # Version switches sent to the engine and not yet answered, oldest first.
        self._pending: deque[Switch] = deque()
        self.notice = ""  # for admins: something they should know (a version that failed)
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def default_model(self) -> str:
        return self.board.default

    def model_of(self, asked: str | None) -> str:
        try:
            self.board.check(asked)
        except ValueError as error:
            raise UserError(str(error)) from None
        return asked or self.default_model

    async def start(self) -> None:
        """After the first engine start: record each model's base version, close runs a
        crash left open, and put the engine on the active versions."""
        for model, settings in self.settings.engine.catalogue.items():
            # Versions an older bot kept under the model's source now go by its name.
            await self.versions.adopt(settings.source, model)
            await self.store.ensure_model_version("base", model)
        if interrupted := await self.versions.interrupt_runs():
            log.warning("%d training run(s) were interrupted by the last stop", interrupted)
        await self.restore()

    async def restore(self) -> None:
        """Put a (new) engine on the stored active versions."""
        await self.await_restore(await self.send_restore())

    async def send_restore(self, engine: EngineHandle | None = None) -> list[Switch]:
        """Tell a new engine (default: every engine) to use each model's stored active
        version, without waiting for its answers: sent before any job, they are applied
        before any job runs."""
        switches = []
        for model in self.board.names:
            active = await self.versions.active_version(model)
            if active is not None and active.adapter:
                switches.append(await self._send_switch(active, engine))
        return switches

    async def await_restore(self, switches: list[Switch]) -> None:
        """Wait for the restores; one that fails leaves its model serving its base, says so
        in the log and to admins (/model, /retrain status), and records base as active so
        the store and the engine agree."""
        for switch in switches:
            try:
                await self._await_switch(switch)
            except (UserError, TimeoutError) as error:
                name, model = switch.version.name, switch.version.base_model
                reason = str(error) or f"no answer in {SWITCH_TIMEOUT:.0f} s"
                log.error("could not put the engine on %s of %s (%s); serving the base "
                          "model", name, model, reason)
                self.notice = (f"Note: the active version {name} could not be loaded when "
                               f"the engine started ({reason}), so the base model is "
                               f"serving. /model use {name} tries again.")
                await self.versions.set_active_version(await self._base(model))

    async def idle(self) -> None:
        """Wait until no retraining is running."""
        await self._idle.wait()

    # ---- commands ------------------------------------------------------------------------

    async def handle(self, user_id: int, request: cmd.Retrain | cmd.ModelCmd,
                     origin: dict[str, Any]) -> str:
        model = self.model_of(request.checkpoint)
        if isinstance(request, cmd.ModelCmd):
            if request.action == "use":
                return await self.use(request.version, model)
            return await self.list_text(model)
        if request.action == "status":
            return await self.status_text(model)
        if request.action == "cancel":
            return await self.cancel()
        return await self.retrain(user_id, request, origin, model)

    async def retrain(self, user_id: int, request: cmd.Retrain, origin: dict[str, Any],
                      model: str | None = None) -> str:
        # From the check to the run's id is several awaits: two /retrain at once (Telegram
        # handles updates concurrently) must not both pass it.
        async with self._starting:
            return await self._start_run(user_id, request, origin, model or self.default_model)

    async def _start_run(self, user_id: int, request: cmd.Retrain, origin: dict[str, Any],
                         model: str) -> str:
        if self.run_id is not None:
            raise UserError("A retraining is already running. /retrain status shows it; "
                            "/retrain cancel stops it.")
        min_score = request.min_score or DEFAULT_MIN_SCORE
        examples = await self.versions.training_examples(min_score)
        if len(examples) < MIN_EXAMPLES:
            raise UserError(f"I need at least {MIN_EXAMPLES} images rated {min_score:g} or "
                            f"higher to retrain; there are {len(examples)}. Rate more images "
                            "(/rate or the buttons), or lower --min-score.")
        parent = await self._active_or_base(model)
        chain = await self.versions.chain(parent)
        name = await self._next_name(model)
        steps, rank = request.steps or DEFAULT_STEPS, request.rank or DEFAULT_RANK
        run_id = await self.versions.start_run(
            version=name, base_model=model, parent_id=parent.id, user_id=user_id,
            steps=steps, rank=rank, min_score=min_score, examples=examples, origin=origin)
        self.run_id, self.progress, self._announced_quarter = run_id, None, 0
        self._idle.clear()
        await self.engines.train(protocol.Train(
            run_id=run_id, version=name, parents=_adapters(chain),
            examples=tuple(protocol.TrainExample(e.blob, e.prompt, e.score) for e in examples),
            steps=steps, rank=rank, seed=run_id, checkpoint=model))
        ratings = sum(example.ratings for example in examples)
        return (f"Retraining started: {name}, from {parent.name}, on {len(examples)} images "
                f"({ratings} ratings), {steps} steps at rank {rank}. The bot keeps serving "
                "meanwhile; /retrain status shows progress.")

    async def status_text(self, model: str | None = None) -> str:
        active = await self._active_or_base(model or self.default_model)
        if self.run_id is None:
            return " ".join(filter(None, [
                f"No retraining is running. The active version is {active.name}.",
                self.notice]))
        run = await self.versions.run(self.run_id)
        active = await self._active_or_base(run.base_model)
        progress = self.progress
        if progress is None or progress.step == 0:
            return f"Retraining {run.version} is starting (preparing {run.images_used} images)."
        left = progress.seconds / progress.step * (progress.total - progress.step)
        return (f"Retraining {run.version}: step {progress.step}/{progress.total}, loss "
                f"{progress.loss:.4f}, about {_duration(left)} left. Still serving "
                f"{active.name} until it finishes.")

    async def cancel(self) -> str:
        if self.run_id is None:
            raise UserError("No retraining is running.")
        await self.engines.cancel_train(protocol.CancelTrain(self.run_id))
        return "Stopping the retraining; the active version stays as it is."

    async def list_text(self, model: str | None = None) -> str:
        model = model or self.default_model
        active = await self._active_or_base(model)
        rows = await self.versions.versions(model)
        names = {row.id: row.name for row in rows}
        lines = [self.notice] if self.notice else []
        lines.append(f"Model versions of {model}:")
        for row in rows:
            if row.adapter is None:
                text = f"{row.name} · the model as shipped"
            else:
                text = (f"{row.name} · from {names.get(row.parent_id, '?')} · "
                        f"{row.images_used} images, {row.ratings_used} ratings · {row.steps} "
                        f"steps, rank {row.rank} · loss {_loss(row.final_loss)} · "
                        f"{_duration(row.seconds)} · "
                        f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(row.created_at))}")
            lines.append(text + (" ← active" if row.id == active.id else ""))
        return "\n".join(lines)

    async def use(self, name: str | None, model: str | None = None) -> str:
        version = await self.versions.version(model or self.default_model, name or "")
        if version is None:
            raise UserError(f"There is no version {name!r}. /model list shows them.")
        await self._use(version)
        await self.versions.set_active_version(version)
        self.notice = ""
        return f"Now using {version.name} for new images."

    # ---- engine events -------------------------------------------------------------------

    async def on_event(self, event: protocol.FromEngine) -> None:
        match event:
            case protocol.VersionActive():
                await self._switched(event.version, event.checkpoint or self.default_model,
                                     event.engine)
            case protocol.TrainProgress():
                self.progress = event
                await self.versions.record_progress(event.run_id, event.step, event.loss,
                                                     event.losses)
                quarter = 4 * event.step // event.total
                if 0 < quarter < 4 and quarter > self._announced_quarter:
                    self._announced_quarter = quarter
                    await self._tell(event.run_id, f"Retraining: {25 * quarter}% "
                                     f"(step {event.step}/{event.total}, loss {event.loss:.4f}).")
            case protocol.TrainDone():
                version = await self.versions.finish_run_with_version(
                    event.run_id, event.adapter, event.final_loss, event.seconds)
                self._finished()
                # The engine that trained it uses it already; every other one is told now,
                # before any job sent after this.
                switch = await self._send_switch(version, trainer_has_it=True)
                switch.answer.add_done_callback(_logged)
                await self._tell(event.run_id, f"Retraining finished: {version.name} is now "
                                 f"active (loss {event.final_loss:.4f}, "
                                 f"{_duration(event.seconds)}).")
            case protocol.TrainFailed():
                status = "cancelled" if event.cancelled else "failed"
                await self.versions.finish_run(event.run_id, status, event.error)
                if event.run_id != self.run_id:
                    return  # not the run in progress (the engine refused a second one)
                self._finished()
                run = await self.versions.run(event.run_id)
                active = await self._active_or_base(run.base_model)
                what = "was cancelled" if event.cancelled else f"failed: {event.error}"
                await self._tell(event.run_id, f"Retraining {what}. Still using {active.name}.")

    async def engine_died(self, engine: str | None = None, trained: bool = True) -> None:
        """An engine (or every engine) is gone: it answers nothing more. A switch sent to
        several engines is done when those left have answered."""
        for switch in list(self._pending):
            if engine is not None and switch.waiting_for - {engine}:
                switch.waiting_for.discard(engine)
                continue
            self._pending.remove(switch)
            if switch.given_up:
                switch.answer.cancel()
            elif engine is not None and switch.now:
                switch.answer.set_result(switch.now)
            else:
                switch.answer.set_exception(UserError(
                    "The image engine stopped before switching; please try again."))
        if self.run_id is not None and trained:
            await self.on_event(protocol.TrainFailed(self.run_id, "the image engine stopped"))

    # ---- helpers -------------------------------------------------------------------------

    def _finished(self) -> None:
        self.run_id, self.progress = None, None
        self._idle.set()

    async def _tell(self, run_id: int, text: str) -> None:
        run = await self.versions.run(run_id)
        if run is not None:
            await self.announce(run.platform, run.origin, text)

    async def _use(self, version: VersionRow) -> None:
        await self._await_switch(await self._send_switch(version))

    async def _send_switch(self, version: VersionRow, engine: EngineHandle | None = None,
                           trainer_has_it: bool = False) -> Switch:
        chain = await self.versions.chain(version)
        switch = Switch(version, asyncio.get_running_loop().create_future())
        self._pending.append(switch)
        switch.waiting_for = set(await self.engines.use_version(
            protocol.UseVersion(version.name, _adapters(chain), version.base_model), engine,
            trainer_has_it=trainer_has_it))
        if not switch.waiting_for:  # no engine online: each applies it when it comes
            self._pending.remove(switch)
            switch.answer.set_result(version.name)
        return switch

    async def _await_switch(self, switch: Switch) -> None:
        """Wait for the engine's answer to this switch (its own, even with others pending)."""
        try:
            now = await asyncio.wait_for(asyncio.shield(switch.answer), SWITCH_TIMEOUT)
        except TimeoutError:
            switch.given_up = True  # a late answer still brings the store in line
            raise
        if now != switch.version.name:
            raise UserError(f"The engine could not load {switch.version.name}; it is still "
                            f"using {now}. The log has the details.")

    async def _switched(self, now: str, model: str, engine: str = "") -> None:
        """Each engine answers each UseVersion, in order, with the version it now uses."""
        switch = next((s for s in self._pending if not engine or engine in s.waiting_for),
                      None)
        if switch is None:
            return
        switch.waiting_for.discard(engine)
        if not switch.now or now != switch.version.name:
            switch.now = now
        if engine and switch.waiting_for:
            return
        self._pending.remove(switch)
        switch.answer.set_result(switch.now)
        if switch.given_up:
            # Whoever asked stopped waiting (a long batch ran): make the store say what the
            # engine really uses, so the two never disagree.
            log.warning("a late version switch: the engine now uses %s", now)
            if (version := await self.versions.version(model, now)) is not None:
                await self.versions.set_active_version(version)

    async def _active_or_base(self, model: str) -> VersionRow:
        active = await self.versions.active_version(model)
        return active or await self._base(model)

    async def _base(self, model: str) -> VersionRow:
        return await self.versions.version(model, "base")

    async def _next_name(self, model: str) -> str:
        taken = {row.name for row in await self.versions.versions(model)}
        number = 1
        while f"v{number}" in taken:
            number += 1
        return f"v{number}"

def _logged(answer: asyncio.Future[str]) -> None:
    """For a switch nobody waits on: a failure goes to the log."""
    if not answer.cancelled() and answer.exception() is not None:
        log.warning("an engine did not take the new version: %s", answer.exception())


def _adapters(chain: list[VersionRow]) -> tuple[protocol.Adapter, ...]:
    return tuple(protocol.Adapter(row.name, row.adapter) for row in chain)


def _loss(value: float | None) -> str:
    return "unknown" if value is None else f"{value:.4f}"  # None: the loss was not a number


def _duration(seconds: float | None) -> str:
    seconds = round(seconds or 0)
    return f"{seconds} s" if seconds < 120 else f"{seconds // 60} min {seconds % 60} s"
