"""TritonAdapter against a real tritonserver (nvidia-pytriton's), over HTTP and gRPC."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as httpclient

from prediction_service.adapters.triton import TritonAdapter
from prediction_service.commands.servers.ports import free_port
from prediction_service.commands.servers.triton import LocalTriton, TritonNotInstalled
from prediction_service.errors import (
    BackendTimeout,
    BackendUnavailable,
    DeadlineExceeded,
    ModelLoadError,
    ModelNotFound,
)
from prediction_service.registry import ModelKey, ModelVersion, VersionMetadata
from prediction_service.registry.fsutil import sha256_file
from prediction_service.registry.writer import ArtifactSource, register_version
from prediction_service.settings import Settings, TritonSettings, WarmupSettings

from tests.support.triton_fixtures import start_local_triton, triton_settings
from tests.support.triton_models import PRICE_SIGNATURE, price_batch, register_price_version

pytestmark = pytest.mark.triton

PROTOCOLS = [pytest.param(False, id="http"), pytest.param(True, id="grpc")]

SLOW_MODEL = '''
import time
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        time.sleep(2.0)
        responses = []
        for request in requests:
            rows = pb_utils.get_input_tensor_by_name(request, "features").as_numpy().shape[0]
            zeros = np.zeros((rows, 3), dtype=np.float32)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("prediction", zeros)]))
        return responses
'''


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("registry")


@pytest.fixture(scope="session")
def price_version(registry: Path, tmp_path_factory: pytest.TempPathFactory) -> ModelVersion:
    return register_price_version(registry, "lstm-price", "1.0.0", tmp_path_factory.mktemp("onnx"))


def reference(version: ModelVersion, inputs: dict[str, np.ndarray]) -> np.ndarray:
    session = ort.InferenceSession(str(version.path / "model.onnx"), providers=["CPUExecutionProvider"])
    return session.run(["prediction"], inputs)[0]


@pytest.fixture(params=PROTOCOLS)
async def adapter(
    request: pytest.FixtureRequest, shared_triton: LocalTriton, registry: Path
) -> AsyncIterator[TritonAdapter]:
    adapter = TritonAdapter(triton_settings(shared_triton, registry, use_grpc=request.param))
    yield adapter
    await adapter.close()


async def test_load_predict_matches_onnxruntime(adapter: TritonAdapter, price_version: ModelVersion) -> None:
    loaded = await adapter.load(price_version)
    batch = price_batch(rows=7)

    outputs = await adapter.predict(price_version.key, batch)

    assert outputs["prediction"].shape == (7, 3) and outputs["prediction"].dtype == np.float32
    np.testing.assert_allclose(outputs["prediction"], reference(price_version, batch), atol=1e-5, rtol=0)
    assert loaded.backend == "triton" and loaded.precision == "fp32" and loaded.artifact.format == "onnx"
    assert loaded.artifact.sha256 == sha256_file(price_version.path / "model.onnx")
    assert [m.key for m in adapter.loaded()] == [price_version.key]


async def test_entry_written_to_repository(adapter: TritonAdapter, price_version: ModelVersion) -> None:
    await adapter.load(price_version)

    entry = adapter.repository / "lstm-price__1.0.0"
    assert (entry / "config.pbtxt").read_text().count('backend: "python"') == 1
    assert (entry / "1" / "model.py").is_file()
    assert sha256_file(entry / "1" / "model.onnx") == sha256_file(price_version.path / "model.onnx")


async def test_load_is_idempotent(adapter: TritonAdapter, price_version: ModelVersion) -> None:
    first = await adapter.load(price_version)
    second = await adapter.load(price_version)
    assert first is second and len(adapter.loaded()) == 1


async def test_concurrent_predicts_each_get_their_own_rows(adapter: TritonAdapter, price_version: ModelVersion) -> None:
    await adapter.load(price_version)
    batches = [price_batch(rows=1 + i % 5, seed=i) for i in range(32)]

    results = await asyncio.gather(*(adapter.predict(price_version.key, b) for b in batches))

    for batch, result in zip(batches, results):
        np.testing.assert_allclose(result["prediction"], reference(price_version, batch), atol=1e-5, rtol=0)
    stats = (await adapter.describe(price_version.key))["statistics"]["model_stats"][0]
    assert int(stats["inference_count"]) >= sum(b["scale"].shape[0] for b in batches)


@pytest.mark.parametrize("enabled", [True, False])
async def test_triton_runs_the_warmup_before_the_model_is_ready(
    shared_triton: LocalTriton, registry: Path, price_version: ModelVersion, enabled: bool
) -> None:
    warmup = WarmupSettings(enabled=enabled, batch_sizes="1,8", iterations=2)
    adapter = TritonAdapter(triton_settings(shared_triton, registry).model_copy(update={"warmup": warmup}))
    try:
        await adapter.load(price_version)  # returns once Triton says ready, model_warmup included
        stats = (await adapter.describe(price_version.key))["statistics"]["model_stats"][0]
        runs = {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in stats.get("batch_stats", [])}
        assert runs == ({1: 2, 8: 2} if enabled else {})
    finally:
        await adapter.close()


async def test_describe_reports_triton_metadata(adapter: TritonAdapter, price_version: ModelVersion) -> None:
    await adapter.load(price_version)

    described = await adapter.describe(price_version.key)

    assert described["triton_model"] == "lstm-price__1.0.0"
    metadata = described["metadata"]
    assert [t["name"] for t in metadata["inputs"]] == ["features", "scale"]
    assert [int(d) for d in metadata["inputs"][0]["shape"]] == [-1, 6, 4]


async def test_unknown_key_raises_model_not_found(adapter: TritonAdapter) -> None:
    with pytest.raises(ModelNotFound):
        await adapter.predict(ModelKey("nope", "1.0.0"), price_batch(1))
    with pytest.raises(ModelNotFound):
        await adapter.describe(ModelKey("nope", "1.0.0"))


async def test_unload_removes_model_and_entry(adapter: TritonAdapter, price_version: ModelVersion) -> None:
    await adapter.load(price_version)

    await adapter.unload(price_version.key)

    assert adapter.loaded() == []
    assert not (adapter.repository / "lstm-price__1.0.0").exists()
    with pytest.raises(ModelNotFound):
        await adapter.predict(price_version.key, price_batch(1))
    await adapter.unload(price_version.key)  # unknown key: no-op


async def test_health_reports_ready_server(adapter: TritonAdapter, price_version: ModelVersion) -> None:
    await adapter.load(price_version)
    health = await adapter.health()
    assert health.healthy and health.backend == "triton"


async def test_expired_deadline_is_refused(adapter: TritonAdapter, price_version: ModelVersion) -> None:
    await adapter.load(price_version)
    with pytest.raises(DeadlineExceeded):
        await adapter.predict(price_version.key, price_batch(1), deadline=0.0)


async def test_unbatched_config_loads_and_serves(
    shared_triton: LocalTriton, registry: Path, price_version: ModelVersion
) -> None:
    adapter = TritonAdapter(triton_settings(shared_triton, registry, max_batch_size=0))
    try:
        await adapter.load(price_version)
        batch = price_batch(rows=3)
        outputs = await adapter.predict(price_version.key, batch)
        np.testing.assert_allclose(outputs["prediction"], reference(price_version, batch), atol=1e-5, rtol=0)
        config = httpclient.InferenceServerClient(shared_triton.http_url).get_model_config("lstm-price__1.0.0")
        assert config["max_batch_size"] == 0 and "dynamic_batching" not in config
    finally:
        await adapter.close()


async def test_batched_config_is_what_triton_runs(adapter: TritonAdapter, price_version: ModelVersion,
                                                  shared_triton: LocalTriton) -> None:
    await adapter.load(price_version)
    config = httpclient.InferenceServerClient(shared_triton.http_url).get_model_config("lstm-price__1.0.0")
    assert config["max_batch_size"] == 32 and config["backend"] == "python"
    assert config["dynamic_batching"]["preferred_batch_size"] == [16, 32]
    assert [i["dims"] for i in config["input"]] == [[6, 4], [1]]


async def test_broken_artifact_fails_load_cleanly(
    shared_triton: LocalTriton, registry: Path, tmp_path: Path
) -> None:
    garbage = tmp_path / "model.onnx"
    garbage.write_bytes(b"not an onnx file")
    metadata = VersionMetadata(name="broken", version="1.0.0", signature=PRICE_SIGNATURE)
    version = register_version(registry, metadata, [ArtifactSource(garbage, "onnx")])
    adapter = TritonAdapter(triton_settings(shared_triton, registry))
    try:
        with pytest.raises(ModelLoadError):
            await adapter.load(version)
        assert adapter.loaded() == []
        assert not (adapter.repository / "broken__1.0.0").exists()
    finally:
        await adapter.close()


async def test_slow_triton_raises_backend_timeout(
    shared_triton: LocalTriton, registry: Path, price_version: ModelVersion
) -> None:
    adapter = TritonAdapter(triton_settings(shared_triton, registry, timeout_seconds=0.5))
    try:
        await adapter.load(price_version)
        # Swap in a model that sleeps longer than the timeout, as an overloaded Triton would.
        (adapter.repository / "lstm-price__1.0.0" / "1" / "model.py").write_text(SLOW_MODEL)
        httpclient.InferenceServerClient(shared_triton.http_url).load_model("lstm-price__1.0.0")

        with pytest.raises(BackendTimeout):
            await adapter.predict(price_version.key, price_batch(2))
    finally:
        await adapter.close()


async def until(condition: Callable[[], bool], guard_seconds: float = 20.0) -> None:
    """Wait for ``condition``; the guard only turns a hang into a failure, it measures nothing."""

    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.02)

    await asyncio.wait_for(poll(), guard_seconds)


@pytest.mark.parametrize("use_grpc", PROTOCOLS)
async def test_triton_death_fails_fast_and_restart_recovers(
    use_grpc: bool, registry: Path, price_version: ModelVersion, tmp_path: Path
) -> None:
    server = start_local_triton(tmp_path / "repo")
    # A long timeout: a dead server must be reported at once, not after waiting this out.
    adapter = TritonAdapter(triton_settings(server, registry, use_grpc=use_grpc, timeout_seconds=60))
    restarted: LocalTriton | None = None
    try:
        await adapter.load(price_version)
        batch = price_batch(rows=4)
        expected = reference(price_version, batch)
        stop = asyncio.Event()
        failures: list[BackendUnavailable] = []
        successes = 0

        async def traffic() -> None:
            nonlocal successes
            while not stop.is_set():
                try:
                    await adapter.predict(price_version.key, batch)
                    successes += 1
                except BackendUnavailable as exc:  # a BackendTimeout (a hang) fails the test
                    failures.append(exc)
                await asyncio.sleep(0.01)

        workers = [asyncio.create_task(traffic()) for _ in range(4)]
        await until(lambda: successes >= 20)
        server.kill()
        await until(lambda: len(failures) >= 8)
        stop.set()
        await asyncio.wait_for(asyncio.gather(*workers), timeout=20)  # guards against a hang only

        assert all("cannot reach Triton" in f.message for f in failures[-4:])
        health = await adapter.health()
        assert not health.healthy

        restarted = start_local_triton(
            server.model_repository, http_port=server.http_port, grpc_port=server.grpc_port,
            metrics_port=server.metrics_port,
        )
        outputs = await adapter.predict(price_version.key, batch)  # the same adapter, no new one
        np.testing.assert_allclose(outputs["prediction"], expected, atol=1e-5, rtol=0)
        assert (await adapter.health()).healthy
    finally:
        await adapter.close()
        for process in (server, restarted):
            if process is not None:
                process.stop()


async def test_health_reloads_models_a_restarted_triton_lost(
    registry: Path, price_version: ModelVersion, tmp_path: Path
) -> None:
    server = start_local_triton(tmp_path / "repo")
    adapter = TritonAdapter(triton_settings(server, registry))
    restarted: LocalTriton | None = None
    try:
        await adapter.load(price_version)
        server.kill()
        assert not (await adapter.health()).healthy
        restarted = start_local_triton(
            server.model_repository, http_port=server.http_port, grpc_port=server.grpc_port,
            metrics_port=server.metrics_port,
        )
        first = await adapter.health()
        assert not first.healthy and "reloading" in first.detail  # Triton came back empty

        async def healthy() -> None:
            while not (await adapter.health()).healthy:
                await asyncio.sleep(0.1)

        await asyncio.wait_for(healthy(), 30)  # guards against a hang only
        # Reloaded in the background, before any prediction asked for it.
        assert httpclient.InferenceServerClient(restarted.http_url).is_model_ready("lstm-price__1.0.0")
    finally:
        await adapter.close()
        for process in (server, restarted):
            if process is not None:
                process.stop()


async def test_unreachable_triton_is_unavailable_not_a_hang(
    registry: Path, price_version: ModelVersion, tmp_path: Path
) -> None:
    settings = Settings(model_store=registry, triton=TritonSettings(
        server_url=f"127.0.0.1:{free_port()}", model_repository=tmp_path / "repo", timeout_seconds=60,
    ))
    adapter = TritonAdapter(settings)
    try:
        health = await adapter.health()
        assert not health.healthy and "cannot reach Triton" in health.detail
        with pytest.raises(BackendUnavailable, match="cannot reach Triton"):
            await adapter.load(price_version)
        assert adapter.loaded() == [] and list((tmp_path / "repo").iterdir()) == []
    finally:
        await adapter.close()


def test_local_triton_reports_a_failed_start(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        try:
            server = LocalTriton(tmp_path / "repo", http_port=taken.getsockname()[1])
        except TritonNotInstalled as exc:
            pytest.skip(f"tritonserver binary not available: {exc}")
        with pytest.raises(RuntimeError, match="exited with code"):
            server.start()
    assert not server.running()


async def test_a_model_two_workers_share_stays_loaded_until_the_last_lets_go(
    shared_triton: LocalTriton, registry: Path, price_version: ModelVersion
) -> None:
    settings = triton_settings(shared_triton, registry)
    worker_a, worker_b = TritonAdapter(settings), TritonAdapter(settings)
    client = httpclient.InferenceServerClient(shared_triton.http_url)
    try:
        loaded = await worker_a.load(price_version)
        await worker_b.load(price_version)
        name = loaded.details["triton_model"]

        await worker_a.unload(price_version.key)  # e.g. worker a's LRU evicted it
        assert client.is_model_ready(name), "worker a pulled the model from under worker b"
        assert (worker_b.repository / name).is_dir()
        batch = price_batch(rows=3)
        got = await worker_b.predict(price_version.key, batch)
        np.testing.assert_allclose(got["prediction"], reference(price_version, batch), rtol=1e-5, atol=1e-5)

        await worker_b.unload(price_version.key)
        assert not client.is_model_ready(name)
        assert not (worker_b.repository / name).exists()
    finally:
        client.close()
        await worker_a.close()
        await worker_b.close()
