"""PredictionClient against the real server (uvicorn subprocess on loopback): predictions, errors, retries, and
the typed management calls (reload, model metadata, metrics, A/B experiments)."""

from __future__ import annotations

import httpx
import pytest

from prediction_service.client import (ClientSettings, ModelMetadata, PredictionClient, ReloadResult, ServerStats,
                                       ServiceCallError)
from tests.support.server import free_port, running_server

ROW = [1.0, 2.0, 3.0, 4.0]


@pytest.fixture(scope="module")
def server_url(tiny_store_template, tmp_path_factory):
    import shutil

    store = tmp_path_factory.mktemp("client") / "store"
    shutil.copytree(tiny_store_template, store, symlinks=True)
    with running_server(store) as (url, _):
        yield url


@pytest.fixture(scope="module")
def limited_server_url(tiny_store_template, tmp_path_factory):
    import shutil

    store = tmp_path_factory.mktemp("client-limited") / "store"
    shutil.copytree(tiny_store_template, store, symlinks=True)
    with running_server(store, env={"RATE_LIMIT_PER_SECOND": "0.5"}) as (url, _):
        yield url


async def test_predictions_match_the_rest_api(server_url):
    direct = httpx.post(f"{server_url}/v1/models/tiny-regressor/predict", json={"instances": [ROW, ROW[::-1]]}).json()
    async with PredictionClient(ClientSettings(server_url)) as client:
        batch = await client.predict("tiny-regressor", instances=[ROW, ROW[::-1]])
        one = await client.predict("tiny-regressor", instance=ROW)
        pinned = await client.predict("tiny-regressor", instance=ROW, version="2.0.0")
        assert await client.ready()
        names = {m["name"] for m in await client.models()}
        detail = await client.model("tiny-classifier")
    assert (batch.model, batch.version, batch.stage) == ("tiny-regressor", "1.0.0", "production")
    assert batch.predictions == direct["predictions"] and batch.outputs == direct["outputs"]
    assert batch.request_id and batch.request_id != direct["request_id"] and batch.provenance.sha256
    assert one.predictions == direct["predictions"][:1]
    assert pinned.version == "2.0.0" and pinned.predictions[0] == pytest.approx(2 * one.predictions[0])
    assert {"tiny-regressor", "tiny-classifier"} <= names and detail["name"] == "tiny-classifier"


async def test_server_errors_come_back_typed_and_are_not_retried(server_url):
    async with PredictionClient(ClientSettings(server_url, retries=3)) as client:
        with pytest.raises(ServiceCallError) as unknown:
            await client.predict("no-such-model", instance=ROW)
        with pytest.raises(ServiceCallError) as bad_shape:
            await client.predict("tiny-regressor", instance=[1.0, 2.0])
        with pytest.raises(ServiceCallError) as no_prediction:
            await client.record_outcome("never-served", actual=1.0)
    assert (unknown.value.status, unknown.value.code, unknown.value.attempts) == (404, "model_not_found", 1)
    assert unknown.value.request_id and not unknown.value.retryable
    assert bad_shape.value.status == 422 and bad_shape.value.attempts == 1
    assert no_prediction.value.status == 404 and no_prediction.value.attempts == 1
    with pytest.raises(ValueError, match="exactly one"):
        await PredictionClient(ClientSettings(server_url)).predict("tiny-regressor", instance=ROW, text="x")


