"""The engine: one process that owns the device and runs every job, in turn.

Its loop is: take new messages, run one batch, train one slice (during /retrain), repeat.
A batch is up to `max_batch` images (engine/batch_size.py) from
waiting jobs that can share one pipeline call (same kind, size, steps, guidance, strength); each
image has its own generator, so it comes out as it would alone. A job of n images may span
several batches; its result is sent when its last image is written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import os
import queue
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from engine import protocol
from engine.blobs import BlobMissing, LocalBlobs
from engine.families.base import accepts
from engine.fused_lora import FusedAdapters
from engine.lora import Adapters, LoraTrainer
from engine.memory_modes import apply_offload
from engine.models import Models
from engine.params import Params
from engine.pipelines import Pipelines, fit_size
from engine.upscaler import Upscaler, UpscalerError, load_upscaler

log = logging.getLogger(__name__)

# Training runs this long between generation batches: users wait at most about this much more.
TRAIN_SLICE_SECONDS = 0.5
# After an out-of-memory error lowered a kind of job's batches, this many batches run at the
# lower limit before twice as many are tried again: the pressure may have been passing.
RECOVERY_BATCHES = 20
# Jobs for the model on the device may go before an older job for another model (a switch
# costs seconds) until that job has waited this long.
MODEL_PATIENCE = 10.0
SAFETY_REFUSAL = ("The model's own safety checker flagged this picture, so it was not kept. "
                  "Please try another prompt.")
Control = protocol.UseVersion | protocol.Train | protocol.CancelTrain


@dataclass
class Plan:
    """A job with every parameter resolved, and what has been made of it so far."""

    job_id: int
    params: Params  # complete: nothing left to the model
    width: int
    height: int
    images: dict[int, protocol.ImageBlob] = field(default_factory=dict)
    engine_seconds: float = 0.0
    started: bool = False
    cancelled: bool = False
    options: tuple = ()  # what else the model's family needs a batch's jobs to share

    @property
    def batch_key(self) -> tuple:
        params = self.params
        return (params.kind, params.checkpoint, self.width, self.height, params.steps,
                params.cfg, params.strength, params.loras, params.scale, self.options)

    @property
    def steps_run(self) -> int:
        """Steps the pipeline really runs: diffusers skips the first part of the schedule
        according to the strength."""
        steps, strength = self.params.steps, self.params.strength
        if strength is None:
            return steps
        return max(1, min(int(steps * strength), steps))


Slot = tuple[Plan, int]  # one image of a job: (plan, index within the job)


class Engine:
    def __init__(self, models: Models | Pipelines, blobs: LocalBlobs, max_batch: int,
                 send: Callable[[protocol.FromEngine], None],
                 inbox: queue.Queue[protocol.ToEngine], upscaler: str = "") -> None:
        self.models = models if isinstance(models, Models) else Models.single(models)
        self.models.send = send  # each later load is reported as it happens
        self.blobs = blobs
        self.max_batch = max_batch
        # Lowered for a kind of job after a batch of it ran out of device memory, and raised
        # again step by step (RECOVERY_BATCHES), or at once when a training run frees its memory.
        self.kind_limits: dict[str, int] = {}
        self.batches_since_lowered: Counter[str] = Counter()
        self.png_writers = ThreadPoolExecutor(min(8, os.cpu_count() or 1),
                                              thread_name_prefix="png")
        self.send = send
        self.inbox = inbox
        self.plans: dict[int, Plan] = {}
        self.slots: deque[Slot] = deque()
        # Jobs for a model that is not on the device, oldest first, with when they came.
        self.unplanned: deque[tuple[protocol.Job, float]] = deque()
        # The order the bot believes the held jobs are in: as they came, unless told otherwise.
        self.told_order: dict[int, None] = {}
        self.stopping = False
        # Each model's LoRAs; the version each is to generate with, and the one its LoRAs were
        # last put on (a switch for a model that is moved out is applied when it comes back).
        self.model_adapters: dict[str, Adapters] = {}
        self.versions: dict[str, protocol.UseVersion] = {}
        self.applied: dict[str, protocol.UseVersion] = {}
        self.trainer: LoraTrainer | None = None
        # Version switches and training commands wait for the end of the current batch, so
        # a batch never changes model half way.
        self.control: deque[Control] = deque()
        # engine.upscaler ("": upscales are a hires fix), loaded at its first job.
        self.upscaler_source = upscaler
        self._upscaler: Upscaler | UpscalerError | None = None

    def run(self) -> None:
        while not self.stopping:
            idle = (not self.slots and not self.unplanned and not self.control
                    and self.trainer is None)
            self.take_messages(block=idle)
            while self.control and not self.stopping:
                self.apply(self.control.popleft())
            self.plan_waiting()
            self.tell_order()
            if self.slots and not self.stopping:
                self.run_batch(self.next_batch())
            if self.trainer is not None and not self.stopping:
                self.train_slice()

    def run_all(self, jobs: list[protocol.Job]) -> None:
        """Run these jobs to the end, here and now: the engine without its process, for
        benchmarks and tests. Messages still go to `send`, and the inbox is still read
        between steps (so a Cancel put there stops a job)."""
        for job in jobs:
            self.told_order[job.job_id] = None
            self.accept(job)
        while self.slots or self.unplanned:
            self.plan_waiting()
            self.tell_order()
            if self.slots:
                self.run_batch(self.next_batch())

    # ---- messages ------------------------------------------------------------------------

    def take_messages(self, block: bool) -> None:
        while True:
            try:
                message = self.inbox.get(block=block)
            except queue.Empty:
                return
            block = False
            if isinstance(message, protocol.Job):
                self.told_order[message.job_id] = None
                self.accept(message)
            elif isinstance(message, protocol.Cancel):
                self.cancel(message.job_id)
            elif isinstance(message, protocol.Shutdown):
                self.stopping = True
                return
            else:
                self.control.append(message)

    def accept(self, job: protocol.Job, first: bool = False) -> None:
        """Plan a new job (or keep it for when its model is on the device), or answer it at
        once. Called between steps of a running batch too, so nothing planning raises may
        escape into that batch, and no model is loaded here."""
        try:
            name = self.models.name_of(job.params.checkpoint)
            pipes = self.models.peek(name)
            if pipes is None:
                self.unplanned.append((job, time.monotonic()))
                return
            plan = self.plan(job, pipes)
        except (ValueError, OSError) as error:
            self.send(protocol.Failed(job.job_id, str(error), "bad_request"))
            return
        except Exception as error:
            log.exception("could not plan job %d", job.job_id)
            self.send(protocol.Failed(job.job_id, f"The engine could not take this job: "
                                      f"{error}", "failed"))
            return
        self.plans[job.job_id] = plan
        slots = [(plan, index) for index in range(plan.params.n)]
        if first:
            self.slots.extendleft(reversed(slots))
        else:
            self.slots.extend(slots)

    def plan_waiting(self) -> None:
        """Plan the waiting jobs whose model is on the device. Another model is brought in
        when nothing planned is left, or when its oldest job has waited MODEL_PATIENCE: jobs
        for the model in memory may go first (a switch costs seconds), but not for long."""
        if not self.unplanned:
            return
        waiting, self.unplanned = self.unplanned, deque()
        for job, since in waiting:
            if self.models.loaded(self._model(job)):
                self.accept(job)
            else:
                self.unplanned.append((job, since))
        if not self.unplanned or self.stopping:
            return
        job, since = self.unplanned[0]
        overdue = time.monotonic() - since >= MODEL_PATIENCE
        if self.slots and not overdue:
            return
        name = self._model(job)
        theirs = [entry for entry in self.unplanned if self._model(entry[0]) == name]
        self.unplanned = deque(e for e in self.unplanned if self._model(e[0]) != name)
        try:
            self.pipes_of(name)
        except Exception as error:
            log.exception("could not load the model %s", name)
            for waiting_job, _ in theirs:
                self.send(protocol.Failed(waiting_job.job_id, f"The model {name} could not be "
                                          f"loaded: {error}", "failed"))
            return
        # Overdue: ahead of the other model's planned jobs, still in their own order.
        for waiting_job, _ in reversed(theirs) if overdue else theirs:
            self.accept(waiting_job, first=overdue)

    def serving_order(self) -> list[int]:
        """The held jobs in the order they will be served: planned ones, then those waiting
        for their model."""
        planned = dict.fromkeys(plan.job_id for plan, _ in self.slots)
        return [*planned, *(job.job_id for job, _ in self.unplanned)]

    def tell_order(self) -> None:
        """Tell the bot when the engine serves its jobs in another order than they came (so
        /queue shows the real order)."""
        order = self.serving_order()
        held = set(order)
        believed = [job_id for job_id in self.told_order if job_id in held]
        if believed != order:
            self.send(protocol.Order(tuple(order)))
        self.told_order = dict.fromkeys(order)

    def _model(self, job: protocol.Job) -> str:
        return self.models.name_of(job.params.checkpoint)

    def pipes_of(self, name: str) -> Pipelines:
        """The model on the device (loaded or brought back as needed; only between batches),
        generating with its active version."""
        pinned = frozenset([self.trainer.pipes.checkpoint]) if self.trainer else frozenset()
        pipes = self.models.get(name, pinned)
        adapters = self.model_adapters.get(name)
        if adapters is None or adapters.denoiser is not pipes.family.module:  # (re)loaded
            # A compiled denoiser gets versions merged into its weights: peft layers would
            # make every switch compile again.
            kind = FusedAdapters if pipes.compiled else Adapters
            adapters = self.model_adapters[name] = kind(pipes.family.module, self.blobs,
                                                        type(pipes.text2img))
            self.applied.pop(name, None)
        wanted = self.versions.get(name)
        if wanted is not None and self.applied.get(name) is not wanted:
            self._use_version(name, adapters, wanted)
        return pipes

    def adapters_of(self, name: str) -> Adapters:
        self.pipes_of(name)
        return self.model_adapters[name]

    @property
    def adapters(self) -> Adapters:
        """The default model's LoRAs."""
        return self.adapters_of(self.models.default)

    def plan(self, job: protocol.Job, pipes: Pipelines) -> Plan:
        given = job.params
        unsupported = pipes.family.unsupported(pipes.for_kind(given.kind),
                                               given.negative or "", given.cfg)
        if unsupported:
            raise ValueError(unsupported)
        params = given.resolve(pipes.defaults).complete()
        if params.seed is None:
            raise ValueError("This job has no seed; the bot chooses one for every job.")
        if params.kind == "txt2img":
            params = dataclasses.replace(params, strength=None, image=None, mask=None)
            width, height = fit_size(params.aspect, pipes.settings)
        else:
            with Image.open(self._file(params.image)) as image:
                width, height = fit_size(image.size, pipes.settings)
                if params.scale and self.upscaler_source:  # exactly that many times
                    width, height = (side * params.scale for side in image.size)
                elif params.scale:  # a hires fix: redrawn at about that many times its size
                    grid = pipes.settings.size_multiple
                    width, height = (max(grid, round(side * params.scale / grid) * grid)
                                     for side in image.size)
            if params.kind == "inpaint":
                self._file(params.mask)
        return Plan(job.job_id, params, width, height,
                    options=pipes.family.batch_options(params.negative))

    def _file(self, key: str | None) -> Path:
        """The blob `key` names, checked before a batch could fail on it."""
        if key is None:
            raise ValueError("This job needs a picture (and, to inpaint, a mask) but has none.")
        try:
            path = self.blobs.path(key)
        except BlobMissing:
            raise ValueError("This job names a picture that is not a picture's key.") from None
        if not path.is_file():
            raise ValueError("The picture for this job is missing from the bot's storage; "
                             "please send it again.")
        return path

    def cancel(self, job_id: int) -> None:
        waiting = [entry for entry in self.unplanned if entry[0].job_id == job_id]
        if waiting:  # still waiting for its model
            self.unplanned.remove(waiting[0])
            self.send(protocol.Failed(job_id, "Cancelled.", "cancelled"))
            return
        plan = self.plans.pop(job_id, None)
        if plan is None:
            return  # finished already, or never seen: nothing to stop
        plan.cancelled = True
        self.slots = deque(slot for slot in self.slots if slot[0] is not plan)
        self.send(protocol.Failed(job_id, "Cancelled.", "cancelled"))

    # ---- batches -------------------------------------------------------------------------

    def next_batch(self) -> list[Slot]:
        """The oldest waiting image, and the compatible ones behind it, up to max_batch."""
        first = self.slots[0][0]
        limit = self.kind_limits.get(first.params.kind, self.max_batch)
        batch = [slot for slot in self.slots if slot[0].batch_key == first.batch_key][:limit]
        taken = {id(slot) for slot in batch}
        self.slots = deque(slot for slot in self.slots if id(slot) not in taken)
        return batch

    def run_batch(self, batch: list[Slot], halves_of_a_split: bool = False) -> None:
        plans = _plans_of(batch)
        for plan in plans:
            if not plan.started:
                plan.started = True
                self.send(protocol.Started(plan.job_id, plan.params, plan.width, plan.height,
                                           len(batch)))
        began = time.perf_counter()
        try:
            images = self.generate(batch)
        except torch.OutOfMemoryError:
            self.out_of_memory(batch)
            return
        except Exception as error:  # one bad batch must not stop the engine
            log.exception("batch of %d failed", len(batch))
            for plan in plans:
                self.fail(plan, f"The engine could not make this image: {error}")
            return
        if self.stopping:
            return  # interrupted: the bot still holds these jobs and puts them back on restart
        if not halves_of_a_split:
            self.recover_limit(plans[0].params.kind, len(batch))
        elapsed = time.perf_counter() - began
        for plan in plans:
            plan.engine_seconds += elapsed
        kept = []
        for (plan, index), (image, flagged) in zip(batch, images, strict=True):
            if plan.cancelled or plan.job_id not in self.plans:
                continue
            if flagged and plan.params.safety != "spoiler":
                self.fail(plan, SAFETY_REFUSAL)
            else:
                kept.append((plan, index, image, flagged))
        keys = self.store_pngs([image for _, _, image, _ in kept])
        for (plan, index, image, flagged), key in zip(kept, keys, strict=True):
            if plan.job_id not in self.plans:
                continue  # another image of this job could not be written
            if isinstance(key, str):
                self.record(plan, index, image, key, flagged)
                continue
            log.error("could not write an image under %s: %s", self.blobs.root, key)
            self.fail(plan, "Your image was made but could not be saved (the bot's disk is "
                      f"full or its images folder is not writable: {key.strerror}). "
                      "The bot's admins can see this in the log.")

    def out_of_memory(self, batch: list[Slot]) -> None:
        """Too big for the device at once: run each half on its own; a single image that still
        does not fit fails with a message the user can act on."""
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if len(batch) > 1:
            half = len(batch) // 2
            kind = batch[0][0].params.kind
            self.kind_limits[kind] = min(half, self.kind_limits.get(kind, self.max_batch))
            self.batches_since_lowered[kind] = 0
            log.warning("out of memory on a batch of %d; splitting it, and making %s batches "
                        "of at most %d from now on", len(batch), kind, self.kind_limits[kind])
            self.run_batch(batch[:half], halves_of_a_split=True)
            self.run_batch(batch[half:], halves_of_a_split=True)
            return
        plan = batch[0][0]
        pipes = self.pipes_of(plan.params.checkpoint)
        if can_offload(pipes):
            # Once per model: from now on its weights wait in CPU RAM between uses, slower
            # but within memory, rather than fail here and on every job after.
            log.warning("out of memory on one image of %dx%d with %s; moving its weights to "
                        "CPU RAM between uses (offload: model) and trying again", plan.width,
                        plan.height, pipes.checkpoint)
            apply_offload(pipes.text2img, "model", pipes.device)
            pipes.offload = "model"
            self.run_batch(batch, halves_of_a_split=True)
            return
        log.error("out of memory on one image of %dx%d", plan.width, plan.height)
        self.fail(plan, f"The image ({plan.width}×{plan.height}, {plan.params.steps} steps) "
                  "does not fit in the device's memory. Try a smaller --ar or fewer --n.")

    def recover_limit(self, kind: str, size: int) -> None:
        """A batch of `kind` fitted: after enough full ones, try twice as large again."""
        if kind not in self.kind_limits or size < self.kind_limits[kind]:
            return
        self.batches_since_lowered[kind] += 1
        if self.batches_since_lowered[kind] < RECOVERY_BATCHES:
            return
        self.batches_since_lowered[kind] = 0
        raised = min(self.max_batch, 2 * self.kind_limits[kind])
        log.info("%d %s batches fitted; trying batches of up to %d again", RECOVERY_BATCHES,
                 kind, raised)
        if raised >= self.max_batch:
            del self.kind_limits[kind]
        else:
            self.kind_limits[kind] = raised

    def training_ended(self) -> None:
        """The trainer's memory is free: batches may be as large as before it ran."""
        self.trainer = None
        if self.kind_limits:
            log.info("training ended: batches of up to %d again", self.max_batch)
            self.kind_limits.clear()
            self.batches_since_lowered.clear()

    def fail(self, plan: Plan, error: str) -> None:
        if self.plans.pop(plan.job_id, None) is None:
            return
        self.slots = deque(slot for slot in self.slots if slot[0] is not plan)
        self.send(protocol.Failed(plan.job_id, error, "failed"))

    def generate(self, batch: list[Slot]) -> list[tuple[Image.Image, bool]]:
        """The batch's images, each with whether the model's own safety checker flagged it."""
        plan = batch[0][0]
        pipes = self.pipes_of(plan.params.checkpoint)
        if plan.params.scale and self.upscaler_source:
            return self.upscaled(batch, pipes)
        jobs = [p.params for p, _ in batch]
        arguments = dict(
            **pipes.family.call_arguments([job.prompt for job in jobs],
                                          [job.negative for job in jobs], plan.params.cfg),
            **pipes.settings.call,
            num_inference_steps=plan.params.steps,
            # CPU generators give the same noise on every device, so a seed means one image.
            generator=[torch.Generator("cpu").manual_seed(p.params.seed + i) for p, i in batch],
            callback_on_step_end=self.step_callback(batch),
        )
        kind = plan.params.kind
        pipe = pipes.for_kind(kind)
        if kind == "txt2img":
            arguments.update(width=plan.width, height=plan.height)
        else:
            size = (plan.width, plan.height)
            arguments["image"] = [_open_rgb(self.blobs.path(job.image), size) for job in jobs]
            arguments["strength"] = plan.params.strength
            if kind == "inpaint":
                arguments["mask_image"] = [_open_mask(self.blobs.path(job.mask), size)
                                           for job in jobs]
                arguments.update(width=plan.width, height=plan.height)
            elif accepts(pipe, "width"):  # FLUX's img2img sizes its output itself otherwise
                arguments.update(width=plan.width, height=plan.height)
        adapters = self.model_adapters[plan.params.checkpoint]
        # The pipeline would black out what its safety checker flags; the checker runs here
        # instead, so a chat that allows it can be sent the picture hidden as a spoiler.
        checker = getattr(pipe, "safety_checker", None)
        try:
            if checker is not None:
                pipe.safety_checker = None
            with torch.inference_mode(), adapters.with_loras(plan.params.loras):
                output = pipe(**arguments)
        finally:
            if checker is not None:
                pipe.safety_checker = checker
        images = output.images
        if kind == "inpaint":
            # The VAE round trip shifts every pixel a little; outside the mask the user asked
            # for no change at all, so the original is pasted back there.
            images = [pipe.image_processor.apply_overlay(mask, source, image) for
                      mask, source, image in zip(arguments["mask_image"], arguments["image"],
                                                 images, strict=True)]
        if checker is not None:
            flagged = _flagged(pipe, checker, images)
        else:  # a pipeline whose own checker goes by another name says so in its output
            flagged = getattr(output, "nsfw_content_detected", None) or [False] * len(images)
        return list(zip(images, flagged, strict=True))

    def upscaled(self, batch: list[Slot], pipes: Pipelines) -> list[tuple[Image.Image, bool]]:
        """The batch's pictures enlarged by engine.upscaler, each checked by its model's own
        safety checker as the model's pictures are."""
        upscaler = self.upscaler(pipes)
        images = []
        for plan, index in batch:
            def on_step(done: int, total: int, plan: Plan = plan) -> None:
                self.take_messages(block=False)  # so a cancel can arrive
                if not plan.cancelled:
                    self.send(protocol.Progress(plan.job_id, done, total))

            params = plan.params
            with Image.open(self.blobs.path(params.image)) as source:
                images.append(upscaler.upscale(source, (plan.width, plan.height),
                                               params.prompt or "", params.seed + index,
                                               params.steps, on_step))
        checker = getattr(pipes.text2img, "safety_checker", None)
        return list(zip(images, _flagged(pipes.text2img, checker, images), strict=True))

    def upscaler(self, pipes: Pipelines) -> Upscaler:
        """engine.upscaler, loaded once; one that cannot load fails each upscale with why."""
        if self._upscaler is None:
            try:
                self._upscaler = load_upscaler(self.upscaler_source, pipes.device, pipes.dtype)
                log.info("upscales use %s", self._upscaler.name)
            except UpscalerError as error:
                log.error("%s", error)
                self._upscaler = error
        if isinstance(self._upscaler, UpscalerError):
            raise self._upscaler
        return self._upscaler

    def step_callback(self, batch: list[Slot]) -> Callable:
        plans = _plans_of(batch)
        slots_in_batch = Counter(id(plan) for plan, _ in batch)

        def on_step_end(pipe, step: int, timestep, tensors: dict) -> dict:
            self.take_messages(block=False)  # so a cancel can arrive mid-batch
            for plan in plans:
                if not plan.cancelled:
                    done = (len(plan.images) * plan.steps_run
                            + slots_in_batch[id(plan)] * (step + 1))
                    self.send(protocol.Progress(plan.job_id, done,
                                                plan.params.n * plan.steps_run))
            if self.stopping or all(plan.cancelled for plan in plans):
                pipe._interrupt = True  # diffusers' documented way to stop between steps
            return tensors

        return on_step_end

    def store_pngs(self, images: list[Image.Image]) -> list[str | OSError]:
        """Encode a batch's PNGs side by side and put them in the blob store: each one's key,
        or the error that kept it out (Pillow's encoder lets go of the GIL: on a GPU, encoding
        a big batch one by one costs a noticeable share of its time)."""
        return list(self.png_writers.map(self._store_png, images))

    def _store_png(self, image: Image.Image) -> str | OSError:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        try:
            return self.blobs.put(buffer.getvalue(), ".png")
        except OSError as error:
            return error

    def record(self, plan: Plan, index: int, image: Image.Image, key: str,
               flagged: bool = False) -> None:
        params = plan.params
        plan.images[index] = protocol.ImageBlob(key, params.seed + index, image.width,
                                                image.height, flagged)
        if len(plan.images) == params.n:
            del self.plans[plan.job_id]
            images = tuple(plan.images[i] for i in range(params.n))
            version = self.model_adapters[params.checkpoint].version
            self.send(protocol.Result(plan.job_id, images, round(plan.engine_seconds, 4),
                                      version))

    @property
    def version(self) -> str:
        """The LoRA version the default model generates with ("base": none)."""
        return self.adapters.version

    # ---- versions and training -----------------------------------------------------------

    def apply(self, message: Control) -> None:
        if isinstance(message, protocol.UseVersion):
            name = self.models.name_of(message.checkpoint)
            self.versions[name] = message
            adapters = self.model_adapters.get(name) if self.models.loaded(name) else None
            if adapters is None:  # applied when the model is next on the device
                self.send(protocol.VersionActive(message.version, name))
                return
            self._use_version(name, adapters, message)
            self.send(protocol.VersionActive(adapters.version, name))
        elif isinstance(message, protocol.Train):
            self.start_training(message)
        elif self.trainer is not None and self.trainer.request.run_id == message.run_id:
            self.trainer.discard()
            self.training_ended()
            self.send(protocol.TrainFailed(message.run_id, "Cancelled.", cancelled=True))

    def _use_version(self, name: str, adapters: Adapters, switch: protocol.UseVersion) -> None:
        self.applied[name] = switch
        try:
            adapters.use(switch.version, switch.chain)
            adapters.for_generation()
        except Exception:
            log.exception("could not switch to %s", switch.version)

    def start_training(self, request: protocol.Train) -> None:
        if self.trainer is not None:
            self.send(protocol.TrainFailed(request.run_id, "Another retraining is running."))
            return
        adapters = None
        try:
            name = self.models.name_of(request.checkpoint)
            pipes = self.pipes_of(name)
            adapters = self.model_adapters[name]
            self.trainer = LoraTrainer(pipes, adapters, request)
        except Exception as error:
            log.exception("could not start training %s", request.version)
            if adapters is not None:
                with contextlib.suppress(Exception):
                    adapters.drop(request.version)
                adapters.for_generation()
            self.send(protocol.TrainFailed(request.run_id, f"Could not start: {error}"))

    def train_slice(self) -> None:
        trainer = self.trainer
        request = trainer.request
        try:
            trainer.run_slice(TRAIN_SLICE_SECONDS)
            losses, trainer.losses = tuple(trainer.losses), []
            self.send(protocol.TrainProgress(request.run_id, trainer.step, request.steps,
                                             trainer.loss, round(trainer.seconds, 2), losses))
            if not trainer.done:
                return
            key = trainer.save()
        except Exception as error:
            log.exception("training %s failed", request.version)
            self.training_ended()
            trainer.discard()
            self.send(protocol.TrainFailed(request.run_id, f"Training failed: {error}"))
            return
        self.training_ended()
        name = trainer.pipes.checkpoint
        switch = protocol.UseVersion(
            request.version, request.parents + (protocol.Adapter(request.version, key),), name)
        self.versions[name] = switch
        self._use_version(name, trainer.adapters, switch)
        self.send(protocol.TrainDone(request.run_id, request.version, key, trainer.loss,
                                     round(trainer.seconds, 2)))


