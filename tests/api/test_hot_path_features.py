"""Every production feature on the hot path at once: the predict and infer routes are dispatched
by ServingApp before FastAPI's middleware and router (api/hot_path.py), with the overload check at the ASGI
edge; on that path, with keys, audit, metrics, an A/B experiment and deadlines all on, each still works."""

from __future__ import annotations

import asyncio
import shutil

from prometheus_client import CollectorRegistry

from prediction_service.monitoring.audit import AuditReader
from prediction_service.settings import AuditSettings, SecuritySettings, Settings
from tests.support.asgi import served_app
from prediction_service.registry import ModelKey
from tests.support.gated import gated

ROW = [1.0, 2.0, 3.0, 4.0]
ADMIN = {"X-API-Key": "admin-secret"}
READER = {"X-API-Key": "reader-secret"}
PREDICT = "/v1/models/tiny-regressor/predict"
INFER = "/v2/models/tiny-regressor/infer"
SLOW = "slow-regressor"
OIP_BODY = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": ROW}]}


async def test_keys_metrics_audit_provenance_ab_and_deadlines_on_the_hot_path(slow_store_template, tmp_path,
                                                                               monkeypatch):
    store = tmp_path / "store"
    shutil.copytree(slow_store_template, store, symlinks=True)
    settings = Settings(model_store=store, audit=AuditSettings(flush_interval_ms=20),
                        security=SecuritySettings(api_keys="admin-secret,reader-secret:read",
                                                  predict_requires_key=True))
    metrics = CollectorRegistry()
    async with served_app(settings, metrics_registry=metrics) as (app, http):
        # auth: refused before the body is looked at, on both REST doors
        for path, body in ((PREDICT, {"instance": ROW}), (INFER, OIP_BODY)):
            refused = await http.post(path, json=body)
            assert refused.status_code == 401 and refused.headers["www-authenticate"] == "ApiKey", path

        # A/B: an experiment on tiny-regressor (production 1.0.0 vs staging 2.0.0) routes every request
        experiment = await http.post("/v1/experiments", headers=ADMIN, json={
            "model_name": "tiny-regressor", "champion_version": "1.0.0", "challenger_version": "2.0.0",
            "traffic_split": 0.5})
        assert experiment.status_code == 201, experiment.text
        answers = [await http.post(PREDICT, headers=READER, json={"instance": ROW, "routing_key": f"k{i}"})
                   for i in range(20)]
        assert all(a.status_code == 200 for a in answers), answers[0].text
        bodies = [a.json() for a in answers]
        arms = {(b["arm"], b["version"]) for b in bodies}
        assert arms == {("champion", "1.0.0"), ("challenger", "2.0.0")}, arms
        for answer, body in zip(answers, bodies):  # provenance and the request id on every answer
            assert body["experiment_id"] == experiment.json()["id"]
            assert body["provenance"]["sha256"] and body["provenance"]["backend"]
            assert answer.headers["x-request-id"] == body["request_id"]
        oip = await http.post(INFER, headers=READER, json=OIP_BODY)
        assert oip.status_code == 200 and oip.json()["model_version"] in ("1.0.0", "2.0.0")

        # deadlines: a request whose deadline passes while the model holds it is answered 504
        async with gated(app, ModelKey(SLOW, "1.0.0"), monkeypatch) as gate:
            late = asyncio.create_task(http.post(f"/v1/models/{SLOW}/predict", json={"instance": ROW},
                                                 headers={**READER, "X-Request-Deadline-Ms": "15"}))
            await gate.wait_started()
            late = await late
        assert late.status_code == 504 and late.json()["error"]["code"] == "deadline_exceeded"

    # metrics: the latency histogram and the status counters moved for what was answered
    def sample(name: str, **labels: str) -> float:
        return metrics.get_sample_value(name, labels) or 0.0

    served = sum(sample("prediction_latency_seconds_count", model="tiny-regressor", version=v) for v in ("1.0.0", "2.0.0"))
    assert served == 21
    assert sample("prediction_requests_total", model=SLOW, version="1.0.0", status="504") == 1

    # audit: every answered request is in the log under the id it was given, with its arm (the lifespan
    # exit flushed the writer)
    reader = AuditReader(store / ".state" / "audit.sqlite3")
    for body in bodies:
        entry = reader.request(body["request_id"])
        assert entry is not None and (entry.version, entry.arm) == (body["version"], body["arm"])