async def test_429_is_waited_out_within_the_budget(limited_server_url):
    """RATE_LIMIT_PER_SECOND=0.5: one token per caller, the next 2 s later; Retry-After says so."""
    impatient = PredictionClient(ClientSettings(limited_server_url, retries=0))
    unwilling = PredictionClient(ClientSettings(limited_server_url, retries=3, timeout_s=8, max_retry_after_s=1))
    patient = PredictionClient(ClientSettings(limited_server_url, retries=3, timeout_s=8, max_retry_after_s=3))
    try:
        await impatient.predict("tiny-regressor", instance=ROW)
        with pytest.raises(ServiceCallError) as refused:
            await impatient.predict("tiny-regressor", instance=ROW)
        assert refused.value.status == 429 and refused.value.retryable and refused.value.attempts == 1
        with pytest.raises(ServiceCallError) as too_long:  # Retry-After (2 s) > max_retry_after_s
            await unwilling.predict("tiny-regressor", instance=ROW)
        assert too_long.value.status == 429 and too_long.value.attempts == 1
        served = await patient.predict("tiny-regressor", instance=ROW)  # waits for the next token
        assert served.version == "1.0.0"
    finally:
        for client in (impatient, unwilling, patient):
            await client.close()


async def test_connection_refused_is_retried_then_reported():
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    async with PredictionClient(ClientSettings(url, retries=2, timeout_s=5, backoff_s=0.01)) as client:
        with pytest.raises(ServiceCallError) as refused:
            await client.predict("tiny-regressor", instance=ROW)
        assert not await client.ready()
    assert refused.value.code == "unavailable" and refused.value.status is None
    assert refused.value.attempts == 3 and refused.value.retryable


def test_settings_are_checked():
    with pytest.raises(ValueError, match="base_url"):
        ClientSettings("127.0.0.1:8000")
    with pytest.raises(ValueError, match="timeout_s"):
        ClientSettings("http://127.0.0.1:8000", timeout_s=0)


@pytest.fixture(scope="module")
def keyed_server_url(tiny_store_template, tmp_path_factory):
    import shutil

    store = tmp_path_factory.mktemp("client-keyed") / "store"
    shutil.copytree(tiny_store_template, store, symlinks=True)
    with running_server(store, env={"API_KEYS": "admin-k,read-k:read"}) as (url, _):
        yield url


async def test_reload_metadata_and_metrics_come_back_typed(keyed_server_url):
    admin = PredictionClient(ClientSettings(keyed_server_url, api_key="admin-k", timeout_s=5))
    reader = PredictionClient(ClientSettings(keyed_server_url, api_key="read-k", timeout_s=5))
    try:
        reloaded = await admin.reload("tiny-regressor")
        assert isinstance(reloaded, ReloadResult)
        assert (reloaded.model, reloaded.serving["production"], reloaded.load_failures) == (
            "tiny-regressor", "1.0.0", {})
        with pytest.raises(ServiceCallError) as refused:
            await reader.reload("tiny-regressor")
        assert (refused.value.status, refused.value.attempts) == (403, 1)

        metadata = await reader.model_metadata("tiny-regressor")
        assert isinstance(metadata, ModelMetadata) and metadata.versions == ["1.0.0", "2.0.0"]
        assert [(t.name, t.datatype, t.shape) for t in metadata.inputs] == [("x", "FP32", [-1, 4])]
        assert (await reader.model_metadata("tiny-regressor", version="2.0.0")).name == "tiny-regressor"
        with pytest.raises(ServiceCallError) as unknown:
            await reader.model_metadata("no-such-model")
        assert unknown.value.status == 404

        await reader.predict("tiny-regressor", instance=ROW)
        stats = await reader.metrics()
        assert isinstance(stats, ServerStats) and stats.requests_by_status.get("200", 0) >= 1
        assert stats.latency_ms.window >= 1 and stats.latency_ms.p50 is not None and stats.uptime_seconds > 0
    finally:
        await admin.close()
        await reader.close()


