"""Shadow experiments on the served app: the champion answers every request, a copy runs on the challenger off
the response path (stored by request id, marked in the audit log, shed when its queue is full), and outcomes
score both models on the same requests for the paired test."""

from __future__ import annotations

import asyncio
import shutil

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from prediction_service.experiments.models import ExperimentKind
from prediction_service.monitoring.audit import AuditReader, audit_db_path
from prediction_service.registry import ModelKey
from prediction_service.serving.shadow import agreement, agreements
from prediction_service.settings import AuditSettings, ExperimentSettings, Settings
from tests.support.asgi import served_app
from tests.support.gated import gated

MODEL = "tiny-regressor"
PREDICT = f"/v1/models/{MODEL}/predict"
SHADOW_SPEC = {"model_name": MODEL, "champion_version": "1.0.0", "challenger_version": "2.0.0", "kind": "shadow",
               "task": "regression", "min_samples_per_arm": 20, "thresholds": {"min_units_per_arm": 5}}


def _settings(store, **experiments) -> Settings:
    return Settings(model_store=store, audit=AuditSettings(flush_interval_ms=20),
                    experiments=ExperimentSettings(auto_apply_interval_seconds=0, **experiments))


@pytest.fixture
def store(tiny_store_template, tmp_path):
    root = tmp_path / "store"
    shutil.copytree(tiny_store_template, root, symlinks=True)
    return root


def _row(i: int) -> list[float]:
    return [float(np.sin(i + k)) for k in range(4)]


async def test_the_champion_answers_and_the_challenger_answers_a_copy(store):
    metrics = CollectorRegistry()
    async with served_app(_settings(store), metrics_registry=metrics) as (app, http):
        created = await http.post("/v1/experiments", json=SHADOW_SPEC)
        assert created.status_code == 201, created.text
        experiment = created.json()
        assert experiment["kind"] == ExperimentKind.SHADOW.value and experiment["shadow_fraction"] == 1.0

        answers = [await http.post(PREDICT, json={"instance": _row(i), "routing_key": f"k{i % 8}"})
                   for i in range(24)]
        bodies = [a.json() for a in answers]
        assert all(a.status_code == 200 for a in answers), answers[0].text
        assert {(b["version"], b["arm"]) for b in bodies} == {("1.0.0", "champion")}  # nobody got the challenger
        await app.state.service.dataplane.models.shadow.drain()

        for i, body in enumerate(bodies[:5]):
            shadow = await http.get(f"/v1/experiments/{experiment['id']}/shadow/{body['request_id']}")
            assert shadow.status_code == 200, shadow.text
            direct = (await http.post(PREDICT, json={"instance": _row(i), "version": "2.0.0"})).json()
            assert shadow.json()["version"] == "2.0.0" and not shadow.json()["error"]
            assert shadow.json()["predicted_value"] == pytest.approx(direct["predictions"][0], rel=1e-5)
        missing = await http.get(f"/v1/experiments/{experiment['id']}/shadow/no-such-request")
        assert missing.status_code == 404

        # outcomes: the truth is the challenger's answer, so the paired test sees it strictly better
        for body in bodies:
            shadow = (await http.get(f"/v1/experiments/{experiment['id']}/shadow/{body['request_id']}")).json()
            posted = await http.post(f"/v1/predictions/{body['request_id']}/outcome",
                                     json={"actual": shadow["predicted_value"]})
            assert posted.status_code == 201, posted.text
        analysis = (await http.get(f"/v1/experiments/{experiment['id']}/analyze")).json()

    assert analysis["arms"]["challenger"]["requests"] == 24 and analysis["arms"]["challenger"]["scored"] == 24
    assert analysis["arms"]["challenger"]["mae"] == pytest.approx(0.0, abs=1e-6)
    assert analysis["arms"]["champion"]["mae"] > 0
    primary = analysis["comparisons"][0]
    assert primary["method"].startswith("paired")
    assert analysis["decision"] != "rollback"

    runs = sum(metrics.get_sample_value("prediction_shadow_runs_total", {"model": MODEL, "outcome": o}) or 0
               for o in ("agree", "disagree", "error"))
    assert runs == 24
    assert (metrics.get_sample_value("prediction_shadow_runs_total", {"model": MODEL, "outcome": "error"}) or 0) == 0

    # the audit log marks the copies; "which version served" never counts them
    reader = AuditReader(audit_db_path(_settings(store)))
    served = reader.request(bodies[0]["request_id"])
    assert served is not None and served.version == "1.0.0" and served.arm == "champion"
    with reader.db.read() as conn:
        from sqlalchemy import func, select

        from prediction_service.state.tables import audit_predictions as table
        shadow_rows = conn.execute(select(func.count()).where(table.c.arm == "shadow",
                                                              table.c.version == "2.0.0")).scalar_one()
    assert shadow_rows == 24


