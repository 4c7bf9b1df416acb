"""The experiments' batch writes (the records written behind the answers), on SQLite and PostgreSQL: what
each record of a batch comes to, as the analysis later reads it."""

from __future__ import annotations

import time

import pytest

from prediction_service.errors import Conflict, NotFound
from prediction_service.experiments.models import (Arm, ExperimentSpec, ExperimentStatus, PredictionRecord,
                                                   ShadowRecord)
from prediction_service.experiments.store import ExperimentStore


@pytest.fixture
def store(tmp_path, state_settings) -> ExperimentStore:
    store = ExperimentStore(tmp_path / "experiments.sqlite3", state=state_settings)
    yield store
    store.close()


def start(store: ExperimentStore, experiment_id: str, model: str) -> None:
    spec = ExperimentSpec(model_name=model, champion_version="1.0.0", challenger_version="2.0.0",
                          task="classification")
    store.insert_experiment(experiment_id, spec, time.time())


def prediction(request_id: str, experiment_id: str, *, arm: Arm = Arm.CHAMPION, error: bool = False,
               predicted_class: int | None = 1, unit: str | None = None) -> PredictionRecord:
    return PredictionRecord(request_id=request_id, experiment_id=experiment_id, arm=arm, version="1.0.0",
                            served_at=time.time(), latency_ms=2.5, error=error, predicted_class=predicted_class,
                            unit=unit, api_key_id="desk")


def shadow(request_id: str, experiment_id: str, *, predicted_value: float | None = 0.25) -> ShadowRecord:
    return ShadowRecord(request_id=request_id, experiment_id=experiment_id, version="2.0.0",
                        served_at=time.time(), latency_ms=3.5, error=False, predicted_value=predicted_value)


def test_a_batch_of_predictions_stores_those_of_running_experiments_once_each(store):
    start(store, "live", "price")
    start(store, "ended", "sentiment")
    store.transition("ended", ExperimentStatus.STOPPED, "stopped by operator", time.time())
    store.insert_prediction(prediction("seen", "live"))

    stored = store.insert_predictions([
        prediction("a", "live", arm=Arm.CHALLENGER, unit="u1"), prediction("seen", "live"),
        prediction("b", "ended"), prediction("c", "live", error=True, predicted_class=None)])

    assert stored == [True, False, False, True]
    a = store.get_prediction("a")
    assert (a.arm, a.unit, a.api_key_id, a.error, a.predicted_class) == (Arm.CHALLENGER, "u1", "desk", False, 1)
    c = store.get_prediction("c")
    assert c.error is True and c.predicted_class is None
    with pytest.raises(NotFound):
        store.get_prediction("b")


def test_a_batch_of_shadow_answers_stores_those_of_running_experiments(store):
    start(store, "live", "price")
    start(store, "ended", "sentiment")
    store.transition("ended", ExperimentStatus.STOPPED, "stopped by operator", time.time())

    assert store.insert_shadows([shadow("a", "live"), shadow("b", "ended"), shadow("c", "live", predicted_value=None)]) \
        == [True, False, True]
    a = store.get_shadow("a")
    assert (a.version, a.latency_ms, a.error, a.predicted_value) == ("2.0.0", 3.5, False, 0.25)
    assert store.get_shadow("c").predicted_value is None
    assert store.get_shadow("b") is None


def test_a_shadow_answer_recorded_before_refuses_its_whole_batch(store):
    start(store, "live", "price")
    store.insert_shadows([shadow("seen", "live")])
    with pytest.raises(Conflict):
        store.insert_shadows([shadow("new", "live"), shadow("seen", "live")])
    assert store.get_shadow("new") is None  # nothing of the batch was stored
