"""Two uvicorn workers: /metrics (answered by either worker) counts the predictions of both."""

from __future__ import annotations

import asyncio
import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.support.server import start_server

ROW = [1.0, 2.0, 3.0, 4.0]


def _requests_total(text: str) -> float:
    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == "prediction_requests_total" and sample.labels.get("status") == "200")


async def test_metrics_are_merged_across_workers(tiny_store_template, tmp_path):
    server = start_server(tiny_store_template, tmp_path, workers=2, env={"AUDIT_ENABLED": "false"})
    try:
        limits = httpx.Limits(max_keepalive_connections=0)  # a fresh connection each time: both workers answer
        async with httpx.AsyncClient(base_url=server.url, timeout=10, limits=limits) as http:
            responses = await asyncio.gather(*(http.post("/v1/models/tiny-regressor/predict", json={"instance": ROW})
                                               for _ in range(40)))
            assert all(r.status_code == 200 for r in responses)
            scrapes = [(await http.get("/metrics")).text for _ in range(6)]
            windows: dict[int, int] = {}  # worker pid -> successful predictions in its own latency window
            for _ in range(50):
                stats = (await http.get("/v1/stats")).json()
                assert stats["requests_by_status"] == {"200": 40}  # merged, whichever worker answers
                windows[stats["worker_pid"]] = stats["latency_ms"]["window"]
                if len(windows) == 2:
                    break
        # whichever worker answered the scrape, it reports all 40 ...
        assert [_requests_total(text) for text in scrapes] == [40.0] * 6
        # ... although each worker served only its share
        assert len(windows) == 2 and sum(windows.values()) == 40, windows
        assert server.terminate() == 0
    finally:
        server.stop()


async def test_one_worker_with_an_operator_given_metrics_dir(tiny_store_template, tmp_path):
    """A named PROMETHEUS_MULTIPROC_DIR is created if missing and emptied of an earlier run's files."""
    metrics_dir = tmp_path / "metrics" / "not-yet-there"
    server = start_server(tiny_store_template, tmp_path / "first", env={
        "AUDIT_ENABLED": "false", "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)})
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            for _ in range(3):
                assert (await http.post("/v1/models/tiny-regressor/predict", json={"instance": ROW})).status_code == 200
            assert _requests_total((await http.get("/metrics")).text) == 3.0
        assert list(metrics_dir.glob("*.db")), "a single worker should write to the named directory"
        assert server.terminate() == 0
    finally:
        server.stop()

    # a restart on the same directory (a pod's volume survives the container) starts counting from zero
    server = start_server(tiny_store_template, tmp_path / "second", env={
        "AUDIT_ENABLED": "false", "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)})
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            assert (await http.post("/v1/models/tiny-regressor/predict", json={"instance": ROW})).status_code == 200
            assert _requests_total((await http.get("/metrics")).text) == 1.0
    finally:
        server.stop()
