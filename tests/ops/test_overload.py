"""Overload against the real server (uvicorn subprocess): excess work is shed fast, and it recovers."""

from __future__ import annotations

import asyncio
import statistics

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.ops.load import drive
from tests.support.server import start_server

ROW = [1.0, 2.0, 3.0, 4.0]


def _sample_sum(metrics_text: str, sample_name: str, model: str) -> float:
    return sum(sample.value for family in text_string_to_metric_families(metrics_text) for sample in family.samples
               if sample.name == sample_name and sample.labels.get("model") == model)


def _queue_depth(metrics_text: str) -> float:
    return _sample_sum(metrics_text, "prediction_queue_depth", "slow-regressor:1.0.0")


async def test_overload_is_shed_fast_and_the_server_recovers(slow_store_template, tmp_path):
    server = start_server(slow_store_template, tmp_path, env={
        "LIMIT_MAX_IN_FLIGHT": "6", "BATCH_MAX_QUEUE_SIZE": "2", "BATCH_MAX_BATCH_SIZE": "1",
        "BATCH_CONCURRENT_BATCHES": "1", "SIMPLE_INTRA_OP_THREADS": "1", "AUDIT_ENABLED": "false",
    })
    try:
        url = f"{server.url}/v1/models/slow-regressor/predict"
        burst = asyncio.create_task(drive(url, {"instance": ROW}, concurrency=24, seconds=3.0))
        depths = []  # the queue-depth gauge, read at scrape time during the burst
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            for _ in range(5):
                await asyncio.sleep(0.4)
                depths.append(_queue_depth((await http.get("/metrics")).text))
        outcomes = await burst
        assert max(depths) >= 1, depths

        statuses = [o.status for o in outcomes]
        assert None not in statuses, [o.error for o in outcomes if o.status is None][:5]
        assert set(statuses) <= {200, 429, 503}, set(statuses)
        accepted = [o.latency_s for o in outcomes if o.status == 200]
        shed = [o.latency_s for o in outcomes if o.status in (429, 503)]
        assert accepted and len(shed) > len(accepted), (len(accepted), len(shed))
        # shed answers never wait for the model (timings printed; bench/ measures them, tests do not)
        print(f"accepted {len(accepted)} median {statistics.median(accepted) * 1000:.1f} ms; "
              f"shed {len(shed)} median {statistics.median(shed) * 1000:.1f} ms")

        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            recovered = [(await http.post("/v1/models/slow-regressor/predict", json={"instance": ROW})).status_code
                         for _ in range(5)]
            assert recovered == [200] * 5
            assert (await http.get("/health/ready")).status_code == 200
            stats = (await http.get("/v1/stats")).json()
            shed_counted = stats["requests_by_status"].get("429", 0) + stats["requests_by_status"].get("503", 0)
            assert shed_counted == len(shed)  # every shed request is counted in the metrics
            metrics = (await http.get("/metrics")).text
            assert "prediction_batcher_shed_total" in metrics
            # one row per model run (max batch 1): the model ran for the accepted requests only, none shed
            model_runs = _sample_sum(metrics, "prediction_batch_rows_count", "slow-regressor")
            assert model_runs == len(accepted) + len(recovered)
    finally:
        server.stop()
