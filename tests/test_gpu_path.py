"""The GPU path: half precision, PyTorch's scaled-dot-product attention, channels-last and
batches sized to the GPU's memory. What a CPU can check runs everywhere; the rest runs only
where PyTorch sees a CUDA GPU (`./canvas test tests/test_gpu_path.py` on a GPU box)."""

from __future__ import annotations

import queue

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor2_0

from engine import protocol
from engine.batch_size import AUTO_CAP, choose
from engine.blobs import LocalBlobs
from engine.families import build_random
from engine.params import Params
from engine.pipelines import load, pick_dtype
from engine.worker import Engine

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_half_precision_is_the_default_on_cuda_and_full_on_the_cpu(tmp_path):
    cuda = torch.device("cuda")
    assert pick_dtype("auto", cuda) == torch.float16
    assert pick_dtype("auto", cuda, "bundled:shapes") == torch.float16
    assert pick_dtype("auto", torch.device("cpu")) == torch.float32
    assert pick_dtype("bfloat16", cuda) == torch.bfloat16
    # SD 3 and FLUX.1 overflow float16: bfloat16, read from the model's own model_index.json
    assert pick_dtype("auto", cuda, "random:flux") == torch.bfloat16
    assert pick_dtype("auto", cuda, "random:sd3-tiny") == torch.bfloat16
    build_random("random:flux-schnell-tiny").save_pretrained(tmp_path / "flux")
    assert pick_dtype("auto", cuda, str(tmp_path / "flux")) == torch.bfloat16
    assert pick_dtype("auto", torch.device("cpu"), str(tmp_path / "flux")) == torch.float32


def test_attention_runs_through_scaled_dot_product_attention():
    unet = load("bundled:shapes", "cpu").text2img.unet
    processors = list(unet.attn_processors.values())
    assert processors and all(isinstance(p, AttnProcessor2_0) for p in processors)


@pytest.fixture(scope="module")
def sd15():
    return load("random:sd15", "cuda")


@needs_cuda
def test_on_cuda_the_model_is_half_precision_and_channels_last(sd15):
    assert sd15.dtype == torch.float16
    assert sd15.text2img.unet.dtype == torch.float16
    for module in (sd15.text2img.unet.conv_in, sd15.text2img.vae.decoder.conv_in):
        assert module.weight.is_contiguous(memory_format=torch.channels_last)


@needs_cuda
def test_a_batch_sized_from_the_gpus_memory_runs_at_512(sd15, tmp_path):
    batch = choose(sd15, 0)
    assert 1 <= batch <= AUTO_CAP
    sent: list[protocol.FromEngine] = []
    engine = Engine(sd15, LocalBlobs(tmp_path), batch, sent.append, queue.Queue())
    engine.run_all([protocol.Job(i, Params(prompt="a lighthouse", seed=i, steps=2))
                    for i in range(batch)])
    results = [m for m in sent if isinstance(m, protocol.Result)]
    started = [m for m in sent if isinstance(m, protocol.Started)]
    assert len(results) == batch, [m for m in sent if isinstance(m, protocol.Failed)]
    assert {(s.width, s.height, s.batch_size) for s in started} == {(512, 512, batch)}
