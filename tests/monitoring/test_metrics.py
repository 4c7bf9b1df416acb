"""Prometheus metrics and /v1/stats, fed by real predictions through the ASGI app."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from prediction_service.api.app import create_app
from prediction_service.monitoring.metrics import LatencyWindow

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
    app = create_app(settings, metrics_registry=registry)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
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
    assert parsed[("prediction_queue_depth", frozenset({"model": "tiny-regressor:1.0.0"}.items()))] == 0
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
