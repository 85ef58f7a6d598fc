"""Commands that make pictures, turned into jobs: the user's parameters with the seed chosen,
attached pictures checked and put in the blob store, an earlier picture looked up."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import re
import secrets

from PIL import Image

from bot import commands as cmd
from bot.config import Settings
from bot.errors import UserError
from bot.images import ImageLimits, open_image, split_image_and_mask
from bot.service.chats import ChatDefaults, Chats
from bot.service.loras import LoraShelf
from bot.service.models import ModelBoard
from bot.service.types import Attachment
from bot.store import ImageRow, JobRow, NewJob, Store
from engine.blobs import key_of
from engine.params import Params

# An upscale without an upscaling model is a "hires fix": the picture enlarged, then redrawn
# by its own model this lightly, so it gains detail and keeps what it shows.
UPSCALE_STRENGTH = 0.3
MAX_UPSCALED_SIDE = 4096


class JobMaker:
    def __init__(self, settings: Settings, store: Store, models: ModelBoard,
                 chats: Chats, loras: LoraShelf) -> None:
        self.settings = settings
        self.store = store
        self.models = models
        self.chats = chats
        self.loras = loras

    async def imagine(self, user_id: int, request: cmd.Imagine, origin: dict,
                      chat: str) -> NewJob:
        defaults = await self.chats.defaults(chat)
        params = self._for_chat(request.params, defaults)
        return await self._new(chat, user_id, params, origin=origin, defaults=defaults)

    def _for_chat(self, params: Params, defaults: ChatDefaults) -> Params:
        """The user's parameters over the chat's defaults, with the style applied."""
        return self.chats.styled(params.resolve(defaults.params))

    async def vary(self, user_id: int, request: cmd.Vary, image: Attachment | None,
                   origin: dict, chat: str) -> NewJob:
        params = request.params
        if image is not None:
            picture = await asyncio.to_thread(open_image, image.data, self._limits)
            upload = await asyncio.to_thread(_png, picture.convert("RGB"))
            params = dataclasses.replace(params, prompt=params.prompt or "", image=upload[0])
            return await self._new(chat, user_id, params, origin=origin, uploads=(upload,))
        if request.image_id is None:
            raise UserError("Which image should I vary? Give its id (for example /vary 12) "
                            "or attach an image.")
        source = await self.image(request.image_id)
        job = await self.store.get_job(source.job_id)
        earlier = job.params
        params = params.resolve(Params(prompt=earlier.prompt, negative=earlier.negative,
                                       checkpoint=_ran_on(job)))
        return await self._new(chat, user_id, dataclasses.replace(params, image=source.blob),
                         source_image_id=source.id, origin=origin)

    async def inpaint(self, user_id: int, request: cmd.Inpaint, image: Attachment | None,
                      mask: Attachment | None, origin: dict, chat: str) -> NewJob:
        if image is None:
            raise UserError("Inpainting needs an image and a mask: attach both (white in the "
                            "mask = repaint), or one PNG whose transparent part is to be "
                            "repainted.")
        uploads = await asyncio.to_thread(self._inpaint_inputs, image, mask)
        defaults = await self.chats.defaults(chat)
        params = dataclasses.replace(self._for_chat(request.params, defaults), aspect=None,
                                     image=uploads[0][0], mask=uploads[1][0])  # its own shape
        return await self._new(chat, user_id, params, origin=origin, uploads=uploads,
                               defaults=defaults)

    async def reroll(self, user_id: int, image_id: int, origin: dict, chat: str) -> NewJob:
        """The job that made an image, again, with a new seed (the Reroll button)."""
        source = await self.image(image_id)
        job = await self.store.get_job(source.job_id)
        return await self._new(chat, user_id, dataclasses.replace(job.params, seed=None,
                                                       checkpoint=_ran_on(job)),
                         source_image_id=job.source_image_id, origin=origin)

    async def upscale(self, user_id: int, request: cmd.Upscale, origin: dict,
                      chat: str) -> NewJob:
        if request.image_id is None:
            raise UserError("Which picture should I upscale? Give its id, like /upscale 12.")
        source = await self.image(request.image_id)
        largest = max(source.width, source.height) * request.scale
        if largest > MAX_UPSCALED_SIDE:
            raise UserError(f"Image #{source.id} is {source.width}×{source.height}: {request.scale}"
                            f" times that is over {MAX_UPSCALED_SIDE} pixels a side. Try "
                            "--scale 2, or a smaller picture.")
        job = await self.store.get_job(source.job_id)
        ran = job.resolved or job.params
        params = Params(kind="img2img", prompt=ran.prompt or "", negative=ran.negative,
                        seed=source.seed, steps=ran.steps, cfg=ran.cfg, n=1,
                        strength=UPSCALE_STRENGTH, checkpoint=ran.checkpoint, image=source.blob,
                        loras=ran.loras, scale=request.scale)
        return await self._new(chat, user_id, params, source_image_id=source.id, origin=origin)

    async def image(self, image_id: int) -> ImageRow:
        image = await self.store.get_image(image_id)
        if image is None:
            raise UserError(f"There is no image #{image_id}. /history lists yours.")
        return image

    async def _with_loras(self, params: Params) -> Params:
        """Each --lora by its file's blob key, checked against the model's family where the
        engine has told it (else the engine checks when it loads the file)."""
        if not params.loras:
            return params
        model = params.checkpoint or self.models.default
        seen = self.models.seen.get(model)
        named = []
        for name, weight, *_ in params.loras:
            lora = self.loras.named(name)
            if seen and not lora.fits(seen.family):
                raise UserError(f"The LoRA {lora.name} is for {lora.family}; the model {model} "
                                f"is {seen.family}. /loras lists them.")
            # A first use reads and hashes the whole file: off the event loop.
            named.append((lora.name, weight, await asyncio.to_thread(self.loras.key_of, lora)))
        return dataclasses.replace(params, loras=tuple(named))

    async def _new(self, chat: str, user_id: int, params: Params, *,
                   source_image_id: int | None = None, origin: dict,
                   uploads: tuple[tuple[str, bytes], ...] = (),
                   defaults: ChatDefaults | None = None) -> NewJob:
        self._check_blocked_words(params.prompt or "")
        self._check_checkpoint(params.checkpoint)
        params = await self._with_loras(params)
        # What a flagged picture gets is the chat's to say (an age-restricted Discord channel
        # counts as one that allows spoilers), wherever the job's parameters came from.
        if origin.get("nsfw"):
            params = dataclasses.replace(params, safety="spoiler")
        else:
            defaults = defaults or await self.chats.defaults(chat)
            params = dataclasses.replace(params, safety=defaults.safety)
        if params.seed is None:
            params = dataclasses.replace(params, seed=secrets.randbelow(cmd.MAX_SEED + 1))
        return NewJob(user_id, params, source_image_id=source_image_id, origin=origin,
                      uploads=uploads)

    def _inpaint_inputs(self, image: Attachment,
                        mask: Attachment | None) -> tuple[tuple[str, bytes], ...]:
        picture = open_image(image.data, self._limits)
        mask_picture = open_image(mask.data, self._limits, "mask") if mask else None
        picture, mask_picture = split_image_and_mask(picture, mask_picture)
        return _png(picture), _png(mask_picture)

    @property
    def _limits(self) -> ImageLimits:
        limits = self.settings.limits
        return ImageLimits(limits.max_image_bytes, limits.max_image_pixels)

    def _check_blocked_words(self, prompt: str) -> None:
        words = set(re.findall(r"\w+", prompt.casefold()))
        blocked = [word for word in self.settings.limits.blocked_words
                   if word.casefold() in words]
        if blocked:
            raise UserError("Sorry, this bot's admins do not allow prompts with the word "
                            f"{blocked[0]!r}. Please rephrase.")

    def _check_checkpoint(self, checkpoint: str | None) -> None:
        try:
            self.models.check(checkpoint)
        except ValueError as error:
            raise UserError(str(error)) from None


def _ran_on(job: JobRow) -> str | None:
    """The model that made a job's pictures (as asked, if it has not run yet)."""
    return (job.resolved or job.params).checkpoint


def _png(picture: Image.Image) -> tuple[str, bytes]:
    """A picture as PNG bytes, with the blob key they will have."""
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return key_of(buffer.getvalue(), ".png"), buffer.getvalue()
