"""The paired test of a shadow experiment: both models scored on the same requests (experiments/paired.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from prediction_service.experiments import stats
from prediction_service.experiments.decision import DecisionContext
from prediction_service.experiments.models import Decision, ExperimentMode, Thresholds, Unreachable
from prediction_service.experiments.paired import PairedData, decide_paired


def thresholds(**overrides) -> Thresholds:
    values = dict(alpha=0.05, power=0.8, promote_min_accuracy_gain=0.01, max_latency_degradation_ms=2.0,
                  rollback_error_rate_increase=0.5, rollback_accuracy_drop=0.02, min_samples_per_arm=100,
                  target_accuracy_gain=0.02, min_units_per_arm=30)
    return Thresholds(**(values | overrides))


def ctx(task: str = "classification", mode: ExperimentMode = ExperimentMode.SEQUENTIAL, **overrides) -> DecisionContext:
    return DecisionContext(task=task, thresholds=thresholds(**overrides), mode=mode)


def latent(rng: np.random.Generator, n: int, correlation: float = 0.95, rho: float = 0.0
           ) -> tuple[np.ndarray, np.ndarray]:
    """Two standard-normal series correlated ``correlation`` per request, each AR(1) ``rho`` over requests."""
    def ar1() -> np.ndarray:
        e = rng.standard_normal(n)
        x = np.empty(n)
        x[0] = e[0]
        for i in range(1, n):
            x[i] = rho * x[i - 1] + math.sqrt(1 - rho * rho) * e[i]
        return x

    x_a = ar1() if rho else rng.standard_normal(n)
    x_b = correlation * x_a + math.sqrt(1 - correlation**2) * (ar1() if rho else rng.standard_normal(n))
    return x_a, x_b


def classification(rng: np.random.Generator, n: int, acc_a: float, acc_b: float, *, units=None, rho: float = 0.0,
                   correlation: float = 0.95) -> PairedData:
    """Both models' correctness on n requests: right when a shared-difficulty latent is below its threshold."""
    x_a, x_b = latent(rng, n, correlation, rho)
    champion = (x_a < sps.norm.ppf(acc_a)).astype(np.float64)
    challenger = (x_b < sps.norm.ppf(acc_b)).astype(np.float64)
    return PairedData(champion, challenger, 1.7e9 + np.arange(n, dtype=np.float64), units)


def test_a_clearly_better_challenger_is_promoted():
    data = classification(np.random.default_rng(1), 5000, 0.70, 0.75)
    assert np.corrcoef(data.champion, data.challenger)[0, 1] > 0.7  # the errors coincide: the pairing pays
    result = decide_paired(data, ctx())
    p = result.primary
    assert result.decision is Decision.PROMOTE
    assert p.method == "paired-msprt-batch" and p.metric == "accuracy"
    assert p.difference == pytest.approx(data.challenger.mean() - data.champion.mean())
    assert p.champion == pytest.approx(data.champion.mean()) and p.challenger == pytest.approx(data.challenger.mean())
    assert p.ci_low > 0.01 and p.ci_low < p.difference < p.ci_high and p.p_value < 0.05 and p.df > 100
    assert result.reasons[0].startswith("accuracy gain") and "5000 paired outcomes" in result.reasons[0]
    assert result.latency is None and result.error_rate is None and result.pnl is None
    # the split's Welch test on the same two samples, as if independent, is far less sure
    assert sps.ttest_ind(data.challenger, data.champion, equal_var=False).pvalue > 100 * p.p_value


@pytest.mark.parametrize("mode", [ExperimentMode.SEQUENTIAL, ExperimentMode.FIXED])
def test_identical_models_continue(mode):
    rng = np.random.default_rng(2)
    same = (rng.random(5000) < 0.7).astype(np.float64)
    result = decide_paired(PairedData(same, same.copy(), np.arange(5000.0), None), ctx(mode=mode))
    assert result.decision is Decision.CONTINUE
    assert result.primary.difference == 0.0 and result.primary.p_value == 1.0
    assert any("below the 1.00% margin" in r for r in result.reasons)
    # equally good but different models (A/A): no decision either
    result = decide_paired(classification(rng, 5000, 0.7, 0.7), ctx(mode=mode))
    assert result.decision is Decision.CONTINUE and result.primary.p_value > 0.05


