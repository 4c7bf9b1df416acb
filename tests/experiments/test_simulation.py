"""Decisions on simulated experiments with known truth (seeded; the whole file runs in seconds).

The second half is a small, seeded version of bench/experiments_sim.py: the vectorized engine
(experiments/simulation.py) is first checked to decide as ``decide`` does on the same requests, then A/A
experiments analysed every 50 outcomes must promote no more often than a binomial bound at alpha + 0.02
allows, and real gains must be promoted at the size the module reports."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from prediction_service.experiments import simulation as sim
from prediction_service.experiments.decision import DecisionContext, decide, planned_totals, primary_scale, run_test
from prediction_service.experiments.metrics import ArmData
from prediction_service.experiments.models import (Decision, ExperimentMode, ExperimentSpec, Thresholds, Unreachable,
                                                   VarianceMethod)

ALPHA = 0.05


def thresholds(**overrides) -> Thresholds:
    values = dict(alpha=ALPHA, power=0.8, promote_min_accuracy_gain=0.02, max_latency_degradation_ms=2.0,
                  rollback_error_rate_increase=0.5, rollback_accuracy_drop=0.05, min_samples_per_arm=100)
    return Thresholds(**(values | overrides))


def arm(rng: np.random.Generator, n: int, *, accuracy: float = 0.6, latency_ms: float = 10.0,
        error_rate: float = 0.0, mae: float | None = None, t0: float = 0.0) -> ArmData:
    """n served requests, all scored. Classification unless ``mae`` is given (regression)."""
    served_at = t0 + np.sort(rng.random(n)) * 3600
    error = rng.random(n) < error_rate
    actual = rng.integers(0, 3, n).astype(np.float64)
    correct = (rng.random(n) < accuracy).astype(np.float64)
    predicted = np.where(correct == 1, actual, (actual + 1) % 3)
    abs_error = np.full(n, np.nan)
    if mae is not None:
        abs_error = rng.exponential(mae, n)
        correct = np.full(n, np.nan)
    correct[error] = np.nan
    abs_error[error] = np.nan
    return ArmData(latency_ms=rng.normal(latency_ms, 2.0, n), error=error, served_at=served_at, actual=actual,
                   predicted_class=predicted, correct=correct, abs_error=abs_error, pnl=rng.normal(0, 1, n),
                   outcome_served_at=served_at)


def ctx(task: str = "classification", mode: ExperimentMode = ExperimentMode.FIXED, **overrides) -> DecisionContext:
    return DecisionContext(task=task, thresholds=thresholds(**overrides), mode=mode, traffic_split=0.1)


def run(sims: int, seed: int, champion: dict, challenger: dict, n: int = 10_000, split: float = 0.1,
        context: DecisionContext | None = None) -> dict[Decision, float]:
    rng = np.random.default_rng(seed)
    counts = dict.fromkeys(Decision, 0)
    for _ in range(sims):
        n_b = rng.binomial(n, split)
        result = decide(arm(rng, n - n_b, **champion), arm(rng, n_b, **challenger), context or ctx())
        counts[result.decision] += 1
    return {d: c / sims for d, c in counts.items()}


def test_aa_fixed_mode_rarely_promotes():
    rates = run(400, seed=1, champion={}, challenger={})
    print(f"A/A fixed, 400 experiments: {rates}")
    assert rates[Decision.PROMOTE] <= 0.07
    assert rates[Decision.ROLLBACK] <= 0.07


def test_aa_without_a_gain_threshold_promotes_at_most_alpha():
    """With the 2-point margin off, PROMOTE is a one-sided test at alpha/2: the statistics alone are valid."""
    rates = run(400, seed=2, champion={}, challenger={}, context=ctx(promote_min_accuracy_gain=0.0))
    assert rates[Decision.PROMOTE] <= ALPHA


def test_five_point_accuracy_gain_is_promoted():
    rates = run(200, seed=3, champion={"accuracy": 0.60}, challenger={"accuracy": 0.65}, n=20_000)
    print(f"+5 points, 20k requests at 10 %: {rates}")
    assert rates[Decision.PROMOTE] >= 0.8


def test_five_ms_latency_regression_is_rolled_back():
    rates = run(100, seed=4, champion={"latency_ms": 10.0}, challenger={"latency_ms": 15.0, "accuracy": 0.65},
                n=5_000)
    assert rates[Decision.ROLLBACK] == 1.0


def test_small_latency_change_blocks_nothing():
    rates = run(100, seed=5, champion={}, challenger={"latency_ms": 10.5, "accuracy": 0.65}, n=20_000)
    assert rates[Decision.ROLLBACK] == 0.0 and rates[Decision.PROMOTE] >= 0.8


def test_error_rate_increase_is_rolled_back():
    rates = run(50, seed=6, champion={"error_rate": 0.01}, challenger={"error_rate": 0.05}, n=20_000)
    assert rates[Decision.ROLLBACK] >= 0.95


def test_accuracy_drop_is_rolled_back():
    rates = run(50, seed=7, champion={"accuracy": 0.70}, challenger={"accuracy": 0.60}, n=20_000)
    assert rates[Decision.ROLLBACK] >= 0.95


def test_regression_uses_relative_mae_reduction():
    better = run(50, seed=8, champion={"mae": 1.0}, challenger={"mae": 0.85}, n=20_000,
                 context=ctx(task="regression"))
    worse = run(50, seed=9, champion={"mae": 1.0}, challenger={"mae": 1.2}, n=20_000, context=ctx(task="regression"))
    assert better[Decision.PROMOTE] >= 0.8
    assert worse[Decision.ROLLBACK] >= 0.95


def test_insufficient_samples_continue():
    rng = np.random.default_rng(10)
    result = decide(arm(rng, 500), arm(rng, 99, accuracy=0.9), ctx())
    assert result.decision is Decision.CONTINUE
    assert result.reasons[0].startswith("insufficient samples")
    # Enough requests but too few scored outcomes: still no PROMOTE.
    challenger = arm(rng, 200, accuracy=0.95)
    challenger.correct[:150] = np.nan
    result = decide(arm(rng, 2000), challenger, ctx())
    assert result.decision is Decision.CONTINUE and "insufficient samples" in result.reasons[0]


def test_sequential_mode_keeps_false_promotions_below_alpha_when_peeking():
    """A/A analysed after every batch of 500 requests, stopping at the first PROMOTE (or ROLLBACK)."""
    rng = np.random.default_rng(12)
    sims, looks, batch = 120, 10, 600
    promoted = {ExperimentMode.SEQUENTIAL: 0, ExperimentMode.FIXED: 0}
    for _ in range(sims):
        a, b = arm(rng, looks * batch), arm(rng, looks * batch)
        for mode in promoted:
            context = ctx(mode=mode, promote_min_accuracy_gain=0.0)
            for look in range(1, looks + 1):
                n = look * batch
                prefix = lambda d: ArmData(**{k: v[:n] for k, v in vars(d).items()})  # noqa: E731
                decision = decide(prefix(a), prefix(b), context).decision
                if decision is not Decision.CONTINUE:
                    promoted[mode] += decision is Decision.PROMOTE
                    break
    rates = {mode.value: count / sims for mode, count in promoted.items()}
    print(f"A/A with {looks} looks, no gain margin: false-promotion rate {rates}")
    assert rates["sequential"] <= ALPHA
    assert rates["fixed"] > rates["sequential"]  # same data, naive fixed-test peeking promotes more often


def test_sequential_mode_promotes_a_real_gain():
    rates = run(50, seed=13, champion={"accuracy": 0.60}, challenger={"accuracy": 0.66}, n=40_000,
                split=0.5, context=ctx(mode=ExperimentMode.SEQUENTIAL))
    assert rates[Decision.PROMOTE] >= 0.8


def test_cluster_variance_option_runs_through_decide():
    rng = np.random.default_rng(14)
    context = DecisionContext(task="classification", thresholds=thresholds(), mode=ExperimentMode.FIXED,
                              variance=VarianceMethod.CLUSTER, cluster_seconds=60.0, traffic_split=0.5)
    result = decide(arm(rng, 10_000, accuracy=0.6), arm(rng, 10_000, accuracy=0.66), context)
    assert result.primary is not None and result.primary.method == "cluster"
    assert result.primary.df == pytest.approx(59.0)  # one hour of served_at in minute buckets -> 60 clusters
    assert result.decision is Decision.PROMOTE


def test_sequential_mode_with_cluster_variance():
    rng = np.random.default_rng(15)
    context = DecisionContext(task="classification", thresholds=thresholds(), mode=ExperimentMode.SEQUENTIAL,
                              variance=VarianceMethod.CLUSTER, cluster_seconds=60.0, traffic_split=0.5)
    same = decide(arm(rng, 5_000), arm(rng, 5_000), context)
    assert same.primary is not None and same.primary.method == "msprt-cluster"
    assert same.decision is Decision.CONTINUE
    better = decide(arm(rng, 20_000, accuracy=0.6), arm(rng, 20_000, accuracy=0.68), context)
    assert better.decision is Decision.PROMOTE


# -- the simulation engine and a seeded small-scale bench ---------------------------------------------

CODES = {Decision.CONTINUE: 0, Decision.PROMOTE: 1, Decision.ROLLBACK: 2}


@pytest.mark.parametrize("scenario", [
    sim.Scenario("iid", gain=0.05),
    sim.Scenario("sticky keys", keys=30, key_sd=0.3),
    sim.Scenario("autocorrelated, time buckets", rho=0.5, variance=VarianceMethod.CLUSTER, requests_per_second=1.0,
                 cluster_seconds=50.0),
    sim.Scenario("fixed mode", mode=ExperimentMode.FIXED, gain=0.05),
    sim.Scenario("slower, failing challenger", latency_shift_ms=1.0, error_rate=0.05),
    sim.Scenario("regression, 10 % lower MAE", task="regression", gain=0.10, error_rate=0.0, mae=2.5),
    sim.Scenario("Zipf-skewed sticky keys, autocorrelated", keys=40, zipf=1.0, key_sd=0.3, rho=0.3, gain=0.05),
    sim.Scenario("sticky keys, variance=unit", keys=30, key_sd=0.3, variance=VarianceMethod.UNIT),
], ids=lambda s: s.name)
def test_simulation_engine_decides_as_decide_does(scenario):
    """Look by look, the engine's running sums give the p-values and decisions decide() gives on the same
    requests materialized as ArmData: the bench measures the module's code, not a re-implementation."""
    th = sim.default_thresholds(min_samples_per_arm=20, min_units_per_arm=5)
    ctx = sim.context(scenario, th, 0.3)
    requests = sim.generate(scenario, np.random.default_rng(5), 3, 3000, 0.3)
    looks = sim.summarize_looks(requests, scenario, 50)
    codes = sim.decisions(looks, ctx)
    estimates = {metric: sim._estimate(looks, metric) for metric in ("primary", "latency", "error")}
    compared = 0
    for s in range(3):
        for k in range(1, 60, 4):
            n = (k + 1) * 50
            result = decide(sim.arm_data(requests, s, n, False, scenario), sim.arm_data(requests, s, n, True, scenario),
                            ctx)
            assert CODES[result.decision] == codes[s, k], (s, k, result.reasons)
            for metric, comparison in (("primary", result.primary), ("latency", result.latency),
                                       ("error", result.error_rate)):
                est = estimates[metric]
                level = float(looks.champion["primary"].mean[s, k]) if scenario.task == "regression" else 1.0
                tau = {"primary": th.target_accuracy_gain * level, "latency": th.max_latency_degradation_ms,
                       "error": max(float(looks.champion["error"].mean[s, k]) * th.rollback_error_rate_increase, 0.01)}
                ours = run_test(type(est)(est.difference[s, k], est.variance[s, k], est.df[s, k], est.method), ctx,
                                tau[metric])
                assert comparison.p_value == pytest.approx(float(ours.p_value), abs=1e-9), (metric, s, k)
                compared += 1
            est = estimates["primary"]
            at_look = type(est)(**{f: (v if f == "method" else np.broadcast_to(np.asarray(v), est.variance.shape)[s, k])
                                   for f, v in vars(est).items()})
            a, b = looks.champion["primary"], looks.challenger["primary"]
            planned = float(planned_totals(at_look, a.n[s, k], b.n[s, k], ctx, primary_scale(ctx, a.mean[s, k])))
            assert result.primary.planned_total == (None if planned == float("inf") else planned)
    assert compared == 3 * 15 * 3


