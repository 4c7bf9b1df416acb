"""TorchServeAdapter against a real TorchServe started on loopback (LocalTorchServe)."""

from __future__ import annotations

import asyncio
import time

import httpx
import numpy as np
import pytest
import torch

from prediction_service.adapters.torchserve import TorchServeAdapter
from prediction_service.commands.servers.torchserve import LocalTorchServe
from prediction_service.errors import (
    BackendTimeout,
    BackendUnavailable,
    DeadlineExceeded,
    InvalidInput,
    ModelNotFound,
    Overloaded,
)
from prediction_service.packaging.torchserve_mar import mar_path, served_model_name
from prediction_service.registry import ModelKey
from prediction_service.settings import WarmupSettings
from tests.support.torchserve_fixtures import _require_torchserve, torchserve_settings
from tests.support.torchserve_models import FEATURES, SEQ_LEN, build_scripted_model, register_tiny

pytestmark = pytest.mark.torchserve


def rows(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, SEQ_LEN, FEATURES)).astype(np.float32)


def reference(scripted, features: np.ndarray) -> dict[str, np.ndarray]:
    with torch.inference_mode():
        prediction, hidden = scripted(torch.from_numpy(features))
    return {"prediction": prediction.numpy(), "hidden": hidden.numpy()}


def assert_matches(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert set(got) == set(want)
    for name in want:
        assert got[name].shape == want[name].shape, name
        assert got[name].dtype == np.float32
        np.testing.assert_allclose(got[name], want[name], atol=1e-5, rtol=0)


@pytest.fixture
async def adapter(tiny_registry, shared_torchserve):
    root, _, _ = tiny_registry
    adapter = TorchServeAdapter(torchserve_settings(root, shared_torchserve))
    yield adapter
    await adapter.close()


async def test_load_predict_unload(adapter, tiny_registry, shared_torchserve):
    _, version, scripted = tiny_registry
    loaded = await adapter.load(version)
    assert loaded.artifact.format == "torchscript"
    assert await adapter.load(version) is loaded  # idempotent
    assert mar_path(shared_torchserve.model_store, version.key).is_file()
    assert (await adapter.health()).healthy

    features = rows(5, seed=1)
    assert_matches(await adapter.predict(version.key, {"features": features}), reference(scripted, features))

    description = await adapter.describe(version.key)
    assert description["status"] == "READY"
    assert any(w["status"] == "READY" for w in description["workers"])
    assert description["max_workers"] == adapter.config.max_workers

    await adapter.unload(version.key)
    assert adapter.loaded() == []
    assert not mar_path(shared_torchserve.model_store, version.key).exists()
    with pytest.raises(ModelNotFound):
        await adapter.predict(version.key, {"features": features})
    await adapter.unload(version.key)  # unknown key: no-op


async def test_workers_warm_up_before_they_report_ready(tiny_registry, shared_torchserve):
    root, version, scripted = tiny_registry
    served = served_model_name(version.key)
    warm = torchserve_settings(root, shared_torchserve).model_copy(update={"warmup": WarmupSettings(enabled=True)})
    adapter = TorchServeAdapter(warm)  # tests run without warm-up unless they test it

    def warm_ups() -> int:
        log = shared_torchserve.log_dir / "model_log.log"
        lines = log.read_text(errors="replace").splitlines() if log.exists() else []
        return sum(served in line and "warmed up: 2 batches x 3 runs" in line for line in lines)

    before = warm_ups()
    try:
        await adapter.load(version)  # registration returns once the worker is ready, warm-up included
        assert warm_ups() > before
        features = rows(3, seed=21)
        assert_matches(await adapter.predict(version.key, {"features": features}), reference(scripted, features))
    finally:
        await adapter.close()


async def test_concurrent_predicts_are_batched_server_side(adapter, tiny_registry):
    _, version, scripted = tiny_registry
    await adapter.load(version)
    inputs = [rows(1 + i % 3, seed=100 + i) for i in range(32)]
    results = await asyncio.gather(*[adapter.predict(version.key, {"features": x}) for x in inputs])
    for features, result in zip(inputs, results):  # each caller gets its own rows back
        assert_matches(result, reference(scripted, features))
    description = await adapter.describe(version.key)
    assert description["max_observed_server_batch_requests"] > 1, "TorchServe never merged requests"
    await adapter.unload(version.key)


async def test_unknown_key_is_model_not_found(adapter):
    with pytest.raises(ModelNotFound):
        await adapter.predict(ModelKey("nope", "1.0.0"), {"features": rows(1, 0)})
    with pytest.raises(ModelNotFound):
        await adapter.describe(ModelKey("nope", "1.0.0"))


async def test_bad_shape_is_rejected_by_the_handler(adapter, tiny_registry):
    _, version, _ = tiny_registry
    await adapter.load(version)
    with pytest.raises(InvalidInput, match="shape"):
        await adapter.predict(version.key, {"features": np.zeros((2, SEQ_LEN + 1, FEATURES), np.float32)})
    await adapter.unload(version.key)


async def test_slow_backend_times_out(tiny_registry, shared_torchserve, tmp_path):
    """TorchServe holds a lone request for max_batch_delay waiting for a batch to fill: a slow backend."""
    root, _, _ = tiny_registry
    _, artifact = build_scripted_model(tmp_path, seed=2)
    slow_version = register_tiny(root, artifact, version="2.0.0-slow")
    settings = torchserve_settings(root, shared_torchserve, batch_size=8, max_batch_delay=3000, timeout_seconds=0.5)
    adapter = TorchServeAdapter(settings)
    try:
        await adapter.load(slow_version)
        with pytest.raises(BackendTimeout):
            await adapter.predict(slow_version.key, {"features": rows(1, 3)})
        with pytest.raises(DeadlineExceeded) as caught:
            await adapter.predict(slow_version.key, {"features": rows(1, 3)}, deadline=time.monotonic() + 0.2)
        assert caught.value.code == "deadline_exceeded"  # the caller's deadline, not the backend timeout
    finally:
        await adapter.unload(slow_version.key)
        await adapter.close()


async def test_token_auth_with_real_key_file(tiny_registry, tmp_path):
    _require_torchserve()
    root, version, scripted = tiny_registry
    with LocalTorchServe(tmp_path / "store", tmp_path / "work", token_auth=True) as server:
        assert server.key_file.is_file()
        without_token = TorchServeAdapter(torchserve_settings(root, server))
        try:
            health = await without_token.health()
            assert not health.healthy
            with pytest.raises(BackendUnavailable, match="token"):
                await without_token.load(version)
        finally:
            await without_token.close()

        adapter = TorchServeAdapter(torchserve_settings(root, server, key_file=server.key_file))
        try:
            assert (await adapter.health()).healthy
            await adapter.load(version)
            features = rows(3, seed=7)
            assert_matches(await adapter.predict(version.key, {"features": features}), reference(scripted, features))
            await adapter.unload(version.key)
        finally:
            await adapter.close()


@pytest.mark.parametrize("noticed_by", ["health check", "request"])
async def test_recovers_after_torchserve_restart(tiny_registry, tmp_path, noticed_by):
    _require_torchserve()
    root, version, scripted = tiny_registry
    server = LocalTorchServe(tmp_path / "store", tmp_path / "work", token_auth=False).start()
    adapter = TorchServeAdapter(torchserve_settings(root, server, timeout_seconds=2.0))
    try:
        await adapter.load(version)
        features = rows(2, seed=11)
        want = reference(scripted, features)

        async def traffic(stop: asyncio.Event) -> list[BaseException]:
            errors: list[BaseException] = []
            while not stop.is_set():
                try:
                    await adapter.predict(version.key, {"features": features})
                except (BackendUnavailable, BackendTimeout) as exc:
                    errors.append(exc)
                    await asyncio.sleep(0.01)
            return errors

        stop = asyncio.Event()
        clients = [asyncio.create_task(traffic(stop)) for _ in range(4)]
        await asyncio.sleep(0.3)
        await asyncio.to_thread(server.kill)  # crash mid-traffic
        await asyncio.sleep(0.3)
        stop.set()
        errors = [e for batch in await asyncio.gather(*clients) for e in batch]
        assert errors and all(isinstance(e, BackendUnavailable) for e in errors)
        with pytest.raises(BackendUnavailable, match="cannot reach TorchServe"):
            await adapter.predict(version.key, {"features": features})
        assert not (await adapter.health()).healthy

        # Same ports, same model store, but a TorchServe that knows no model.
        restarted = LocalTorchServe(server.model_store, tmp_path / "work2", ports=server.ports, token_auth=False)
        await asyncio.to_thread(restarted.start)
        server = restarted
        if noticed_by == "request":  # the request registers the model again and is answered
            assert_matches(await adapter.predict(version.key, {"features": features}), want)
            assert (await adapter.health()).healthy
            return
        # The health check notices, reports not ready and registers it again before any request needs it.
        first = await adapter.health()
        assert not first.healthy and "lost" in first.detail, first.detail
        deadline = time.monotonic() + 60  # a hang guard only
        while not (await adapter.health()).healthy:
            assert time.monotonic() < deadline, "the adapter never registered the lost model again"
            await asyncio.sleep(0.2)
        async with httpx.AsyncClient(base_url=server.management_url) as management:
            remote = (await management.get(f"/models/{served_model_name(version.key)}")).json()
        assert any(w["status"] == "READY" for w in remote[0]["workers"])
        assert_matches(await adapter.predict(version.key, {"features": features}), want)
        assert (await adapter.describe(version.key))["status"] == "READY"
    finally:
        await adapter.close()
        server.stop()


async def test_full_job_queue_is_overloaded(tiny_registry, tmp_path):
    """TorchServe answers 503 once a model's job queue is full; the adapter says Overloaded."""
    _require_torchserve()
    root, version, scripted = tiny_registry
    with LocalTorchServe(tmp_path / "store", tmp_path / "work", token_auth=False, job_queue_size=1) as server:
        adapter = TorchServeAdapter(torchserve_settings(root, server, batch_size=1, max_batch_delay=0,
                                                        default_workers=1, max_workers=1))
        try:
            await adapter.load(version)
            features = rows(4, seed=5)
            outcomes = await asyncio.gather(
                *[adapter.predict(version.key, {"features": features}) for _ in range(64)], return_exceptions=True)
            shed = [o for o in outcomes if isinstance(o, BaseException)]
            served = [o for o in outcomes if not isinstance(o, BaseException)]
            assert shed and all(isinstance(e, Overloaded) for e in shed), {type(e).__name__ for e in shed}
            assert served
            for result in served:
                assert_matches(result, reference(scripted, features))
        finally:
            await adapter.close()


async def test_a_model_two_workers_share_stays_registered_until_the_last_lets_go(tiny_registry, shared_torchserve):
    root, version, scripted = tiny_registry
    settings = torchserve_settings(root, shared_torchserve)
    worker_a, worker_b = TorchServeAdapter(settings), TorchServeAdapter(settings)
    try:
        await worker_a.load(version)
        await worker_b.load(version)
        await worker_a.unload(version.key)  # e.g. worker a's LRU evicted it
        assert mar_path(shared_torchserve.model_store, version.key).is_file()
        assert (await worker_b.describe(version.key))["status"] == "READY"
        features = rows(2, seed=5)
        assert_matches(await worker_b.predict(version.key, {"features": features}), reference(scripted, features))

        await worker_b.unload(version.key)
        assert not mar_path(shared_torchserve.model_store, version.key).exists()
        served = served_model_name(version.key)
        async with httpx.AsyncClient(base_url=shared_torchserve.management_url) as management:
            assert (await management.get(f"/models/{served}")).status_code == 404
    finally:
        await worker_a.close()
        await worker_b.close()


async def test_health_stays_true_while_models_are_unregistered(adapter, tiny_registry):
    """TorchServe 0.12 never answers a /ping that arrives during an unregistration (an NPE on the emptied
    model entry); readiness must not flip to 'down' because of it. A /ping-based check fails here."""
    _, version, _ = tiny_registry
    for _ in range(3):
        await adapter.load(version)
        unload = asyncio.create_task(adapter.unload(version.key))
        checks = []
        while not unload.done():  # health checks race the DELETE, as a readiness probe can
            checks.append(asyncio.create_task(adapter.health()))
            await asyncio.sleep(0.001)
        await unload
        results = await asyncio.gather(*checks)
        assert checks and all(h.healthy for h in results), [h.detail for h in results if not h.healthy]