def test_a_clearly_worse_challenger_is_rolled_back():
    result = decide_paired(classification(np.random.default_rng(3), 5000, 0.70, 0.64), ctx())
    assert result.decision is Decision.ROLLBACK
    assert result.reasons[0].startswith("accuracy dropped by") and result.primary.ci_high < -0.02


def test_few_sticky_units_never_promote_and_say_so():
    """10 routing keys: a 10-point gain is no promotion, whatever the number of outcomes."""
    rng = np.random.default_rng(4)
    for n in (2_000, 20_000):
        units = np.array([f"key-{k}" for k in rng.integers(0, 10, n)], dtype=object)
        result = decide_paired(classification(rng, n, 0.60, 0.70, units=units), ctx())
        assert result.decision is Decision.CONTINUE
        assert any(r.startswith("too few independent units") for r in result.reasons)
        reach = result.reachability
        assert reach is not None and not reach.promotion_reachable and reach.why_not is Unreachable.UNITS
        assert reach.units_total == pytest.approx(10, rel=0.1) and "no promotion is reachable" in reach.reason
        assert result.primary.df < 10 and result.primary.planned_total is None
    # the same gain with every request its own unit, or 500 keys, promotes
    data = classification(rng, 5000, 0.60, 0.70)
    assert decide_paired(data, ctx()).decision is Decision.PROMOTE
    units = np.array([f"key-{k}" for k in rng.integers(0, 500, 5000)], dtype=object)
    assert decide_paired(PairedData(data.champion, data.challenger, data.served_at, units), ctx()).decision \
        is Decision.PROMOTE


def test_keys_whose_models_differ_widen_the_interval():
    """The challenger better on half the keys and worse on the other half: the unit-clustered variance sees
    that the average rests on 20 keys, not on 8,000 requests."""
    rng = np.random.default_rng(5)
    n, keys = 8000, 20
    key = rng.integers(0, keys, n)
    shift = np.where(np.arange(keys) % 2 == 0, 0.4, -0.4)[key]
    x_a, x_b = latent(rng, n)
    champion = (x_a < 0.5).astype(np.float64)
    challenger = (x_b < 0.5 + shift).astype(np.float64)
    labels = np.array([f"k{k}" for k in key], dtype=object)
    fixed = ctx(mode=ExperimentMode.FIXED, min_units_per_arm=5)
    keyed = decide_paired(PairedData(champion, challenger, np.arange(float(n)), labels), fixed).primary
    single = decide_paired(PairedData(champion, challenger, np.arange(float(n)), None), fixed).primary
    assert keyed.ci_high - keyed.ci_low > 2 * (single.ci_high - single.ci_low)


@pytest.mark.parametrize("mode", [ExperimentMode.FIXED, ExperimentMode.SEQUENTIAL])
def test_autocorrelated_differences_get_a_wider_interval_than_the_iid_formula(mode):
    rng = np.random.default_rng(6)
    n = 6000
    data = classification(rng, n, 0.70, 0.70, rho=0.9, correlation=0.8)
    d = data.challenger - data.champion
    result = decide_paired(data, ctx(mode=mode))
    p = result.primary
    iid_se = d.std(ddof=1) / math.sqrt(n)
    se = abs(p.difference / p.statistic) if p.difference and p.statistic else None
    if mode is ExperimentMode.FIXED:
        iid_half = sps.t.ppf(0.975, n - 1) * iid_se
        assert (p.ci_high - p.ci_low) / 2 > 1.5 * iid_half
    assert np.corrcoef(d[1:], d[:-1])[0, 1] > 0.3  # the latent AR(1) 0.9 leaves d autocorrelated
    assert se is not None and se > 1.5 * iid_se  # about 2.2 times here
    # the batches also cost degrees of freedom: one per batch of about n^(1/3) pairs, not one per pair
    assert p.df <= n / stats.batch_size(n)


