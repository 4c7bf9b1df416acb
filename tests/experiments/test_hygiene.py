"""What makes a decision trustworthy besides the maths: failed outputs count, stale routes do not, the
randomization unit is stored and used, unsafe designs are refused, promotions cannot loop, fixed-horizon
experiments decide once."""

from __future__ import annotations

import logging
import sqlite3
import shutil

import numpy as np
import pytest

from prediction_service.errors import BadRequest, Conflict, NotFound
from prediction_service.experiments import router
from prediction_service.experiments.models import (Arm, Decision, ExperimentMode, ExperimentSpec, ExperimentStatus,
                                                   ThresholdOverrides, VarianceMethod)
from prediction_service.experiments.service import ExperimentService, RegistryCatalog
from prediction_service.experiments.store import ExperimentStore
from prediction_service.registry import ModelRegistry
from prediction_service.registry.errors import PromotionRefused
from prediction_service.settings import ExperimentSettings

from .conftest import Catalog, RecordingPromoter, version_exists

pytestmark = pytest.mark.usefixtures("state_backend")  # SQLite and PostgreSQL


def spec(**overrides) -> ExperimentSpec:
    values = dict(model_name="sentiment", champion_version="1.0.0", challenger_version="1.1.0", traffic_split=0.5)
    return ExperimentSpec(**(values | overrides))


def probs(cls: int | None) -> np.ndarray:
    """Three-class probabilities for ``cls``; NaN everywhere when None (a broken output)."""
    out = np.full((1, 3), 0.1, dtype=np.float32)
    if cls is None:
        return np.full((1, 3), np.nan, dtype=np.float32)
    out[0, cls] = 0.8
    return out


def feed(service: ExperimentService, n: int, *, champion: float = 0.6, challenger: float = 0.6,
         challenger_nan: float = 0.0, keys: int | None = None, prefix: str = "r", seed: int = 0) -> None:
    """n requests with outcomes; exact shares of right (and NaN) answers per arm in every 20 of its requests,
    spread through the 20 (slot 11k mod 20), not in runs: runs of right answers would be outcomes autocorrelated
    within the arm, which the default variance (batch means) rightly counts as less evidence."""
    rng = np.random.default_rng(seed)
    seen = {Arm.CHAMPION: 0, Arm.CHALLENGER: 0}
    for i in range(n):
        key = f"key-{i % keys}" if keys else f"{prefix}-{i}"
        assignment = service.route("sentiment", key)
        k = seen[assignment.arm]
        seen[assignment.arm] += 1
        is_challenger = assignment.arm is Arm.CHALLENGER
        slot = (11 * k) % 20
        broken = is_challenger and slot < round(challenger_nan * 20)
        right = slot < round((challenger if is_challenger else champion) * 20)
        actual = int(rng.integers(0, 3))
        predicted = None if broken else (actual if right else (actual + 1) % 3)
        service.record_prediction(f"{prefix}-{i}", assignment, float(rng.normal(10, 1)), False, probs(predicted))
        service.record_outcome(f"{prefix}-{i}", actual, pnl=float(rng.normal()))


# -- failed and non-finite outputs ----------------------------------------------------------------------

def test_nan_output_is_an_error_and_scores_as_wrong(service: ExperimentService):
    exp = service.create(spec())
    assignment = service.route("sentiment", "k")
    service.record_prediction("nan-1", assignment, 3.0, False, np.array([[np.nan, 0.2, 0.7]]))
    stored = service.store.get_prediction("nan-1")
    assert stored.error and stored.predicted_class is None  # argmax would have called NaN class 0
    outcome = service.record_outcome("nan-1", 0)
    assert outcome.correct is False and outcome.worst_case
    arm = service.analyze(exp.id).arms[assignment.arm]
    assert arm.errors == 1 and arm.accuracy == 0.0 and arm.worst_case == 1


