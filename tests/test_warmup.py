"""Warm-up: a loaded version has run on synthetic inputs before it is visible, without touching the
batcher's accounting, and a version that cannot run the batches its signature allows never loads."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from prediction_service.adapters.simple import SimpleAdapter
from prediction_service.errors import ModelLoadError
from prediction_service.registry import RegistryReader, ValidationReport, VersionMetadata
from prediction_service.registry.writer import ArtifactSource, register_version, set_stage_link
from prediction_service.settings import Settings, WarmupSettings
from prediction_service.signature import ModelSignature, TensorSpec
from prediction_service.execution.warmup import warm_up, warmup_batches
from tests.support.models import REGRESSOR_SIGNATURE

TEXT_SIGNATURE = ModelSignature(
    inputs=[TensorSpec(name="input_ids", dtype="int64", shape=(-1, 16)),
            TensorSpec(name="attention_mask", dtype="int64", shape=(-1, -1))],
    outputs=[TensorSpec(name="logits", dtype="float32", shape=(-1, 3))],
    task="classification", labels=["negative", "neutral", "positive"], max_batch_size=4,
)


class SmallBatchesOnly(nn.Module):
    """Declares max_batch_size 64 (REGRESSOR_SIGNATURE) but fails on more than 4 rows."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > 4:
            raise RuntimeError("this model was only ever tried on small batches")
        return x.sum(dim=1, keepdim=True)


def test_batches_follow_the_signature_and_are_capped_by_its_max_batch():
    batches = warmup_batches(TEXT_SIGNATURE, WarmupSettings(batch_sizes="1,8,4"))
    assert [b["input_ids"].shape for b in batches] == [(1, 16), (4, 16)]  # 8 capped to 4, duplicate dropped
    assert batches[1]["attention_mask"].shape == (4, 4) and batches[1]["attention_mask"].dtype == np.int64
    assert (batches[1]["attention_mask"] == 1).all()  # ones: a valid mask, a valid token id


def test_every_batch_runs_the_configured_number_of_times():
    seen: list[int] = []
    report = warm_up(lambda inputs: seen.append(inputs["x"].shape[0]) or {}, REGRESSOR_SIGNATURE,
                     WarmupSettings(batch_sizes="8,1", iterations=3))
    assert seen == [1, 1, 1, 8, 8, 8] and report.runs == 6 and report.seconds >= 0


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
async def test_loaded_models_are_warm_and_the_batcher_never_saw_it(tiny_store, fmt):
    adapter = SimpleAdapter(Settings(model_store=tiny_store, warmup=WarmupSettings(enabled=True, batch_sizes="1,8", iterations=2)))
    adapter.formats = (fmt,)
    try:
        loaded = await adapter.load(RegistryReader(tiny_store).resolve("tiny-regressor"))
        assert loaded.details["warmup"]["runs"] == 4
        assert (await adapter.describe(loaded.key))["batches"] == 0  # warm-up is not traffic
    finally:
        await adapter.close()


async def test_warmup_can_be_turned_off(tiny_store):
    adapter = SimpleAdapter(Settings(model_store=tiny_store, warmup=WarmupSettings(enabled=False)))
    try:
        loaded = await adapter.load(RegistryReader(tiny_store).resolve("tiny-regressor"))
        assert "warmup" not in loaded.details
    finally:
        await adapter.close()


async def test_a_version_that_fails_its_warmup_is_not_loaded(tmp_path):
    root, artifact = tmp_path / "store", tmp_path / "fragile.pt"
    torch.jit.script(SmallBatchesOnly()).save(str(artifact))  # scripted: the branch stays in the graph
    register_version(root, VersionMetadata(name="fragile", version="1.0.0", signature=REGRESSOR_SIGNATURE,
                                           validation=ValidationReport(passed=True, kind="smoke")),
                     [ArtifactSource(artifact, "torchscript", file_name="model.pt")])
    set_stage_link(root, "fragile", "production", "1.0.0")
    version = RegistryReader(root).resolve("fragile")
    adapter = SimpleAdapter(Settings(model_store=root, warmup=WarmupSettings(enabled=True, batch_sizes="1,8")))
    try:
        with pytest.raises(ModelLoadError, match=r"(?s)warm-up run on a batch of 8 rows.*small batches"):
            await adapter.load(version)
        assert not adapter.is_loaded(version.key)
    finally:
        await adapter.close()
    small = SimpleAdapter(Settings(model_store=root, warmup=WarmupSettings(enabled=True, batch_sizes="1,4")))
    try:
        assert (await small.load(version)).details["warmup"]["runs"] == 6
    finally:
        await small.close()


def test_batch_sizes_are_checked():
    with pytest.raises(ValueError, match="WARMUP_BATCH_SIZES"):
        WarmupSettings(batch_sizes="1,x")
    with pytest.raises(ValueError, match="WARMUP_BATCH_SIZES"):
        WarmupSettings(batch_sizes="0")
