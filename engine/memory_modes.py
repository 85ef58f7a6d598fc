"""How a model is made to fit: quantized weights (diffusers' PipelineQuantizationConfig) and
offload to CPU RAM between uses (diffusers' hooks). Both are asked for per model in
`engine.models` (bot/config.py) and applied while it loads (engine/pipelines.py).

- quantize `8bit` and `4bit` are bitsandbytes' LLM.int8 and NF4, which run on CUDA only;
  `int8-weights` is torchao's int8 weight-only, which runs on the CPU and on CUDA.
- offload `model` moves each component to the GPU only while it runs, `sequential` each
  layer (slowest, least memory), `group` blocks of layers ahead of use on a CUDA stream.
"""

from __future__ import annotations

import torch
from diffusers import PipelineQuantizationConfig

# The components worth quantizing: the denoiser and, where a pipeline has one, the big T5
# text encoder; the VAE and the CLIP encoders are small and sensitive.
DENOISERS = ("unet", "transformer")
BIG_TEXT_ENCODERS = {"Flux": "text_encoder_2", "StableDiffusion3": "text_encoder_3"}


class MemoryModeError(ValueError):
    """A quantization or offload mode that cannot run here; the message says what to change."""


def quantization(mode: str, class_name: str, device: torch.device,
                 dtype: torch.dtype) -> PipelineQuantizationConfig | None:
    if mode == "none":
        return None
    if mode in ("8bit", "4bit") and device.type != "cuda":
        raise MemoryModeError(f"quantize: {mode} is bitsandbytes, which needs a CUDA GPU; on "
                              "the CPU use quantize: int8-weights (torchao)")
    denoiser = "transformer" if class_name.startswith(tuple(BIG_TEXT_ENCODERS)) else "unet"
    if mode == "int8-weights":
        from diffusers import TorchAoConfig
        from torchao.quantization import Int8WeightOnlyConfig

        return PipelineQuantizationConfig(
            quant_mapping={denoiser: TorchAoConfig(Int8WeightOnlyConfig())})
    components = [denoiser] + [encoder for prefix, encoder in BIG_TEXT_ENCODERS.items()
                               if class_name.startswith(prefix)]
    kwargs = ({"load_in_8bit": True} if mode == "8bit" else
              {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4",
               "bnb_4bit_compute_dtype": dtype})
    return PipelineQuantizationConfig(quant_backend=f"bitsandbytes_{mode}", quant_kwargs=kwargs,
                                      components_to_quantize=components)


def check_offload(mode: str, device: torch.device) -> None:
    if mode != "none" and device.type != "cuda":
        raise MemoryModeError(f"offload: {mode} moves weights between CPU RAM and a GPU; on the "
                              "CPU the model is in RAM already (use offload: none)")


def apply_offload(pipe, mode: str, device: torch.device) -> None:
    """Instead of `pipe.to(device)`: the weights stay in CPU RAM and come to the GPU as used."""
    if mode == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif mode == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    elif mode == "group":
        pipe.enable_group_offload(onload_device=device, offload_device=torch.device("cpu"),
                                  offload_type="leaf_level", use_stream=True)
    else:
        raise MemoryModeError(f"unknown offload mode {mode!r}")