async def test_copies_are_shed_when_the_shadow_queue_is_full_and_production_never_waits(store, monkeypatch):
    metrics = CollectorRegistry()
    async with served_app(_settings(store, shadow_queue_size=2, shadow_concurrency=1), metrics_registry=metrics) as (app, http):
        assert (await http.post("/v1/experiments", json=SHADOW_SPEC)).status_code == 201
        runner = app.state.service.dataplane.models.shadow
        assert (await http.post(PREDICT, json={"instance": _row(0)})).status_code == 200
        await runner.drain()  # the challenger is loaded now: gate it
        async with gated(app, ModelKey(MODEL, "2.0.0"), monkeypatch) as gate:
            first = await http.post(PREDICT, json={"instance": _row(1)})
            await gate.wait_started()  # one copy holds the challenger's run
            answers = [await http.post(PREDICT, json={"instance": _row(i)}) for i in range(2, 8)]
            # production answered while the challenger was held: 2 copies queued, the other 4 shed
            assert first.status_code == 200 and all(a.status_code == 200 for a in answers)
            assert runner.depth == 2 and runner.shed == 4
        await asyncio.wait_for(runner.drain(), 30)
    assert metrics.get_sample_value("prediction_shadow_shed_total", {"model": MODEL}) == 4


async def test_copies_waiting_together_share_one_run_and_each_gets_its_own_rows(store, monkeypatch):
    async with served_app(_settings(store, shadow_batch_linger_ms=50)) as (app, http):
        experiment = (await http.post("/v1/experiments", json=SHADOW_SPEC)).json()
        runner = app.state.service.dataplane.models.shadow
        assert (await http.post(PREDICT, json={"instance": _row(0)})).status_code == 200
        await runner.drain()  # the challenger is loaded now: gate it
        challenger = app.state.service.adapter._models[ModelKey(MODEL, "2.0.0")]
        before = challenger.batcher.stats
        async with gated(app, ModelKey(MODEL, "2.0.0"), monkeypatch) as gate:
            await http.post(PREDICT, json={"instance": _row(1)})
            await gate.wait_started()  # that copy holds the challenger's run; the next ones wait together
            bodies = [(await http.post(PREDICT, json={"instances": [_row(i), _row(i + 100)]})).json()
                      for i in range(2, 8)]
            assert runner.depth == 6
        await asyncio.wait_for(runner.drain(), 30)
        after = challenger.batcher.stats
        assert (after.batches - before.batches, after.requests - before.requests) == (2, 2)
        assert after.rows - before.rows == 1 + 2 * 6

        direct = (await http.post(PREDICT, json={"instances": [_row(i) for i in range(2, 8)],
                                                 "version": "2.0.0"})).json()["predictions"]
        for i, body in enumerate(bodies):
            shadow = (await http.get(f"/v1/experiments/{experiment['id']}/shadow/{body['request_id']}")).json()
            assert not shadow["error"] and shadow["predicted_value"] == pytest.approx(direct[i], rel=1e-5)


async def test_a_failed_shared_run_is_an_error_answer_for_each_of_its_copies(store, monkeypatch):
    metrics = CollectorRegistry()
    async with served_app(_settings(store, shadow_batch_linger_ms=50), metrics_registry=metrics) as (app, http):
        experiment = (await http.post("/v1/experiments", json=SHADOW_SPEC)).json()
        runner = app.state.service.dataplane.models.shadow
        assert (await http.post(PREDICT, json={"instance": _row(0)})).status_code == 200
        await runner.drain()  # the challenger is loaded now: break it

        def broken(inputs):
            raise RuntimeError("the challenger's runtime failed")

        challenger = app.state.service.adapter._models[ModelKey(MODEL, "2.0.0")]
        monkeypatch.setattr(challenger.runtime, "run", broken)
        monkeypatch.setattr(challenger.batcher, "inline_rows", 0)
        bodies = [(await http.post(PREDICT, json={"instance": _row(i)})).json() for i in range(1, 5)]
        assert all(body["version"] == "1.0.0" for body in bodies)  # production never saw it
        await asyncio.wait_for(runner.drain(), 30)
        for body in bodies:
            shadow = (await http.get(f"/v1/experiments/{experiment['id']}/shadow/{body['request_id']}")).json()
            assert shadow["error"] is True and shadow["predicted_value"] is None
    assert metrics.get_sample_value("prediction_shadow_runs_total", {"model": MODEL, "outcome": "error"}) == 4
    assert runner.shed == 0


