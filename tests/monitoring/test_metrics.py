"""Prometheus metrics and /v1/stats, fed by real predictions through the ASGI app."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from prediction_service.api.app import create_app
from prediction_service.monitoring.metrics import LatencyWindow
from tests.support.asgi import served_app

ROW = [1.0, 2.0, 3.0, 4.0]
PREDICT = "/v1/models/tiny-regressor/predict"


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(parsed, name: str, **labels) -> float:
    return sum(v for (n, ls), v in parsed.items() if n == name and set(labels.items()) <= ls)


@pytest.fixture
async def app_client(settings):
    registry = CollectorRegistry()
    async with served_app(settings, metrics_registry=registry) as (app, http):
        http.app, http.registry = app, registry
        yield http


async def test_metrics_count_requests_latency_batches_and_models(app_client):
    await asyncio.gather(*(app_client.post(PREDICT, json={"instance": ROW}) for _ in range(12)))
    assert (await app_client.post(PREDICT, json={"instance": [1.0]})).status_code == 422
    assert (await app_client.post("/v1/models/nope/predict", json={"instance": ROW})).status_code == 404

    response = await app_client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    parsed = samples(response.text)
    ok = dict(model="tiny-regressor", version="1.0.0")
    assert value(parsed, "prediction_requests_total", status="200", **ok) == 12
    assert value(parsed, "prediction_requests_total", status="422", **ok) == 1
    # an unknown name never becomes a label value (cardinality): it is counted as unresolved
    assert value(parsed, "prediction_requests_total", model="_unresolved", status="404") == 1
    assert value(parsed, "prediction_errors_total", code="model_not_found") == 1
    assert value(parsed, "prediction_latency_seconds_count", **ok) == 13
    assert value(parsed, "prediction_latency_seconds_bucket", le="0.0005", **ok) <= 13
    assert ("prediction_latency_seconds_bucket", frozenset({**ok, "le": "0.0005"}.items())) in parsed
    assert value(parsed, "prediction_batch_rows_sum", model="tiny-regressor") == 12  # 12 rows, however merged
    assert value(parsed, "prediction_models_loaded") == 2  # the production version of each model
    assert value(parsed, "prediction_model_loads_total", result="ok") == 2
    assert value(parsed, "prediction_model_load_seconds_count") == 2
    for priority in ("1", "2", "3"):  # one lane per priority level (BATCH_PRIORITY_LEVELS, 3 by default)
        assert parsed[("prediction_queue_depth", frozenset({"model": "tiny-regressor:1.0.0",
                                                            "priority": priority}.items()))] == 0
    assert value(parsed, "prediction_process_resident_memory_bytes") > 10_000_000
    assert value(parsed, "prediction_process_cpu_seconds") > 0
    # the registry passed in is the one that holds the metrics
    assert app_client.registry.get_sample_value(
        "prediction_requests_total", {"model": "tiny-regressor", "version": "1.0.0", "status": "200"}) == 12


async def test_stats_json(app_client):
    for _ in range(20):
        await app_client.post(PREDICT, json={"instance": ROW})
    await app_client.post(PREDICT, json={"instance": [1.0]})
    stats = (await app_client.get("/v1/stats")).json()
    assert stats["requests_total"] == 21
    assert stats["requests_by_status"] == {"200": 20, "422": 1}
    assert stats["success_rate"] == pytest.approx(20 / 21, abs=1e-6)
    latency = stats["latency_ms"]
    assert latency["window"] == 20
    assert 0 < latency["p50"] <= latency["p95"] <= latency["p99"]
    assert stats["uptime_seconds"] > 0 and stats["models_loaded"] >= 2
    assert stats["process_resident_memory_bytes"] > 0
    assert stats["audit"]["failing"] is False


def test_latency_window_is_bounded_and_exact():
    window = LatencyWindow(size=100)
    for value_ms in range(1, 1001):
        window.add(float(value_ms))
    summary = window.summary()
    assert summary.count == 100  # only the last 100 are kept
    assert summary.p50_ms == pytest.approx(950.5)
    assert summary.p99_ms == pytest.approx(999.01)
    assert LatencyWindow().summary().p50_ms is None


# ---- health, readiness and A/B experiments ---------------------------------------------------------------


async def test_readiness_and_backend_health_gauges_follow_the_health_check(app_client):
    """Set at start and by the background check (never by a scrape): ready and backend healthy, then a
    draining worker reads as not ready."""
    parsed = samples((await app_client.get("/metrics")).text)
    assert parsed[("prediction_ready", frozenset())] == 1
    assert parsed[("prediction_backend_healthy", frozenset({"backend": "simple"}.items()))] == 1
    service = app_client.app.state.service
    service.shutting_down = True
    try:
        await service.check_health()
        assert samples((await app_client.get("/metrics")).text)[("prediction_ready", frozenset())] == 0
    finally:
        service.shutting_down = False


async def test_backend_gauge_follows_a_real_triton_going_down(tiny_store, tmp_path):
    """Triton serving: healthy and ready; Triton killed: the next health check reads backend 0, ready 0."""
    from prediction_service.settings import AdapterType, Settings, TritonSettings
    from tests.support.triton_fixtures import start_local_triton

    server = start_local_triton(tmp_path / "triton-repo")
    settings = Settings(model_store=tiny_store, serving_adapter_type=AdapterType.TRITON, triton=TritonSettings(
        server_url=server.http_url, server_grpc_url=server.grpc_url, model_repository=server.model_repository))
    registry = CollectorRegistry()
    app = create_app(settings, metrics_registry=registry)
    healthy = {"backend": "triton"}
    try:
        async with app.router.lifespan_context(app):
            assert registry.get_sample_value("prediction_backend_healthy", healthy) == 1
            assert registry.get_sample_value("prediction_ready") == 1
            server.kill()
            await app.state.service.check_health()
            assert registry.get_sample_value("prediction_backend_healthy", healthy) == 0
            assert registry.get_sample_value("prediction_ready") == 0
    finally:
        server.stop()


async def test_an_unreachable_triton_reads_as_an_unhealthy_backend(tmp_path):
    """The Triton adapter's own health check against a port nobody listens on."""
    from prediction_service.adapters.factory import ServingAdapterFactory
    from prediction_service.monitoring.metrics import ServiceMetrics
    from prediction_service.settings import Settings, TritonSettings
    from tests.support.server import free_port

    settings = Settings(model_store=tmp_path, serving_adapter_type="triton",
                        triton=TritonSettings(server_url=f"127.0.0.1:{free_port()}"))
    adapter = ServingAdapterFactory.create(settings)
    registry = CollectorRegistry()
    metrics = ServiceMetrics(registry)
    try:
        metrics.observe_health(await adapter.health())
    finally:
        await adapter.close()
    assert registry.get_sample_value("prediction_backend_healthy", {"backend": "triton"}) == 0


