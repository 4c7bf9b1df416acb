"""TorchScript adapter on the zoo models: compiles a state dict on load, caches it, matches ONNX Runtime."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from prediction_service.adapters.simple import SimpleAdapter
from prediction_service.adapters.torchscript import TorchScriptAdapter, compiled_path
from prediction_service.modelzoo.datasets import dataset_for
from prediction_service.registry import RegistryReader
from prediction_service.settings import Settings

ZOO = [("lstm-price", "lstm_price"), ("cnn-lstm-direction", "cnn_lstm_direction"),
       ("sentiment-transformer", "sentiment_transformer")]


@pytest.fixture
def store(demo_store, tmp_path):
    root = tmp_path / "store"
    shutil.copytree(demo_store, root, symlinks=True)
    return root


@pytest.mark.parametrize("name, architecture", ZOO)
async def test_compiles_caches_and_matches_onnx(store, name, architecture):
    settings = Settings(model_store=store)
    version = RegistryReader(store).resolve(name)
    inputs = dataset_for(architecture, 3, seed=11).inputs
    source = version.artifact(("state_dict",))
    cache = compiled_path(version, source)
    assert not cache.exists()

    compiled = TorchScriptAdapter(settings)
    loaded = await compiled.load(version)
    assert loaded.artifact.format == "state_dict" and loaded.backend == "torchscript"
    assert cache.is_file()
    stamp = cache.stat().st_mtime_ns
    got = await compiled.predict(version.key, inputs)
    await compiled.close()

    again = TorchScriptAdapter(settings)  # a second worker: loads the cached archive, compiles nothing
    await again.load(version)
    assert cache.stat().st_mtime_ns == stamp
    np.testing.assert_allclose(next(iter((await again.predict(version.key, inputs)).values())),
                               next(iter(got.values())), rtol=1e-5, atol=1e-6)
    await again.close()

    reference = SimpleAdapter(settings)
    await reference.load(version)
    expected = await reference.predict(version.key, inputs)
    await reference.close()
    for output in expected:
        np.testing.assert_allclose(got[output], expected[output], rtol=1e-4, atol=1e-5)
