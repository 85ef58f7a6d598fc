"""FLUX.1: a rectified-flow transformer on packed 2×2 latent patches, conditioned on T5's
states, CLIP's pooled embedding and, in FLUX.1-dev, a guidance embedding.

Options: FLUX.1-dev takes `--cfg` as its embedded guidance; FLUX.1-schnell has none, so there
`--cfg` above 1 runs true classifier-free guidance instead. `--no` always runs true CFG
(two transformer passes a step, so twice the time), at `--cfg` or TRUE_CFG.

Training follows diffusers' train_dreambooth_lora_flux.py: uniform σ on the scheduler's grid,
noisy = (1 − σ)·x + σ·ε packed into patches with their image ids, timestep σ (the pipeline's
/1000), guidance 3.5 where the model embeds it, and the target ε − x.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import (
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

from engine.families.base import Conditioning, ModelSettings, Noised, accepts
from engine.families.parts import CLIP_L, T5_XXL, clip_tokenizer, tiny_clip, tiny_t5, vae
from engine.families.sd3 import FlowFamily

TRUE_CFG = 4.0  # true guidance when a negative prompt is given and --cfg does not say
TRAINING_GUIDANCE = 3.5


class Flux(FlowFamily):
    name = "flux"
    label = "FLUX.1"
    density = "none"  # uniform, as the FLUX script's default weighting scheme
    lora_targets = FlowFamily.lora_targets + ("ff.net.0.proj", "ff.net.2",
                                              "ff_context.net.0.proj", "ff_context.net.2")

    pipelines = ("FluxPipeline", "FluxImg2ImgPipeline", "FluxInpaintPipeline")

    @property
    def embeds_guidance(self) -> bool:
        """FLUX.1-dev (distilled guidance as an input); FLUX.1-schnell has none."""
        return bool(self.denoiser.config.guidance_embeds)

    def settings(self) -> ModelSettings:
        native = self.pipe.vae.config.sample_size
        grid = self.vae_scale_factor * 2  # latents are packed in 2×2 patches
        if self.embeds_guidance:
            return ModelSettings(native, grid, default_steps=28, default_guidance=3.5)
        return ModelSettings(native, grid, default_steps=4, default_guidance=0.0)

    def option_notes(self) -> list[str]:
        if self.embeds_guidance:
            return ["--cfg sets FLUX.1-dev's embedded guidance (default 3.5); --no runs true "
                    f"guidance at {TRUE_CFG}, which takes twice as long."]
        return ["FLUX.1-schnell has no guidance of its own: --cfg above 1, or --no, runs true "
                f"guidance (at --cfg, else {TRUE_CFG}), which takes twice as long."]

    def true_cfg(self, negative_prompt: str, guidance: float) -> float:
        if self.embeds_guidance:
            return TRUE_CFG if negative_prompt else 1.0
        if guidance > 1:
            return guidance
        return TRUE_CFG if negative_prompt else 1.0

    def batch_options(self, negative_prompt: str) -> tuple:
        return (bool(negative_prompt),)  # true CFG changes every image in its batch

    def call_arguments(self, prompts: list[str], negative_prompts: list[str],
                       guidance: float) -> dict[str, Any]:
        arguments: dict[str, Any] = {"prompt": prompts}
        if self.embeds_guidance:
            arguments["guidance_scale"] = guidance
        scale = self.true_cfg(negative_prompts[0], guidance)
        if scale > 1 and accepts(self.pipe, "true_cfg_scale"):
            arguments.update(negative_prompt=negative_prompts, true_cfg_scale=scale)
        return arguments

    def encode_prompts(self, prompts: list[str]) -> Conditioning:
        embeddings, pooled, text_ids = self.pipe.encode_prompt(
            prompts, None, device=self.denoiser.device, **self.text_options())
        count = len(prompts)
        return Conditioning({"encoder_hidden_states": embeddings, "pooled_projections": pooled,
                             "txt_ids": text_ids.expand(count, *text_ids.shape)})

    def noised(self, latents: torch.Tensor, noise: torch.Tensor,
               generator: torch.Generator) -> Noised:
        step = super().noised(latents, noise, generator)
        return Noised(step.noisy, step.timesteps / 1000, step.target)

    def predict(self, noisy: torch.Tensor, timesteps: torch.Tensor,
                conditioning: dict[str, torch.Tensor]) -> torch.Tensor:
        batch, channels, height, width = noisy.shape
        packed = FluxPipeline._pack_latents(noisy, batch, channels, height, width)
        image_ids = FluxPipeline._prepare_latent_image_ids(batch, height // 2, width // 2,
                                                           noisy.device, noisy.dtype)
        guidance = None
        if self.embeds_guidance:
            guidance = torch.full((batch,), TRAINING_GUIDANCE, device=noisy.device)
        text = dict(conditioning)
        text["txt_ids"] = text["txt_ids"][0]  # one set of ids for the whole batch
        predicted = self.module(hidden_states=packed, timestep=timesteps, guidance=guidance,
                                  img_ids=image_ids, **text).sample
        factor = self.vae_scale_factor
        return FluxPipeline._unpack_latents(predicted, height * factor, width * factor, factor)


def build_random(tiny: bool, dev: bool = True) -> FluxPipeline:
    """FLUX.1-dev's published configuration (or schnell's, without the guidance embedding),
    or the same classes at a tiny size."""
    if tiny:
        clip, t5 = tiny_clip(32), tiny_t5(32)
        transformer = FluxTransformer2DModel(
            in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
            num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
            guidance_embeds=dev, axes_dims_rope=(4, 6, 6))
        image_vae = vae(tiny=True, sample_size=32, shift_factor=0.0, use_quant_conv=False,
                        use_post_quant_conv=False)
        tokens = 16
    else:
        clip, t5 = CLIPTextConfig(**CLIP_L), T5Config(**T5_XXL)
        transformer = FluxTransformer2DModel(guidance_embeds=dev)  # the defaults are FLUX.1's
        image_vae = vae(tiny=False, sample_size=1024, latent_channels=16, scaling_factor=0.3611,
                        shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False)
        tokens = 77
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
        max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)
    return FluxPipeline(
        scheduler=scheduler, vae=image_vae, text_encoder=CLIPTextModel(clip),
        tokenizer=clip_tokenizer(tokens), text_encoder_2=T5EncoderModel(t5),
        tokenizer_2=clip_tokenizer(tokens), transformer=transformer)