def test_experiment_metrics_count_arms_outcomes_decisions_and_applied_promotions(tmp_path):
    import numpy as np

    from prediction_service.experiments.models import Arm, ExperimentSpec
    from prediction_service.experiments.service import ExperimentService
    from prediction_service.experiments.store import ExperimentStore
    from prediction_service.monitoring.metrics import ServiceMetrics
    from prediction_service.settings import ExperimentSettings

    registry = CollectorRegistry()
    promoted = []
    service = ExperimentService(ExperimentStore(tmp_path / "experiments.sqlite3"),
                                ExperimentSettings(min_samples_per_arm=50), lambda name, version: promoted.append(version),
                                lambda name, version: True, observer=ServiceMetrics(registry))
    experiment = service.create(ExperimentSpec(model_name="sentiment", champion_version="1.0.0",
                                               challenger_version="1.1.0", traffic_split=0.5, auto_apply=True))
    labels = {"model": "sentiment", "experiment": experiment.id}

    def metric(name: str, **extra) -> float | None:
        return registry.get_sample_value(name, {**labels, **extra})

    rng = np.random.default_rng(3)
    served = {Arm.CHAMPION: 0, Arm.CHALLENGER: 0}
    outcomes = 0

    def serve(n: int, prefix: str) -> None:
        nonlocal outcomes
        for i in range(n):
            assignment = service.route("sentiment", f"{prefix}-key-{i}")
            if assignment is None:
                return  # promoted meanwhile
            actual = int(rng.integers(0, 3))
            right = rng.random() < (0.95 if assignment.arm is Arm.CHALLENGER else 0.6)
            probs = np.full((1, 3), 0.1, dtype=np.float32)
            probs[0, actual if right else (actual + 1) % 3] = 0.8
            service.record_prediction(f"{prefix}-{i}", assignment, 10.0 + rng.normal(), False, probs)
            served[assignment.arm] += 1
            if i % 2 == 0:  # every other prediction gets its outcome
                service.record_outcome(f"{prefix}-{i}", actual)
                outcomes += 1

    serve(40, "a")
    early = service.analyze(experiment.id)
    for arm in Arm:
        assert metric("prediction_experiment_predictions_total", arm=arm.value) == served[arm]
    assert sum(metric("prediction_experiment_outcomes_total", arm=arm.value) for arm in Arm) == outcomes
    assert metric("prediction_experiment_decision", decision="continue") == 1 == 1 - metric(
        "prediction_experiment_decision", decision="promote")
    assert metric("prediction_experiment_applied_total", decision="promote") == 0  # exists before it happens
    primary = next(c for c in early.comparisons if c.metric == "accuracy")
    assert metric("prediction_experiment_p_value", metric="accuracy") == pytest.approx(primary.p_value)
    assert metric("prediction_experiment_difference", metric="accuracy") == pytest.approx(primary.difference)
    assert metric("prediction_experiment_last_analysis_timestamp_seconds") > 0

    serve(1500, "b")
    analysis = service.analyze(experiment.id)
    assert analysis.applied and promoted == ["1.1.0"], analysis.reasons
    assert metric("prediction_experiment_decision", decision="promote") == 1
    assert metric("prediction_experiment_decision", decision="continue") == 0
    assert metric("prediction_experiment_applied_total", decision="promote") == 1
    assert metric("prediction_experiment_applied_total", decision="rollback") == 0
    service.analyze(experiment.id)  # applied once only, counted once only
    assert metric("prediction_experiment_applied_total", decision="promote") == 1