def test_regression_gain_is_the_relative_mae_reduction():
    rng = np.random.default_rng(7)
    n = 5000
    x_a, x_b = latent(rng, n, 0.9)
    champion = np.abs(x_a) * 2.0
    better = decide_paired(PairedData(champion, np.abs(x_b) * 1.8, np.arange(float(n)), None), ctx("regression"))
    assert better.decision is Decision.PROMOTE and better.primary.metric == "abs_error"
    assert better.primary.difference < 0  # challenger minus champion absolute error
    assert better.reasons[0].startswith("MAE reduction") and "%" in better.reasons[0]
    gain = float(better.reasons[0].split()[2].rstrip("%")) / 100
    assert gain == pytest.approx(-better.primary.difference / champion.mean(), abs=1e-4)
    assert gain == pytest.approx(0.10, abs=0.02)
    worse = decide_paired(PairedData(champion, np.abs(x_b) * 2.3, np.arange(float(n)), None), ctx("regression"))
    assert worse.decision is Decision.ROLLBACK and worse.reasons[0].startswith("MAE rose by")
    # a relative gain: the same data in other units decides the same
    scaled = decide_paired(PairedData(champion * 1000, np.abs(x_b) * 1800, np.arange(float(n)), None),
                           ctx("regression"))
    assert scaled.decision is Decision.PROMOTE
    assert scaled.primary.p_value == pytest.approx(better.primary.p_value, rel=1e-6)


@pytest.mark.parametrize("mode", [ExperimentMode.SEQUENTIAL, ExperimentMode.FIXED])
def test_huge_t_gives_a_finite_interval_of_positive_width(mode):
    """The challenger right almost always, the champion almost never: |t| in the hundreds and more."""
    rng = np.random.default_rng(8)
    n = 20_000
    champion = (rng.random(n) < 0.001).astype(np.float64)
    challenger = (rng.random(n) > 0.001).astype(np.float64)
    result = decide_paired(PairedData(champion, challenger, np.arange(float(n)), None), ctx(mode=mode))
    p = result.primary
    assert result.decision is Decision.PROMOTE and p.statistic > 300
    assert p.ci_low is not None and p.ci_high is not None
    assert math.isfinite(p.ci_low) and math.isfinite(p.ci_high)
    assert p.ci_low < p.difference < p.ci_high and p.ci_high - p.ci_low > 1e-4
    assert p.p_value is not None and p.p_value < 1e-100


def test_pairs_are_put_in_time_order_and_unscored_pairs_dropped():
    rng = np.random.default_rng(9)
    data = classification(rng, 3000, 0.70, 0.70, rho=0.8, correlation=0.8)
    shuffle = rng.permutation(3000)
    shuffled = PairedData(data.champion[shuffle], data.challenger[shuffle], data.served_at[shuffle], None)
    assert decide_paired(shuffled, ctx()).primary == decide_paired(data, ctx()).primary
    with_gaps = PairedData(np.append(data.champion, np.nan), np.append(data.challenger, 1.0),
                           np.append(data.served_at, 2e9), None)
    assert decide_paired(with_gaps, ctx()).primary == decide_paired(data, ctx()).primary
    # every request its own unit, by label or by None, is the same analysis
    labels = np.array([f"request:{i}" for i in range(3000)], dtype=object)
    labelled = PairedData(data.champion, data.challenger, data.served_at, labels)
    assert decide_paired(labelled, ctx()).primary.p_value == pytest.approx(decide_paired(data, ctx()).primary.p_value)


def test_fixed_mode_is_a_t_test_and_too_few_pairs_continue():
    rng = np.random.default_rng(10)
    data = classification(rng, 5000, 0.70, 0.75)
    fixed = decide_paired(data, ctx(mode=ExperimentMode.FIXED)).primary
    sequential = decide_paired(data, ctx()).primary
    assert fixed.method == "paired-batch" and fixed.p_value < sequential.p_value
    assert fixed.ci_high - fixed.ci_low < sequential.ci_high - sequential.ci_low  # one look vs always valid
    few = classification(rng, 99, 0.5, 1.0)
    result = decide_paired(few, ctx())
    assert result.decision is Decision.CONTINUE and result.reasons[0].startswith("insufficient samples")
    assert result.reachability is None
    empty = decide_paired(PairedData(np.empty(0), np.empty(0), np.empty(0), None), ctx())
    assert empty.decision is Decision.CONTINUE and empty.primary.method == "none"


def test_planned_size_is_reported_while_reachable():
    result = decide_paired(classification(np.random.default_rng(11), 1000, 0.70, 0.70), ctx())
    p = result.primary
    assert result.decision is Decision.CONTINUE
    assert p.planned_total is not None and 500 < p.planned_total < 20_000
    assert p.expected_total is not None and p.expected_total < p.planned_total
    assert result.reachability is not None and result.reachability.size_reachable
    assert any(r.startswith("planned size") for r in result.reasons)