def can_offload(pipes: Pipelines) -> bool:
    """Whether a model that ran out of memory can still fall back to offloading."""
    return pipes.device.type == "cuda" and pipes.offload == "none"


def _plans_of(batch: list[Slot]) -> list[Plan]:
    """The jobs in a batch, each once, in order (a job of n images has n slots)."""
    return list({id(plan): plan for plan, _ in batch}.values())


def _flagged(pipe: Any, checker: Any, images: list[Image.Image]) -> list[bool]:
    """What the pipeline's own safety checker (SD 1.x and 2.x ship one) says of each image;
    none flagged where it has none."""
    extractor = getattr(pipe, "feature_extractor", None)
    if checker is None or extractor is None:
        return [False] * len(images)
    device = getattr(pipe, "_execution_device", None) or next(checker.parameters()).device
    dtype = next(checker.parameters()).dtype
    clip_input = extractor(images, return_tensors="pt").pixel_values.to(device, dtype)
    arrays = np.stack([np.asarray(image, dtype=np.float32) / 255 for image in images])
    with torch.inference_mode():
        _, flags = checker(images=arrays, clip_input=clip_input)
    return [bool(flag) for flag in flags]


def _open_rgb(path: Path, size: tuple[int, int]) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB").resize(size, Image.Resampling.LANCZOS)


def _open_mask(path: Path, size: tuple[int, int]) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("L").resize(size, Image.Resampling.NEAREST)