async def test_experiments_create_analyze_and_stop(keyed_server_url):
    from prediction_service.experiments.models import Analysis, Decision, Experiment, ExperimentSpec, ExperimentStatus

    spec = ExperimentSpec(model_name="tiny-regressor", champion_version="1.0.0", challenger_version="2.0.0",
                          traffic_split=0.5, task="regression")
    admin = PredictionClient(ClientSettings(keyed_server_url, api_key="admin-k", timeout_s=5))
    reader = PredictionClient(ClientSettings(keyed_server_url, api_key="read-k", timeout_s=5))
    try:
        with pytest.raises(ServiceCallError) as refused:
            await reader.create_experiment(spec)
        assert refused.value.status == 403
        created = await admin.create_experiment(spec)
        assert isinstance(created, Experiment) and created.status == ExperimentStatus.RUNNING
        assert (await reader.experiment(created.id)).challenger_version == "2.0.0"
        assert [e.id for e in await reader.experiments("tiny-regressor", ExperimentStatus.RUNNING)] == [created.id]

        served = [await reader.predict("tiny-regressor", instance=ROW, routing_key=f"k{i}") for i in range(12)]
        assert {p.experiment_id for p in served} == {created.id}
        assert {p.arm for p in served} == {"champion", "challenger"}
        for prediction in served:
            await reader.record_outcome(prediction.request_id, actual=prediction.predictions[0])

        analysis = await reader.analyze_experiment(created.id)
        assert isinstance(analysis, Analysis) and analysis.decision == Decision.CONTINUE
        assert sum(arm.requests for arm in analysis.arms.values()) == 12
        assert sum(arm.outcomes for arm in analysis.arms.values()) == 12

        stopped = await admin.stop_experiment(created.id, reason="client test")
        assert (stopped.status, stopped.end_reason) == (ExperimentStatus.STOPPED, "client test")
        with pytest.raises(ServiceCallError) as again:
            await admin.stop_experiment(created.id)
        assert again.value.status == 409 and again.value.attempts == 1
        assert (await reader.predict("tiny-regressor", instance=ROW)).experiment_id is None
    finally:
        await admin.close()
        await reader.close()


async def test_shadow_experiments_from_the_client_and_the_cli(keyed_server_url):
    import asyncio
    import subprocess
    import sys

    from prediction_service.experiments.models import ExperimentKind, ExperimentStatus, ShadowRecord

    admin = PredictionClient(ClientSettings(keyed_server_url, api_key="admin-k", timeout_s=5))
    reader = PredictionClient(ClientSettings(keyed_server_url, api_key="read-k", timeout_s=5))
    try:
        created = await admin.create_shadow_experiment("tiny-regressor", "1.0.0", "2.0.0", task="regression")
        assert created.kind == ExperimentKind.SHADOW and created.shadow_fraction == 1.0
        served = await reader.predict("tiny-regressor", instance=ROW)
        assert (served.version, served.arm) == ("1.0.0", "champion")  # production answers
        shadow = None
        for _ in range(100):  # the copy runs off the response path
            try:
                shadow = await reader.shadow_prediction(created.id, served.request_id)
                break
            except ServiceCallError as exc:
                assert exc.status == 404
                await asyncio.sleep(0.05)
        assert isinstance(shadow, ShadowRecord) and shadow.version == "2.0.0"
        assert shadow.predicted_value == pytest.approx(2 * served.predictions[0], rel=1e-5)  # TinyRegressor(2.0)

        def cli(*args: str) -> subprocess.CompletedProcess:
            return subprocess.run([sys.executable, "-m", "prediction_service", "experiments", "--url",
                                   keyed_server_url, *args], capture_output=True, text=True, timeout=60)

        listed = cli("--api-key", "read-k", "list", "--model", "tiny-regressor", "--status", "running")
        assert listed.returncode == 0 and created.id in listed.stdout and "shadow" in listed.stdout, listed.stderr
        refused = cli("--api-key", "read-k", "stop", created.id)
        assert refused.returncode == 2 and "403" in refused.stdout
        stopped = cli("--api-key", "admin-k", "stop", created.id, "--reason", "cli test")
        assert stopped.returncode == 0 and "stopped" in stopped.stdout, stopped.stdout + stopped.stderr
        assert (await reader.experiment(created.id)).status == ExperimentStatus.STOPPED
    finally:
        await admin.close()
        await reader.close()
