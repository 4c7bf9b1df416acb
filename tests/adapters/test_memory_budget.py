"""The in-process memory budget (SIMPLE_CACHE_SIZE_MB): memory measured per loaded version, least recently
used versions outside a stage unloaded to stay under it, a stage's versions never, and reported."""

from __future__ import annotations

from prediction_service.settings import Settings, SimpleSettings
from tests.support.asgi import served_app
from tests.support.models import REGRESSOR_SIGNATURE, TinyRegressor, register_tiny

ROW = [1.0, 2.0, 3.0, 4.0]
PREDICT = "/v1/models/tiny-regressor/predict"


def with_third_version(tiny_store, tmp_path):
    register_tiny(tiny_store, "tiny-regressor", "3.0.0", TinyRegressor(3.0), REGRESSOR_SIGNATURE, tmp_path / "export",
                  stage=None)
    return tiny_store


async def loaded_memory(http) -> dict[str, int]:
    listed = {m["name"]: m for m in (await http.get("/v1/models")).json()}
    return listed["tiny-regressor"]["memory_bytes"]


async def test_versions_outside_a_stage_leave_to_stay_under_the_budget(tiny_store, tmp_path):
    # A budget below anything measurable: every version outside a stage but the one just used must leave,
    # least recently used first; production stays (and the server says it is over the budget).
    budget_mb = 0.000001
    settings = Settings(model_store=with_third_version(tiny_store, tmp_path), simple=SimpleSettings(cache_size_mb=budget_mb))
    async with served_app(settings) as (_, http):
        for version in ("2.0.0", "3.0.0"):
            answer = await http.post(PREDICT, json={"instance": ROW, "version": version})
            assert answer.status_code == 200 and answer.json()["version"] == version
        memory = await loaded_memory(http)
        assert set(memory) == {"1.0.0", "3.0.0"}  # 2.0.0, least recently used outside a stage, left
        assert all(size > 0 for size in memory.values())
        stats = (await http.get("/v1/stats")).json()["model_memory"]
        assert stats["total_bytes"] == sum(stats["by_version"].values()) >= sum(memory.values())
        assert stats["budget_bytes"] == int(budget_mb * 2**20)
        assert (await http.post(PREDICT, json={"instance": ROW, "version": "2.0.0"})).status_code == 200
        assert set(await loaded_memory(http)) == {"1.0.0", "2.0.0"}  # loads again on use, 3.0.0 makes room


async def test_without_a_budget_both_stay(tiny_store, tmp_path):
    store = with_third_version(tiny_store, tmp_path)
    async with served_app(Settings(model_store=store)) as (_, http):
        for version in ("2.0.0", "3.0.0"):
            assert (await http.post(PREDICT, json={"instance": ROW, "version": version})).status_code == 200
        assert set(await loaded_memory(http)) == {"1.0.0", "2.0.0", "3.0.0"}
        assert (await http.get("/v1/stats")).json()["model_memory"]["budget_bytes"] == 0


async def test_a_staged_set_over_the_budget_is_a_readiness_reason_not_a_crash(tiny_store):
    settings = Settings(model_store=tiny_store, simple=SimpleSettings(cache_size_mb=0.000001))
    async with served_app(settings) as (_, http):
        ready = await http.get("/health/ready")
        assert ready.status_code == 503 and "SIMPLE_CACHE_SIZE_MB" in ready.text, ready.text
        assert (await http.post(PREDICT, json={"instance": ROW})).status_code == 200  # production still serves
