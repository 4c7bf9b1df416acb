"""A one-step model declaring a rollout step: the server feeds each prediction back as the window's newest step for
``n_steps`` runs; its answer equals the same loop run by hand over the registered ONNX file (and over PyTorch)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from pydantic import ValidationError
from torch import nn

from prediction_service.modelzoo import patchtst
from prediction_service.packaging.pipeline import PackagingOptions, PackagingRequest, package_model
from prediction_service.registry import RegistryReader
from prediction_service.registry.store import ModelRegistry
from prediction_service.settings import Settings
from prediction_service.signature import ModelSignature, RolloutStep, TensorSpec
from tests.support.asgi import served_app

FAST = PackagingOptions(benchmark_runs=0, validation_rows=16, torchscript=False, state_dict=False)
NAME, WINDOW, MAX_STEPS = "ar-one-step", 6, 10


class OneStep(nn.Module):
    """The next value from a window of ``WINDOW`` values: a linear autoregression plus a small non-linearity."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.linear = nn.Linear(WINDOW, 1)
        with torch.no_grad():  # weights summing to about 1: a rollout neither explodes nor dies out
            self.linear.weight.copy_(torch.softmax(torch.randn(1, WINDOW), dim=-1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x[..., 0]) + 0.01 * torch.tanh(x[:, -1, :])


def _signature() -> ModelSignature:
    return ModelSignature(inputs=[TensorSpec(name="x", dtype="float32", shape=(-1, WINDOW, 1))],
                          outputs=[TensorSpec(name="y", dtype="float32", shape=(-1, 1))],
                          rollout=RolloutStep(input="x", max_steps=MAX_STEPS))


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("rollout")
    package_model(OneStep(), PackagingRequest(name=NAME, version="1.0.0", signature=_signature()), root, FAST)
    ModelRegistry(root).promote(NAME, "1.0.0", "production", actor="test")
    return root


def _by_hand(run, window: np.ndarray, n_steps: int) -> np.ndarray:
    steps = []
    for _ in range(n_steps):
        value = run(window).reshape(len(window), 1)
        steps.append(value)
        window = np.concatenate([window[:, 1:], value[:, :, None]], axis=1)
    return np.concatenate(steps, axis=1)


async def test_the_served_rollout_equals_the_loop_run_by_hand(store):
    window = np.random.default_rng(4).normal(1.0, 0.1, size=(3, WINDOW, 1)).astype(np.float32)
    version = RegistryReader(store).get(NAME, "1.0.0")
    session = ort.InferenceSession(str(version.artifact_path(version.artifact(("onnx",)))),
                                   providers=["CPUExecutionProvider"])
    onnx_steps = _by_hand(lambda w: session.run(None, {"x": w})[0], window, 7)
    with torch.no_grad():
        torch_steps = _by_hand(lambda w: OneStep()(torch.from_numpy(w)).numpy(), window, 7)
    async with served_app(Settings(model_store=store)) as (_, http):
        seven = await http.post(f"/v1/models/{NAME}/predict", json={"inputs": {"x": window.tolist()}, "n_steps": 7})
        default = await http.post(f"/v1/models/{NAME}/predict", json={"inputs": {"x": window.tolist()}})
        over = await http.post(f"/v1/models/{NAME}/predict",
                               json={"inputs": {"x": window.tolist()}, "n_steps": MAX_STEPS + 1})
    assert seven.status_code == 200, seven.text
    served = np.asarray(seven.json()["outputs"]["y"], dtype=np.float32)
    assert served.shape == (3, 7)
    np.testing.assert_array_equal(served, onnx_steps)
    np.testing.assert_allclose(served, torch_steps, atol=1e-6)
    assert len(set(np.round(served[0], 6))) > 1  # each step really is a new run on the moved window
    assert np.asarray(default.json()["predictions"]).shape == (3, MAX_STEPS)
    np.testing.assert_array_equal(np.asarray(default.json()["outputs"]["y"], dtype=np.float32)[:, :7], served)
    assert over.status_code == 422 and f"forecasts {MAX_STEPS} steps ahead" in over.json()["error"]["message"]


def test_a_rollout_takes_one_window_and_gives_one_value():
    step = RolloutStep(input="x", max_steps=4)
    with pytest.raises(ValidationError, match="rollout window"):
        ModelSignature(inputs=[TensorSpec(name="x", dtype="float32", shape=(-1, WINDOW, 3))],
                       outputs=[TensorSpec(name="y", dtype="float32", shape=(-1, 1))], rollout=step)
    with pytest.raises(ValidationError, match="one value per row"):
        ModelSignature(inputs=[TensorSpec(name="x", dtype="float32", shape=(-1, WINDOW))],
                       outputs=[TensorSpec(name="y", dtype="float32", shape=(-1, 2))], rollout=step)
    with pytest.raises(ValidationError, match="no horizon, bars or text"):
        ModelSignature.model_validate({**patchtst.signature().model_dump(), "horizon": None,
                                       "outputs": [{"name": "y", "dtype": "float32", "shape": [-1, 1]}],
                                       "rollout": {"input": "ohlcv", "max_steps": 4}})
    assert _signature().steps_ahead == MAX_STEPS and patchtst.signature().steps_ahead == patchtst.HORIZON
