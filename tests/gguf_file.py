"""A denoiser written as a GGUF file, the way pre-quantized FLUX.1 and SD 3.5 files are shared
(city96's, for one): each 2-D weight whose rows split into 32-value blocks in Q8_0, the rest
as float32. The names stay diffusers' own, which diffusers' single-file loader takes as they
are."""

from __future__ import annotations

from pathlib import Path

import gguf
from safetensors.torch import load_file

BLOCK = 32  # Q8_0 quantizes 32 values at a time


def write_gguf(weights: Path, out: Path, arch: str = "sd3") -> Path:
    writer = gguf.GGUFWriter(str(out), arch)
    for name, tensor in load_file(weights).items():
        array = tensor.float().numpy()
        if array.ndim == 2 and array.shape[-1] % BLOCK == 0:
            quantized = gguf.quants.quantize(array, gguf.GGMLQuantizationType.Q8_0)
            writer.add_tensor(name, quantized, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out