def test_failing_on_the_hardest_inputs_does_not_look_better(make_service):
    """The challenger answers NaN on 10 % of requests and is right on 70 % of the rest: as accurate as the
    champion if its failures were dropped (78 %), 70 % once they count. It is rolled back, not promoted."""
    service = make_service(min_samples_per_arm=50, min_units_per_arm=2)
    exp = service.create(spec())
    feed(service, 800, champion=0.70, challenger=0.80, challenger_nan=0.10)  # right on 70 of 90 answered
    analysis = service.analyze(exp.id)
    challenger = analysis.arms[Arm.CHALLENGER]
    assert challenger.error_rate == pytest.approx(0.10, abs=0.01)
    assert challenger.accuracy == pytest.approx(0.70, abs=0.01)
    assert analysis.decision is Decision.ROLLBACK and "error rate" in analysis.reasons[0]


def test_non_finite_regression_output_scores_the_largest_error(service: ExperimentService):
    exp = service.create(spec(model_name="price", champion_version="1.0.0", challenger_version="2.0.0",
                              task="regression"))
    assignment = service.route("price", "k")
    for i, (value, actual) in enumerate([(101.0, 100.0), (104.0, 100.0), (np.inf, 100.0)]):
        service.record_prediction(f"p-{i}", assignment, 1.0, False, np.array([[value]], dtype=np.float32))
        outcome = service.record_outcome(f"p-{i}", actual)
    assert outcome.worst_case and outcome.abs_error is None
    arm = service.analyze(exp.id).arms[assignment.arm]
    assert arm.errors == 1 and arm.mae == pytest.approx((1 + 4 + 4) / 3)  # inf scored as the worst, 4


# -- stale routes ---------------------------------------------------------------------------------------

def test_prediction_under_a_stale_assignment_is_not_counted(db_path, promoter):
    cached = ExperimentService(ExperimentStore(db_path), ExperimentSettings(route_cache_ttl_seconds=3600), promoter,
                               version_exists)
    other = ExperimentService(ExperimentStore(db_path), ExperimentSettings(route_cache_ttl_seconds=0), promoter,
                              version_exists)
    exp = other.create(spec())
    assert cached.route("sentiment", "k") is not None  # cached for an hour in this worker
    other.stop(exp.id)
    stale = cached.route("sentiment", "k")
    assert stale is not None  # the cache still hands out the old arm...
    assert cached.record_prediction("late", stale, 3.0, False, probs(1)) is False  # ...but it is not counted
    assert sum(d.requests for d in cached.store.arm_data(exp.id).values()) == 0
    with pytest.raises(NotFound):
        cached.record_outcome("late", 1)


# -- the randomization unit ---------------------------------------------------------------------------

def test_routing_key_is_stored_and_clusters_the_analysis(make_service):
    service = make_service(min_samples_per_arm=50)
    exp = service.create(spec())
    feed(service, 600, champion=0.5, challenger=0.95, keys=12)  # 12 accounts, 50 requests each
    assert service.store.get_prediction("r-0").unit == router.unit_of("key-0")
    analysis = service.analyze(exp.id)
    units = {arm: m.scored_units for arm, m in analysis.arms.items()}
    assert sum(units.values()) == 12 and analysis.arms[Arm.CHAMPION].units == units[Arm.CHAMPION]
    accuracy = next(c for c in analysis.comparisons if c.metric == "accuracy")
    assert accuracy.method == "msprt-batch"  # keys, and batch means by default
    # a 45-point gain, but on 12 accounts: no promotion
    assert analysis.decision is Decision.CONTINUE
    assert any("too few independent units" in r for r in analysis.reasons)


def test_requests_without_a_key_are_their_own_units(make_service):
    service = make_service(min_samples_per_arm=50)
    exp = service.create(spec())
    feed(service, 600, champion=0.5, challenger=0.95)
    analysis = service.analyze(exp.id)
    assert sum(m.scored_units for m in analysis.arms.values()) == 600
    assert next(c for c in analysis.comparisons if c.metric == "accuracy").method == "msprt-batch"  # batch means
    assert analysis.decision is Decision.PROMOTE


