"""Per-request deadlines: work whose deadline passed while it queued is dropped before the model runs."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry

from prediction_service.registry import ModelKey
from prediction_service.settings import BatchingSettings, Settings, SimpleSettings
from tests.support.asgi import served_app
from tests.support.gated import gated

ROW = [1.0, 2.0, 3.0, 4.0]
SLOW = "/v1/models/slow-regressor/predict"
KEY = ModelKey("slow-regressor", "1.0.0")


async def test_expired_request_gets_504_and_never_reaches_the_model(ops_store, monkeypatch):
    settings = Settings(model_store=ops_store, simple=SimpleSettings(intra_op_threads=1),
                        batching=BatchingSettings(max_batch_size=1, concurrent_batches=1, max_queue_delay_ms=0))
    registry = CollectorRegistry()
    async with served_app(settings, metrics_registry=registry) as (app, http):
        adapter = app.state.service.adapter
        async with gated(app, KEY, monkeypatch) as gate:
            occupying = asyncio.create_task(http.post(SLOW, json={"instance": ROW}))  # holds the only model slot
            await gate.wait_started()
            late = await http.post(SLOW, json={"instance": ROW}, headers={"X-Request-Deadline-Ms": "15"})
        assert late.status_code == 504, late.text
        assert late.json()["error"]["code"] == "deadline_exceeded"
        assert (await occupying).status_code == 200
        assert (await http.post(SLOW, json={"instance": ROW})).status_code == 200  # still serving

        stats = await adapter.describe(KEY)
        assert stats["expired"] == 1, stats
        assert stats["requests"] == 2 and stats["batches"] == 2  # the model ran for the other two only
        metrics = (await http.get("/metrics")).text
        assert 'prediction_batcher_expired_total{model="slow-regressor:1.0.0"} 1.0' in metrics
        assert registry.get_sample_value("prediction_requests_total", {
            "model": "slow-regressor", "version": "1.0.0", "status": "504"}) == 1
