"""Large JSON bodies are charged to a per-worker parse budget: the parser holds the GIL, so the budget, not
the thread it runs in, is what keeps a few clients posting multi-MB documents from taking the worker."""

from __future__ import annotations

import orjson
import pytest

from prediction_service.errors import Overloaded
from prediction_service.security.ratelimit import ParseBudget
from prediction_service.settings import LimitSettings, Settings
from tests.support.asgi import served_app

ROW = [1.0, 2.0, 3.0, 4.0]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_budget_refills_at_its_rate_and_refuses_with_retry_after():
    clock = Clock()
    budget = ParseBudget(1000.0, burst_bytes=3000.0, clock=clock)
    budget.take(2000)
    budget.take(1000)
    with pytest.raises(Overloaded) as refused:
        budget.take(500)
    assert refused.value.status == 429 and refused.value.retry_after_s >= 1
    clock.now += 0.5  # 500 bytes back
    budget.take(500)


def test_an_unbounded_budget_never_refuses():
    budget = ParseBudget(0.0, burst_bytes=10.0)
    for _ in range(3):
        budget.take(10**9)


def _big_body(megabytes: float) -> bytes:
    rows = int(megabytes * 2**20 / len(orjson.dumps(ROW)))
    return orjson.dumps({"instances": [ROW] * rows})


async def test_large_bodies_past_the_budget_get_429_and_small_ones_still_run(tiny_store):
    limits = LimitSettings(json_offload_bytes=64 * 1024, large_json_bytes_per_second=2**20,
                           max_request_bytes=4 * 2**20)
    async with served_app(Settings(model_store=tiny_store, limits=limits)) as (_, http):
        big = _big_body(3.0)
        headers = {"content-type": "application/json"}
        first = await http.post("/v1/models/tiny-regressor/predict", content=big, headers=headers)
        assert first.status_code == 422  # parsed (too many rows): the budget paid for it
        second = await http.post("/v1/models/tiny-regressor/predict", content=big, headers=headers)
        assert second.status_code == 429, second.text
        assert "Retry-After" in second.headers and "binary" in second.json()["error"]["message"]
        oip = await http.post("/v2/models/tiny-regressor/infer", content=big, headers=headers)
        assert oip.status_code == 429, oip.text
        small = await http.post("/v1/models/tiny-regressor/predict", json={"instances": [ROW]})
        assert small.status_code == 200, small.text