def _bound(sims: int, rate: float) -> int:
    """A count a true rate of ``rate`` exceeds with probability < 0.1 %."""
    return int(sps.binom.ppf(0.999, sims, rate))


@pytest.mark.parametrize("scenario, sims", [
    (sim.Scenario("A/A iid"), 300),
    (sim.Scenario("A/A sticky by 500 keys", keys=500, key_sd=0.3), 150),
    (sim.Scenario("A/A sticky by 500 Zipf-skewed symbols", keys=500, zipf=1.0, key_sd=0.3), 150),
    (sim.Scenario("A/A AR(1) 0.5, the default variance", rho=0.5), 150),
    (sim.Scenario("A/A AR(1) 0.5, time buckets", rho=0.5, variance=VarianceMethod.CLUSTER), 150),
], ids=lambda x: x.name if isinstance(x, sim.Scenario) else str(x))
def test_seeded_aa_false_promotions_stay_within_a_binomial_bound(scenario, sims):
    """A/A, default settings, analysed every 50 outcomes up to the size the module plans (auto_apply)."""
    th = sim.default_thresholds()
    result = sim.simulate(scenario, th, sims, seed=20261130)
    print(f"{scenario.name}: {result.promoted}/{sims} promoted, {result.rolled_back} rolled back "
          f"over {result.total} outcomes")
    assert result.promoted <= _bound(sims, th.alpha + 0.02)
    assert result.rolled_back <= _bound(sims, th.alpha + 0.02)


