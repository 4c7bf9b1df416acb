"""The ServingAdapter contract, run against every backend in backends.BACKENDS."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from prediction_service.errors import ModelNotFound
from prediction_service.registry import ModelKey, RegistryReader
from prediction_service.settings import SimpleSettings

from .backends import BACKENDS

X = np.array([[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 0.0, 1.0]], dtype=np.float32)


@pytest.fixture(params=sorted(BACKENDS))
async def adapter(request, settings):
    factory, server_fixture = BACKENDS[request.param]
    servers = [request.getfixturevalue(server_fixture)] if server_fixture else []
    async with factory(settings, *servers) as adapter:
        yield adapter


@pytest.fixture
def reader(tiny_store):
    return RegistryReader(tiny_store)


async def test_load_predict_unload(adapter, reader):
    version = reader.resolve("tiny-regressor")
    loaded = await adapter.load(version)
    assert loaded.key == ModelKey("tiny-regressor", "1.0.0")
    assert loaded.artifact.sha256 in {a.sha256 for a in version.metadata.artifacts}
    assert adapter.is_loaded(loaded.key)
    out = await adapter.predict(loaded.key, {"x": X})
    assert set(out) == {"y"} and out["y"].dtype == np.float32
    np.testing.assert_allclose(out["y"], [[31.0], [5.0]], rtol=1e-5)
    await adapter.unload(loaded.key)
    assert not adapter.is_loaded(loaded.key)
    with pytest.raises(ModelNotFound):
        await adapter.predict(loaded.key, {"x": X})


async def test_load_is_idempotent_and_versions_coexist(adapter, reader):
    v1, v2 = reader.get("tiny-regressor", "1.0.0"), reader.get("tiny-regressor", "2.0.0")
    first = await adapter.load(v1)
    assert (await adapter.load(v1)).key == first.key
    await adapter.load(v2)
    assert {m.key.version for m in adapter.loaded() if m.key.name == "tiny-regressor"} == {"1.0.0", "2.0.0"}
    a, b = await asyncio.gather(adapter.predict(v1.key, {"x": X}), adapter.predict(v2.key, {"x": X}))
    np.testing.assert_allclose(b["y"], a["y"] * 2, rtol=1e-5)


async def test_concurrent_predictions_route_back_correctly(adapter, reader):
    version = reader.resolve("tiny-regressor")
    await adapter.load(version)
    rows = [np.array([[float(i), 0, 0, 0]], dtype=np.float32) for i in range(25)]
    outs = await asyncio.gather(*(adapter.predict(version.key, {"x": r}) for r in rows))
    assert [float(o["y"][0, 0]) for o in outs] == pytest.approx([1.0 + i for i in range(25)])


async def test_unknown_key_is_model_not_found(adapter):
    with pytest.raises(ModelNotFound):
        await adapter.predict(ModelKey("nope", "1.0.0"), {"x": X})
    await adapter.unload(ModelKey("nope", "1.0.0"))  # no-op


async def test_health(adapter):
    health = await adapter.health()
    assert health.healthy and health.backend == adapter.name


async def test_classifier_outputs(adapter, reader):
    version = reader.resolve("tiny-classifier")
    await adapter.load(version)
    out = await adapter.predict(version.key, {"x": X})
    assert out["probabilities"].shape == (2, 3)
    np.testing.assert_allclose(out["probabilities"].sum(axis=1), 1.0, atol=1e-5)


async def test_lru_eviction_and_idle_unload(settings, reader):
    from .backends import simple_onnx

    limited = settings.model_copy(update={"simple": SimpleSettings(max_models_in_memory=2, model_timeout_seconds=0.2)})
    async with simple_onnx(limited) as adapter:
        v1, v2 = reader.get("tiny-regressor", "1.0.0"), reader.get("tiny-regressor", "2.0.0")
        clf = reader.get("tiny-classifier", "1.0.0")
        await adapter.load(v1)
        await adapter.load(v2)
        await adapter.predict(v1.key, {"x": X})  # v1 most recently used
        await adapter.load(clf)
        assert {m.key for m in adapter.loaded()} == {v1.key, clf.key}  # v2 evicted
        await asyncio.sleep(0.8)
        assert adapter.loaded() == []  # idle unload


async def test_tampered_artifact_refused(settings, reader, tiny_store):
    from prediction_service.errors import ModelLoadError

    from .backends import simple_onnx

    path = tiny_store / "tiny-regressor" / "v2.0.0" / "model.onnx"
    path.write_bytes(path.read_bytes() + b"\0")
    async with simple_onnx(settings) as adapter:
        with pytest.raises(ModelLoadError, match="sha256"):
            await adapter.load(reader.get("tiny-regressor", "2.0.0"))