def test_time_buckets_count_as_units_when_configured(make_service):
    service = make_service(min_samples_per_arm=50)
    # day-long buckets: 600 predictions (seconds on PostgreSQL under load) fall in one bucket, whatever the clock says
    exp = service.create(spec(variance=VarianceMethod.CLUSTER, cluster_seconds=86400.0))
    feed(service, 600, champion=0.5, challenger=0.95)
    analysis = service.analyze(exp.id)
    assert analysis.arms[Arm.CHALLENGER].time_buckets == 1 and analysis.arms[Arm.CHALLENGER].scored_units == 1
    assert analysis.decision is Decision.CONTINUE and any("time buckets" in r for r in analysis.reasons)


# -- designs create() refuses -------------------------------------------------------------------------

@pytest.mark.parametrize("overrides, words", [
    (dict(mode=ExperimentMode.FIXED, auto_apply=True), "needs planned_outcomes"),
    (dict(mode=ExperimentMode.SEQUENTIAL, planned_outcomes=1000), "planned_outcomes is for mode=fixed"),
    (dict(mode=ExperimentMode.FIXED, planned_outcomes=60), "min_samples_per_arm"),
    (dict(thresholds=ThresholdOverrides(promote_min_accuracy_gain=0.03)), "must exceed"),
])
def test_unsafe_designs_are_refused_with_what_to_do(service: ExperimentService, overrides, words):
    with pytest.raises(BadRequest) as info:
        service.create(spec(**overrides))
    assert words in info.value.message
    assert service.list() == []


def test_fixed_mode_with_a_planned_size_may_auto_apply(service: ExperimentService):
    exp = service.create(spec(mode=ExperimentMode.FIXED, auto_apply=True, planned_outcomes=1000))
    assert exp.planned_outcomes == 1000 and exp.mode is ExperimentMode.FIXED


def test_settings_refuse_a_target_at_the_margin():
    with pytest.raises(ValueError, match="TARGET_ACCURACY_GAIN"):
        ExperimentSettings(promote_min_accuracy_gain=0.02, target_accuracy_gain=0.02)


def test_champion_must_be_production_and_challenger_promotable(make_service):
    service = make_service(catalog=Catalog({"sentiment": "1.0.0"}, unvalidated={("sentiment", "1.2.0")}))
    with pytest.raises(Conflict) as info:
        service.create(spec(champion_version="1.1.0", challenger_version="1.2.0"))
    assert info.value.details["production_version"] == "1.0.0"  # says which one serves
    with pytest.raises(Conflict, match="validation"):
        service.create(spec(challenger_version="1.2.0"))
    with pytest.raises(Conflict, match="no production version"):
        service.create(spec(model_name="price", champion_version="1.0.0", challenger_version="2.0.0"))
    assert service.list() == []
    assert service.create(spec()).status is ExperimentStatus.RUNNING