def test_peeking_without_the_randomization_unit_would_fail_the_same_bound():
    """The same AR(1) A/A run with variance=unit (the default before batch means): the bound is not vacuous."""
    th = sim.default_thresholds()
    result = sim.simulate(sim.Scenario("AR(1) 0.5, unit", rho=0.5, variance=VarianceMethod.UNIT), th, 150,
                          seed=20261130)
    assert result.promoted > _bound(150, th.alpha + 0.02)


@pytest.mark.parametrize("gain", [0.02, 0.05])
def test_real_gains_are_promoted_at_the_size_the_module_reports(gain):
    th = sim.default_thresholds()
    scenario = sim.Scenario(f"+{gain:.0%}", gain=gain)
    result = sim.simulate(scenario, th, 200, seed=7)
    assert result.total == sim.planned_total(scenario, th, 0.1)
    assert result.promoted >= sps.binom.ppf(0.001, 200, th.power)
    assert result.rolled_back <= _bound(200, 0.005)


def test_five_points_worse_is_rolled_back_and_never_promoted():
    th = sim.default_thresholds()
    result = sim.simulate(sim.Scenario("-5 points", gain=-0.05), th, 200, seed=8)
    assert result.rolled_back >= sps.binom.ppf(0.001, 200, 0.8)
    assert result.promoted <= _bound(200, 0.005)


