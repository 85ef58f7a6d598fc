"""Versions on a compiled denoiser are merged into its weights (engine/fused_lora.py): the same
pictures as peft's adapters, exactly the base again after switching back, and the module tree
torch.compile traced left as it was, so a switch never compiles again."""

from __future__ import annotations

import io
import queue

import numpy as np
import pytest
import torch
from PIL import Image

from engine import protocol
from engine.blobs import LocalBlobs
from engine.fused_lora import FusedAdapters
from engine.params import Params
from engine.pipelines import load
from engine.worker import Engine


def modules(denoiser: torch.nn.Module) -> list[tuple[str, str]]:
    return [(name, type(module).__name__) for name, module in denoiser.named_modules()]


def train(engine: Engine, sent: list, version: str, parents=()) -> protocol.Adapter:
    """Train `version` in the engine; the adapter its TrainDone names."""
    purple = io.BytesIO()
    Image.new("RGB", (32, 32), "purple").save(purple, format="PNG")
    example = engine.blobs.put(purple.getvalue(), ".png")
    examples = (protocol.TrainExample(example, "a purple circle", 5.0),) * 2
    engine.start_training(protocol.Train(1, version, parents, examples, steps=3, rank=4,
                                         learning_rate=1e-2))
    while engine.trainer is not None:
        engine.train_slice()
    [done] = [m for m in sent if isinstance(m, protocol.TrainDone) and m.version == version]
    return protocol.Adapter(version, done.adapter)


def picture(engine: Engine, sent: list, job_id: int) -> np.ndarray:
    engine.run_all([protocol.Job(job_id, Params(prompt="a purple circle", seed=3, steps=3))])
    [result] = [m for m in sent if isinstance(m, protocol.Result) and m.job_id == job_id]
    return np.asarray(Image.open(engine.blobs.path(result.images[0].blob))).astype(int)


@pytest.mark.parametrize("spec", ["random:sd15-tiny", "random:flux-tiny"])
def test_merged_versions_draw_as_peft_does_and_leave_the_modules_alone(spec, tmp_path):
    pipes = load(spec, "cpu")
    pipes.compiled = True  # as load(..., compile_models=True) marks it; no compile needed here
    sent: list = []
    blobs = LocalBlobs(tmp_path / "blobs")
    engine = Engine(pipes, blobs, 4, sent.append, queue.Queue())
    assert isinstance(engine.adapters, FusedAdapters)
    denoiser = pipes.family.module
    tree = modules(denoiser)
    base_weights = {k: v.clone() for k, v in denoiser.state_dict().items()}
    base = picture(engine, sent, 1)

    v1 = train(engine, sent, "v1")
    assert modules(denoiser) == tree  # the trained adapter's layers are gone again
    trained = picture(engine, sent, 2)
    assert engine.adapters.version == "v1" and np.abs(trained - base).max() > 0

    # The same version through peft's adapters, as an uncompiled engine runs it (an engine
    # with a blob store of its own, which has been given the version's weights)
    peft_pipes = load(spec, "cpu")
    peft_sent: list = []
    peft_blobs = LocalBlobs(tmp_path / "peft")
    assert peft_blobs.put(blobs.get(v1.blob), ".safetensors") == v1.blob
    peft = Engine(peft_pipes, peft_blobs, 4, peft_sent.append, queue.Queue())
    peft.adapters.use("v1", (v1,))
    peft.adapters.for_generation()
    assert np.abs(picture(peft, peft_sent, 3) - trained).max() <= 2  # float rounding only

    engine.apply(protocol.UseVersion("base"))
    assert modules(denoiser) == tree
    assert all(torch.equal(denoiser.state_dict()[k], v) for k, v in base_weights.items())
    # (FLUX's CPU kernels differ by one level from run to run even on the same weights)
    assert np.abs(picture(engine, sent, 4) - base).max() <= 1
    engine.apply(protocol.UseVersion("v1", (v1,)))
    assert np.abs(picture(engine, sent, 5) - trained).max() <= 1
    assert modules(denoiser) == tree


def test_with_torch_compile_a_version_switch_compiles_nothing_again(tmp_path, monkeypatch):
    """The real thing: a compiled denoiser, a trained version, then switches back and forth
    with torch.compile told to fail on any recompilation."""
    import engine.pipelines

    monkeypatch.setattr(engine.pipelines, "warm_up", lambda pipes: None)  # compile in job 1
    pipes = load("random:sd15-tiny", "cpu", compile_models=True)
    sent: list = []
    engine_ = Engine(pipes, LocalBlobs(tmp_path), 4, sent.append, queue.Queue())
    picture(engine_, sent, 1)
    v1 = train(engine_, sent, "v1")
    trained = picture(engine_, sent, 2)  # traced again once: the run changed the module
    monkeypatch.setattr(torch._dynamo.config, "error_on_recompile", True)
    engine_.apply(protocol.UseVersion("base"))
    base = picture(engine_, sent, 3)
    engine_.apply(protocol.UseVersion("v1", (v1,)))
    assert np.array_equal(picture(engine_, sent, 4), trained)
    assert np.abs(trained - base).max() > 0
