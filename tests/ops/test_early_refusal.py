"""Overload refusals answered at the ASGI edge (api/early_refusal.py): the same answer the route gives
(status, body per door, Retry-After, X-Request-Id, metrics), without reading or parsing the body, and a
caller who must present a key still learns that it is missing first."""

from __future__ import annotations

import asyncio
import uuid

from prometheus_client import CollectorRegistry

from prediction_service.settings import AuditSettings, BatchingSettings, LimitSettings, SecuritySettings, Settings
from tests.support.asgi import served_app
from prediction_service.registry import ModelKey
from tests.support.gated import gated

MODEL = "slow-regressor"
PREDICT = f"/v1/models/{MODEL}/predict"
ROW = [1.0, 2.0, 3.0, 4.0]
READER = {"X-API-Key": "reader-secret"}
NO_DEADLINE = {"X-Request-Deadline-Ms": "120000"}  # the gated run may wait longer than the 1 s default


async def test_a_full_server_refuses_at_the_edge_after_checking_the_key(ops_store, monkeypatch):
    settings = Settings(model_store=ops_store, limits=LimitSettings(max_in_flight=1, caller_deadline_ceiling_ms=120_000),
                        batching=BatchingSettings(max_batch_size=1), audit=AuditSettings(enabled=False),
                        security=SecuritySettings(api_keys="admin-secret,reader-secret:read",
                                                  predict_requires_key=True))
    metrics = CollectorRegistry()
    async with served_app(settings, metrics_registry=metrics) as (app, http):
        dataplane = app.state.service.dataplane
        async with gated(app, ModelKey(MODEL, "1.0.0"), monkeypatch) as gate:
            held = asyncio.create_task(http.post(PREDICT, headers={**READER, **NO_DEADLINE},
                                                 json={"instance": ROW}, timeout=120))
            await gate.wait_started()  # the held prediction takes the only in-flight slot
            assert dataplane.in_flight == 1

            # no key: the 401 comes first, as when the server is idle
            missing = await http.post(PREDICT, content=b"not json")
            assert missing.status_code == 401 and missing.json()["error"]["code"] == "unauthorized"

            # a valid key: refused without parsing the body (an admitted "not json" would be a 400)
            refused = await http.post(PREDICT, headers=READER, content=b"not json")
            assert refused.status_code == 503, refused.text
            assert refused.json()["error"]["code"] == "unavailable"
            assert refused.headers["retry-after"] == "1"
            assert uuid.UUID(hex=refused.headers["x-request-id"]).version == 7
            oip = await http.post(f"/v2/models/{MODEL}/infer", headers=READER, content=b"not json")
            assert oip.status_code == 503 and set(oip.json()) == {"error"}  # OIP's error body

        assert (await held).status_code == 200
        answered = await http.post(PREDICT, headers={**READER, **NO_DEADLINE}, json={"instance": ROW},
                                   timeout=120)
        assert answered.status_code == 200
    # counted like the route counts them (refused before a version was resolved)
    assert metrics.get_sample_value("prediction_requests_total",
                                    {"model": "_unresolved", "version": "", "status": "503"}) == 2
    assert metrics.get_sample_value("prediction_errors_total", {"model": "_unresolved", "code": "unavailable"}) == 2