def test_agreement_of_copies_sharing_a_run_is_each_copy_s_own():
    """The shared run's rows are compared in one pass; each copy agrees only if all its rows do."""
    champions = [np.array([[1.0], [2.0]], np.float32), np.array([[3.0]], np.float32), np.array([[4.0]], np.float32)]
    challenger = np.array([[1.0], [2.5], [3.0], [4.0000001]], np.float32)
    sizes = [2, 1, 1]
    expected = [agreement(c, part) for c, part in zip(champions, np.split(challenger, [2, 3]))]
    assert agreements(champions, challenger, sizes) == expected == ["disagree", "agree", "agree"]

    probabilities = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]], np.float32)
    classes = [probabilities[:1], probabilities[1:]]
    flipped = probabilities[:, ::-1].copy()
    flipped[0] = probabilities[0] * 0.5  # same argmax for the first copy's row
    assert agreements(classes, flipped, [1, 2]) == ["agree", "disagree"]
    labels = [np.array([1, 2], np.int64), np.array([3], np.int64)]
    assert agreements(labels, np.array([1, 2, 4], np.int64), [2, 1]) == ["agree", "disagree"]
    # a copy without the output, or answers of another shape, disagree; the others are still compared
    assert agreements([None, champions[1]], np.array([[9.0], [3.0]], np.float32), [1, 1]) == ["disagree", "agree"]
    assert agreements([np.zeros((1, 2), np.float32), champions[1]], np.array([[0.0], [3.0]], np.float32),
                      [1, 1]) == ["disagree", "agree"]
    assert agreements(champions, None, sizes) == ["disagree"] * 3


async def test_a_shadow_experiment_is_sequential_and_sampled_per_request(store):
    async with served_app(_settings(store)) as (app, http):
        fixed = await http.post("/v1/experiments", json={**SHADOW_SPEC, "mode": "fixed"})
        assert fixed.status_code == 400 and "sequential" in fixed.json()["error"]["message"]
        created = await http.post("/v1/experiments", json={**SHADOW_SPEC, "shadow_fraction": 0.25})
        assert created.status_code == 201, created.text
        for i in range(200):
            assert (await http.post(PREDICT, json={"instance": _row(i)})).status_code == 200
        runner = app.state.service.dataplane.models.shadow
        await runner.drain()
        assert 20 <= runner.done <= 80  # about a quarter copied (binomial 200 x 0.25: 50 +- 18 at 3 sigma)


async def test_copies_wait_until_no_production_prediction_is_in_flight(store, monkeypatch):
    """The data plane wakes what waits in ``until_idle`` when its last prediction finishes, not before."""
    async with served_app(_settings(store)) as (app, http):
        dataplane = app.state.service.dataplane
        await asyncio.wait_for(dataplane.until_idle(), 1)  # idle: at once
        assert (await http.post(PREDICT, json={"instance": _row(0)})).status_code == 200  # loads the model
        async with gated(app, ModelKey(MODEL, "1.0.0"), monkeypatch) as gate:
            production = asyncio.create_task(http.post(PREDICT, json={"instance": _row(1)}))
            await gate.wait_started()
            waiter = asyncio.create_task(dataplane.until_idle())
            await asyncio.sleep(0.05)
            assert dataplane.in_flight == 1 and not waiter.done()
            gate.release()
            assert (await production).status_code == 200
            await asyncio.wait_for(waiter, 10)
        assert dataplane.in_flight == 0


async def test_an_outcome_posted_at_once_has_its_lingering_record_written_now(store):
    """Arm records wait for company before they are written; an outcome that finds its record still waiting
    in this worker has it written at once instead of waiting out the linger (here longer than the outcome
    may wait, so only that write can find it)."""
    async with served_app(_settings(store, record_linger_ms=1000, outcome_wait_seconds=0.5)) as (_, http):
        assert (await http.post("/v1/experiments", json=SHADOW_SPEC)).status_code == 201
        answer = (await http.post(PREDICT, json={"instance": _row(0)})).json()
        posted = await http.post(f"/v1/predictions/{answer['request_id']}/outcome", json={"actual": 1.0})
        assert posted.status_code == 201, posted.text