def test_registry_catalog_reads_the_registry(tiny_store_template, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(tiny_store_template, store, symlinks=True)
    catalog = RegistryCatalog(ModelRegistry(store))
    assert catalog.production("tiny-regressor") == "1.0.0"
    assert catalog.production("no-such-model") is None
    facts = catalog.facts("tiny-regressor", "2.0.0")
    assert facts is not None and facts.status == "staging" and facts.validation_passed
    assert catalog.facts("tiny-regressor", "9.9.9") is None


# -- applying decisions -------------------------------------------------------------------------------

def test_a_refused_promotion_stops_the_experiment_instead_of_looping(db_path, caplog):
    class Refusing(RecordingPromoter):
        def __call__(self, name: str, version: str) -> None:
            raise PromotionRefused(f"{name} {version} has no passing validation report")

    service = ExperimentService(ExperimentStore(db_path), ExperimentSettings(min_samples_per_arm=50), Refusing(),
                                version_exists)
    exp = service.create(spec(auto_apply=True))
    feed(service, 600, champion=0.5, challenger=0.95)
    analysis = service.analyze(exp.id)  # no 409: the experiment ends with the reason
    assert analysis.decision is Decision.PROMOTE and not analysis.applied
    assert analysis.experiment.status is ExperimentStatus.STOPPED
    assert "promotion of 1.1.0 failed" in analysis.experiment.end_reason
    assert service.route("sentiment", "k") is None  # traffic back on the champion
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        assert service.apply_due_decisions() == []
        assert service.analyze(exp.id).experiment.status is ExperimentStatus.STOPPED
    assert not [r for r in caplog.records if r.exc_info]  # no traceback on the schedule


def test_a_challenger_with_another_serving_contract_is_refused_at_create_and_never_auto_promoted(db_path, tmp_path):
    """auto_apply promotes through the registry's own promote: a changed serving contract (here the class labels)
    is 409 contract_changed at create, and a promotion refused for it stops the experiment, champion kept."""
    from tests.support.models import CLASSIFIER_SIGNATURE, TinyClassifier, register_tiny

    root = tmp_path / "store"
    register_tiny(root, "sentiment", "1.0.0", TinyClassifier(), CLASSIFIER_SIGNATURE, tmp_path / "work")
    relabelled = CLASSIFIER_SIGNATURE.model_copy(update={"labels": ["sell", "hold", "buy"]})
    register_tiny(root, "sentiment", "1.1.0", TinyClassifier(), relabelled, tmp_path / "work", stage=None)
    registry = ModelRegistry(root)
    catalog = RegistryCatalog(registry)

    def promote(name: str, version: str) -> None:  # what serving/service.py wires in
        registry.promote(name, version, "production", actor="experiment")

    checked = ExperimentService(ExperimentStore(db_path), ExperimentSettings(min_samples_per_arm=50), promote,
                                version_exists, catalog=catalog)
    with pytest.raises(Conflict) as refused:
        checked.create(spec(auto_apply=True))
    assert refused.value.code == "contract_changed" and "labels" in refused.value.message
    assert refused.value.details["differences"][0]["field"] == "labels"

    unchecked = ExperimentService(ExperimentStore(db_path), ExperimentSettings(min_samples_per_arm=50), promote,
                                  version_exists)  # no catalog: nothing refuses it up front
    exp = unchecked.create(spec(auto_apply=True))
    feed(unchecked, 600, champion=0.5, challenger=0.95)
    analysis = unchecked.analyze(exp.id)
    assert analysis.decision is Decision.PROMOTE and not analysis.applied, analysis.reasons
    assert analysis.experiment.status is ExperimentStatus.STOPPED
    assert "contract" in analysis.experiment.end_reason and "labels" in analysis.experiment.end_reason
    assert registry.stages("sentiment")["production"] == "1.0.0"


def test_fixed_horizon_decides_once_on_its_planned_outcomes(make_service, promoter):
    service = make_service(min_samples_per_arm=50, min_units_per_arm=2)
    exp = service.create(spec(mode=ExperimentMode.FIXED, planned_outcomes=400, auto_apply=True))
    feed(service, 300, champion=0.5, challenger=0.95)
    early = service.analyze(exp.id)
    assert early.decision is Decision.CONTINUE and early.horizon_reached is False
    assert early.reasons[0].startswith("fixed horizon: 300 of 400")
    assert early.experiment.status is ExperimentStatus.RUNNING and promoter.calls == []
    feed(service, 200, champion=0.5, challenger=0.95, prefix="s")
    decided = service.analyze(exp.id)
    assert decided.horizon_reached and decided.decision is Decision.PROMOTE and decided.applied
    assert sum(m.outcomes for m in decided.arms.values()) == 400  # the first 400 outcomes, not 500
    assert promoter.calls == [("sentiment", "1.1.0")]


def test_fixed_horizon_without_a_decision_keeps_the_champion(make_service, promoter):
    service = make_service(min_samples_per_arm=50, min_units_per_arm=2)
    exp = service.create(spec(mode=ExperimentMode.FIXED, planned_outcomes=400, auto_apply=True))
    feed(service, 420, champion=0.6, challenger=0.6)
    analysis = service.analyze(exp.id)
    assert analysis.decision is Decision.CONTINUE and analysis.experiment.status is ExperimentStatus.STOPPED
    assert "champion kept" in analysis.experiment.end_reason and promoter.calls == []


# -- what an analysis reports -------------------------------------------------------------------------

def test_pnl_is_described_without_a_p_value(make_service):
    service = make_service(min_samples_per_arm=50)
    exp = service.create(spec())
    feed(service, 300)
    pnl = next(c for c in service.analyze(exp.id).comparisons if c.metric == "pnl")
    assert pnl.method == "description" and pnl.p_value is None and pnl.ci_low is None
    assert pnl.difference is not None


def test_analysis_reports_the_planned_and_expected_size(make_service):
    service = make_service(min_samples_per_arm=50)
    exp = service.create(spec())
    feed(service, 400, champion=0.6, challenger=0.6)
    accuracy = next(c for c in service.analyze(exp.id).comparisons if c.metric == "accuracy")
    assert accuracy.planned_total is not None and accuracy.expected_total is not None
    assert accuracy.expected_total < accuracy.planned_total
    assert accuracy.samples_needed_per_arm == pytest.approx(accuracy.planned_total / 2 - 200, abs=40)
    assert any(r.startswith("planned size") for r in service.analyze(exp.id).reasons)


@pytest.mark.parametrize("state_backend", ["sqlite"], indirect=True)  # legacy files are SQLite
def test_a_database_from_before_units_is_upgraded(db_path):
    db_path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(db_path)
    conn.executescript("""
        CREATE TABLE experiments (id TEXT PRIMARY KEY, model_name TEXT NOT NULL, status TEXT NOT NULL,
            spec TEXT NOT NULL, created_at REAL NOT NULL, ended_at REAL, end_reason TEXT);
        CREATE TABLE predictions (request_id TEXT PRIMARY KEY, experiment_id TEXT NOT NULL REFERENCES experiments(id),
            arm TEXT NOT NULL, version TEXT NOT NULL, served_at REAL NOT NULL, latency_ms REAL NOT NULL,
            error INTEGER NOT NULL, predicted_class INTEGER, predicted_value REAL);
        CREATE TABLE outcomes (request_id TEXT PRIMARY KEY REFERENCES predictions(request_id), actual REAL NOT NULL,
            correct INTEGER, abs_error REAL, pnl REAL, recorded_at REAL NOT NULL);
    """)
    old_spec = ('{"model_name": "sentiment", "champion_version": "1.0.0", "challenger_version": "1.1.0", '
                '"traffic_split": 0.5, "task": "classification", "mode": "fixed", "variance": "iid", '
                '"cluster_seconds": 60.0, "auto_apply": false, "min_samples_per_arm": null, "thresholds": {}}')
    conn.execute("INSERT INTO experiments VALUES ('old', 'sentiment', 'running', ?, 0, NULL, NULL)", (old_spec,))
    conn.execute("INSERT INTO predictions VALUES ('r1', 'old', 'champion', '1.0.0', 1, 2.0, 0, 1, NULL)")
    conn.execute("INSERT INTO outcomes VALUES ('r1', 1, 1, NULL, NULL, 2)")
    conn.commit()
    conn.close()
    service = ExperimentService(ExperimentStore(db_path), ExperimentSettings(), None, version_exists)
    assert service.store.get_prediction("r1").unit is None
    analysis = service.analyze("old")
    assert analysis.arms[Arm.CHAMPION].scored_units == 1 and analysis.experiment.variance is VarianceMethod.IID
