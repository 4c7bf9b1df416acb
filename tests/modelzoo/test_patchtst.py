"""patchtst-price: a PatchTST forecaster from transformers' classes, trained briefly, packaged to ONNX (validated
against PyTorch) and served from raw bars; its signature declares the horizon its ``[batch, horizon]`` output spans."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from pydantic import ValidationError

from prediction_service.modelzoo import patchtst
from prediction_service.modelzoo.datasets import bar_windows
from prediction_service.modelzoo.synthetic import synthetic_ohlcv
from prediction_service.packaging.pipeline import PackagingOptions, PackagingRequest, package_model
from prediction_service.preprocessing.bars import preprocess_bars
from prediction_service.registry import RegistryReader
from prediction_service.registry.store import ModelRegistry
from prediction_service.settings import Settings
from prediction_service.signature import ModelSignature, TensorSpec
from tests.support.asgi import served_app

FAST = PackagingOptions(benchmark_runs=0, validation_rows=32, torchscript=False, state_dict=False)
BRIEF = patchtst.PatchTSTPlan(steps=5, train_rows=128)


@lru_cache(maxsize=1)
def _trained() -> patchtst.TrainedPatchTST:
    return patchtst.train(BRIEF)


def test_the_forecaster_is_a_small_patchtst_with_a_horizon_output():
    from transformers import PatchTSTForPrediction

    trained = _trained()
    assert isinstance(trained.model.patchtst, PatchTSTForPrediction)
    assert 1_000 <= trained.parameters <= 100_000
    windows = patchtst.validation_rows(5, seed=3)["ohlcv"]
    with torch.no_grad():
        forecast = trained.model(torch.from_numpy(windows)).numpy()
    assert forecast.shape == (5, patchtst.HORIZON) and np.isfinite(forecast).all()


def test_the_gather_patchify_equals_patchtsts_own():
    from transformers import PatchTSTConfig
    from transformers.models.patchtst.modeling_patchtst import PatchTSTPatchify

    windows = torch.from_numpy(patchtst.validation_rows(4, seed=5)["ohlcv"])
    own = PatchTSTPatchify(PatchTSTConfig(num_input_channels=5, context_length=patchtst.CONTEXT,
                                          patch_length=patchtst.PATCH, patch_stride=patchtst.PATCH))
    assert torch.equal(_trained().model.patchtst.model.patchifier(windows), own(windows))


def test_targets_are_the_next_closes_over_the_last_close():
    data = patchtst.dataset(3, seed=9)
    series = synthetic_ohlcv(3 + patchtst.CONTEXT + patchtst.HORIZON, seed=9)
    row = 2
    last = series[row + patchtst.CONTEXT - 1, 3]
    expected = series[row + patchtst.CONTEXT: row + patchtst.CONTEXT + patchtst.HORIZON, 3] / last
    np.testing.assert_allclose(data.targets[row], expected, rtol=1e-6)


def test_a_horizon_must_match_every_output():
    step = patchtst.bars_step()
    with pytest.raises(ValidationError, match="horizon 4"):
        ModelSignature(inputs=[TensorSpec(name="ohlcv", dtype="float32", shape=(-1, patchtst.CONTEXT, 5))],
                       outputs=[TensorSpec(name="forecast", dtype="float32", shape=(-1, 8))], horizon=4, bars=step)
    with pytest.raises(ValidationError, match="horizon"):
        ModelSignature(inputs=[TensorSpec(name="x", dtype="float32", shape=(-1, 3))],
                       outputs=[TensorSpec(name="y", dtype="float32", shape=(-1,))], horizon=1)
    assert patchtst.signature().horizon == patchtst.HORIZON


async def test_packaged_onnx_matches_pytorch_and_is_served_from_raw_bars(tmp_path: Path):
    trained = _trained()
    request = PackagingRequest(name=patchtst.NAME, version="1.0.0", signature=patchtst.signature())
    result = package_model(trained.model, request, tmp_path, FAST, validation_inputs=patchtst.validation_rows(32, 7))
    assert [v.variant for v in result.validations if v.passed] == ["onnx-fp32"]
    ModelRegistry(tmp_path).promote(patchtst.NAME, "1.0.0", "production", actor="test")
    version = RegistryReader(tmp_path).get(patchtst.NAME, "1.0.0")
    assert version.signature.horizon == patchtst.HORIZON and version.signature.bars == patchtst.bars_step()

    bars = bar_windows(synthetic_ohlcv(200, seed=21), 3, patchtst.CONTEXT + 10)  # more bars than the step reads
    windows = preprocess_bars(patchtst.bars_step(), bars)
    session = ort.InferenceSession(str(version.artifact_path(version.artifact(("onnx",)))),
                                   providers=["CPUExecutionProvider"])
    (onnx_forecast,) = session.run(None, {"ohlcv": windows})
    with torch.no_grad():
        torch_forecast = trained.model(torch.from_numpy(windows)).numpy()
    assert onnx_forecast.shape == (3, patchtst.HORIZON)
    np.testing.assert_allclose(onnx_forecast, torch_forecast, atol=1e-5)

    async with served_app(Settings(model_store=tmp_path)) as (_, http):
        response = await http.post(f"/v1/models/{patchtst.NAME}/predict", json={"bars": bars.tolist()})
    assert response.status_code == 200, response.text
    served = np.asarray(response.json()["predictions"], dtype=np.float32)
    np.testing.assert_allclose(served, onnx_forecast, atol=1e-5)