# -- the split design's defects of issue 27 (D1-D3; D4 is in test_stats.py) -------------------------------------

def test_the_default_variance_keeps_autocorrelated_aa_within_the_bound():
    """D1: outcomes autocorrelated within each arm (DAR(1) rho 0.5), default settings, auto_apply peeking every 50
    outcomes up to the planned size: variance=unit (the old default) fails this very bound
    (test_peeking_without_the_randomization_unit_would_fail_the_same_bound); the default, batch means, keeps it."""
    th = sim.default_thresholds()
    scenario = sim.Scenario("A/A AR(1) 0.5", rho=0.5)
    assert scenario.variance is ExperimentSpec.model_fields["variance"].default is VarianceMethod.BATCH
    result = sim.simulate(scenario, th, 150, seed=20261130)
    assert result.promoted <= _bound(150, th.alpha + 0.02)


def test_plan_says_no_promotion_is_reachable_with_too_few_sticky_keys():
    """D2: with K sticky keys the challenger keeps about K/10 of them whatever the size, so the unit rule can never
    pass: the analysis says so (typed) instead of a planned size that recedes (1.7 M -> 6.8 M here before)."""
    th = sim.default_thresholds()
    for keys, any_split in ((50, False), (200, True)):
        scenario = sim.Scenario(f"{keys} keys", keys=keys, key_sd=0.3)
        ctx = sim.context(scenario, th, 0.1)
        requests = sim.generate(scenario, np.random.default_rng(1), 1, 40_000, 0.1)
        for n in (10_000, 40_000):
            result = decide(sim.arm_data(requests, 0, n, False, scenario), sim.arm_data(requests, 0, n, True, scenario),
                            ctx)
            reach = result.reachability
            assert result.primary.planned_total is None and result.primary.samples_needed_per_arm is None
            assert reach is not None and not reach.promotion_reachable and not reach.size_reachable
            assert reach.why_not is Unreachable.UNITS and reach.min_units_per_arm == 30
            assert reach.units_challenger < 30 and reach.units_total == pytest.approx(keys, rel=0.05)
            assert any(r.startswith("no promotion is reachable at this split") for r in result.reasons)
            assert not any(r.startswith("planned size") for r in result.reasons)
        if any_split:  # 200 keys: a split between 15 % and 85 % would give both arms 30
            assert reach.splits == pytest.approx((0.15, 0.85), abs=0.01) and "traffic_split between" in reach.reason
        else:  # 59 or fewer: no split can
            assert reach.splits is None and "no split" in reach.reason


