"""A connection that keeps getting error answers is held back once past its budget; other connections, and
successful answers, never are."""

from __future__ import annotations

import httpx
from prometheus_client import CollectorRegistry

from prediction_service.api.app import create_app
from prediction_service.api.tarpit import ErrorTarpit
from prediction_service.settings import LimitSettings, Settings

ROW = [1.0, 2.0, 3.0, 4.0]


class Clock:
    def __init__(self) -> None:
        self.now = 10.0

    def __call__(self) -> float:
        return self.now


def test_errors_past_the_burst_are_delayed_until_the_budget_refills():
    clock = Clock()
    tarpit = ErrorTarpit(errors_per_second=2.0, burst=3, delay_s=0.2, clock=clock)
    connection = {"client": ("127.0.0.1", 5000)}
    assert [tarpit.delay_for(connection) for _ in range(4)] == [0.0, 0.0, 0.0, 0.2]
    assert tarpit.delay_for({"client": ("127.0.0.1", 5001)}) == 0.0  # another connection has its own budget
    clock.now += 0.5  # one error's worth back
    assert [tarpit.delay_for(connection) for _ in range(2)] == [0.0, 0.2]


def test_off_when_the_rate_or_the_delay_is_zero():
    for tarpit in (ErrorTarpit(0.0, 1, 0.2), ErrorTarpit(5.0, 1, 0.0)):
        assert [tarpit.delay_for({"client": ("h", 1)}) for _ in range(5)] == [0.0] * 5


async def test_the_app_holds_back_only_the_connection_that_keeps_failing(tiny_store):
    limits = LimitSettings(tarpit_errors_per_second=0.01, tarpit_burst=3, tarpit_delay_ms=1.0)
    app = create_app(Settings(model_store=tiny_store, limits=limits), CollectorRegistry())
    bad = {"instances": [[1.0]]}  # wrong width: 422
    async with app.router.lifespan_context(app):
        noisy = httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=("127.0.0.1", 7001)),
                                  base_url="http://test")
        quiet = httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=("127.0.0.1", 7002)),
                                  base_url="http://test")
        async with noisy, quiet:
            for _ in range(6):
                assert (await noisy.post("/v1/models/tiny-regressor/predict", json=bad)).status_code == 422
            assert app.tarpit.held == 3
            assert (await quiet.post("/v1/models/tiny-regressor/predict", json={"instances": [ROW]})).status_code == 200
            assert (await quiet.post("/v1/models/tiny-regressor/predict", json=bad)).status_code == 422
            assert (await noisy.post("/v1/models/tiny-regressor/predict", json={"instances": [ROW]})).status_code == 200
            assert app.tarpit.held == 3