def test_the_unit_rule_counts_effective_clusters_not_distinct_keys():
    """D3: 60 distinct keys in the challenger, one of them with three quarters of its outcomes: about 1.8
    effective clusters. A 15-point gain on them is no promotion (distinct keys would have let it through)."""
    rng = np.random.default_rng(41)
    champion = arm(rng, 4000, accuracy=0.6)
    challenger = arm(rng, 2000, accuracy=0.75)
    keys = np.array([f"sym-{0 if i < 1500 else 1 + i % 59}" for i in range(2000)], dtype=object)
    challenger.unit, challenger.outcome_unit = keys, keys
    context = DecisionContext(task="classification", thresholds=sim.default_thresholds(), mode=ExperimentMode.FIXED,
                              traffic_split=0.33)
    result = decide(champion, challenger, context)
    assert result.decision is Decision.CONTINUE
    units = next(r for r in result.reasons if r.startswith("too few independent units"))
    assert "challenger=1.8 effective" in units
    assert result.primary.df < 3


# -- shadow experiments: the paired test ---------------------------------------------------------------

@pytest.mark.parametrize("scenario", [
    sim.ShadowScenario("iid, +3 points", gain=0.03),
    sim.ShadowScenario("Zipf-skewed keys that differ by model, autocorrelated", keys=40, zipf=1.0, key_sd=0.3,
                       pair_key_sd=0.3, rho=0.3, gain=0.03),
    sim.ShadowScenario("regression, 5 % lower MAE", task="regression", gain=0.05, error_rate=0.0, mae=2.5),
    sim.ShadowScenario("worse, fixed", gain=-0.05, mode=ExperimentMode.FIXED),
], ids=lambda s: s.name)
def test_shadow_engine_decides_as_decide_paired_does(scenario):
    """Look by look, the engine's running sums of d give decide_paired's p-values and decisions on the same pairs."""
    from prediction_service.experiments.paired import decide_paired, evaluate_paired

    th = sim.default_thresholds(min_samples_per_arm=20, min_units_per_arm=5)
    ctx = sim.shadow_context(scenario, th)
    requests = sim.generate_shadow(scenario, np.random.default_rng(5), 3, 3000)
    ev = evaluate_paired(sim.shadow_inputs(requests, 50), ctx)
    seen = set()
    for s in range(3):
        for k in range(1, 60, 4):
            result = decide_paired(sim.paired_data(requests, s, (k + 1) * 50), ctx)
            assert CODES[result.decision] == ev.decision[s, k], (s, k, result.reasons)
            assert result.primary.p_value == pytest.approx(float(ev.test.p_value[s, k]), abs=1e-9), (s, k)
            seen.add(result.decision)
    assert len(seen) > 1 or scenario.keys  # the comparison covers decisions, not only CONTINUE


def test_shadow_correlation_is_the_one_stated():
    scenario = sim.ShadowScenario("+2", gain=0.02)
    requests = sim.generate_shadow(scenario, np.random.default_rng(3), 20, 20_000)
    a, b = requests.champion.ravel(), requests.challenger.ravel()
    assert np.corrcoef(a, b)[0, 1] == pytest.approx(0.8, abs=0.01)
    assert a.mean() == pytest.approx(0.70, abs=0.005) and b.mean() - a.mean() == pytest.approx(0.02, abs=0.003)


@pytest.mark.parametrize("scenario", [
    sim.ShadowScenario("A/A iid"),
    sim.ShadowScenario("A/A AR(1) 0.5", rho=0.5),
    sim.ShadowScenario("A/A 500 Zipf(0.5) symbols that differ by model", keys=500, zipf=0.5, key_sd=0.3,
                       pair_key_sd=0.3),
], ids=lambda s: s.name)
def test_seeded_shadow_aa_false_promotions_stay_within_a_binomial_bound(scenario):
    """Peeking every 50 pairs to 3x a tenth of the split's planned size (bench/experiments_sim.py --design shadow)."""
    th = sim.default_thresholds()
    horizon = 3 * sim.planned_total(sim.Scenario("+2", gain=0.02), th, 0.1) // 10
    result = sim.simulate_shadow(scenario, th, 200, horizon, seed=20261130)
    assert result.promoted <= _bound(200, th.alpha)
    assert result.rolled_back <= _bound(200, th.alpha)


def test_shadow_promotes_two_points_within_a_tenth_of_the_split_size():
    th = sim.default_thresholds()
    budget = sim.planned_total(sim.Scenario("+2", gain=0.02), th, 0.1) // 10
    result = sim.simulate_shadow(sim.ShadowScenario("+2", gain=0.02), th, 200, budget, seed=7)
    assert result.total <= budget
    assert result.promoted >= sps.binom.ppf(0.001, 200, th.power)
    assert result.rolled_back == 0
