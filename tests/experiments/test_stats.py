"""Welch equals scipy; cluster-robust variance keeps alpha under autocorrelation; mSPRT survives peeking."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from prediction_service.experiments import stats

ALPHA = 0.05


@pytest.mark.parametrize("n_a, n_b, shift, scale_b", [(50, 50, 0.0, 1.0), (900, 100, 0.3, 2.5), (7, 13, -1.0, 0.2)])
def test_welch_matches_scipy(n_a, n_b, shift, scale_b):
    rng = np.random.default_rng(n_a + n_b)
    champion = rng.normal(10, 1, n_a)
    challenger = rng.normal(10 + shift, scale_b, n_b)
    ours = stats.welch(champion, challenger, ALPHA)
    ref = sps.ttest_ind(challenger, champion, equal_var=False)
    assert ours.statistic == pytest.approx(ref.statistic, abs=1e-9)
    assert ours.p_value == pytest.approx(ref.pvalue, abs=1e-9)
    assert ours.df == pytest.approx(ref.df, rel=1e-9)
    ci = ref.confidence_interval(1 - ALPHA)
    assert (ours.ci_low, ours.ci_high) == pytest.approx((ci.low, ci.high), abs=1e-9)
    assert ours.difference == pytest.approx(challenger.mean() - champion.mean())


def test_welch_zero_variance_is_defined():
    same = stats.welch(np.ones(10), np.ones(10))
    assert same.p_value == 1.0 and same.statistic == 0.0
    different = stats.welch(np.zeros(10), np.ones(10))
    assert different.p_value == 0.0 and different.statistic == np.inf


def test_cohens_d_and_sample_size():
    assert stats.cohens_d(1.0, 1.0, 0.5) == pytest.approx(0.5)
    # Classic figure: d = 0.5, alpha 0.05, power 0.8, equal split -> ~63 per arm (normal approximation).
    total = stats.required_total(1.0, 1.0, 0.5, 0.05, 0.8, 0.5)
    assert total / 2 == pytest.approx(62.8, abs=0.5)
    assert stats.samples_still_needed(60, 1.0, 60, 1.0, 0.5, 0.05, 0.8, 0.5) == 3
    assert stats.samples_still_needed(100, 1.0, 100, 1.0, 0.5, 0.05, 0.8, 0.5) == 0


def test_cluster_robust_with_singleton_clusters_is_close_to_welch():
    rng = np.random.default_rng(1)
    a, b = rng.normal(0, 1, 400), rng.normal(0.2, 1, 300)
    cluster = stats.cluster_robust(a, np.arange(400), b, np.arange(400, 700))
    welch = stats.welch(a, b)
    assert cluster.se == pytest.approx(welch.se, rel=0.01)
    assert cluster.difference == pytest.approx(welch.difference)


def test_cluster_robust_keeps_alpha_when_outcomes_are_autocorrelated():
    """A/A with arm-specific per-minute shocks: Welch (iid) over-rejects, the bucketed variance does not."""
    rng = np.random.default_rng(7)
    sims, buckets, per_bucket = 400, 40, 25
    welch_rejects = cluster_rejects = 0
    clusters = np.repeat(np.arange(buckets), per_bucket)
    for _ in range(sims):
        a = (rng.normal(0, 0.5, buckets)[:, None] + rng.normal(0, 1, (buckets, per_bucket))).ravel()
        b = (rng.normal(0, 0.5, buckets)[:, None] + rng.normal(0, 1, (buckets, per_bucket))).ravel()
        welch_rejects += stats.welch(a, b).p_value < ALPHA
        cluster_rejects += stats.cluster_robust(a, clusters, b, clusters).p_value < ALPHA
    print(f"A/A autocorrelated: welch false-positive rate {welch_rejects / sims:.3f}, "
          f"cluster-robust {cluster_rejects / sims:.3f}")
    assert welch_rejects / sims > 0.3
    assert cluster_rejects / sims <= 0.08


def _peeking_rates(effect: float, sims: int = 2000, looks: int = 20, batch: int = 100, tau: float = 0.05):
    """Bernoulli outcomes (accuracy 0.6) analysed after every batch; rate of experiments ever rejected."""
    rng = np.random.default_rng(11)
    a = rng.random((sims, looks * batch)) < 0.6
    b = rng.random((sims, looks * batch)) < 0.6 + effect
    n = np.arange(1, looks + 1) * batch

    def cumulative(x):
        sums = np.cumsum(x, axis=1)[:, n - 1]
        mean = sums / n
        return mean, mean * (1 - mean) * n / (n - 1)  # sample variance of 0/1 data

    mean_a, var_a = cumulative(a)
    mean_b, var_b = cumulative(b)
    fixed = stats.welch_from_summary(n, mean_a, var_a, n, mean_b, var_b, ALPHA)
    sequential = stats.msprt(fixed.difference, fixed.se**2, tau=tau, alpha=ALPHA)
    naive = np.mean((fixed.p_value < ALPHA).any(axis=1))
    always_valid = np.mean((sequential.p_value < ALPHA).any(axis=1))
    final_fixed = np.mean(fixed.p_value[:, -1] < ALPHA)
    return naive, always_valid, final_fixed


def test_naive_peeking_inflates_alpha_but_msprt_does_not():
    naive, always_valid, final_fixed = _peeking_rates(effect=0.0)
    print(f"A/A, 20 looks: naive Welch peeking {naive:.3f}, mSPRT {always_valid:.3f}, single final look "
          f"{final_fixed:.3f}")
    assert final_fixed <= 0.065  # one planned look is fine
    assert naive > 2 * ALPHA  # stopping at the first p < alpha is not
    assert always_valid <= ALPHA


def test_msprt_still_detects_a_real_effect():
    _, always_valid, _ = _peeking_rates(effect=0.05, sims=500, looks=40)
    assert always_valid >= 0.8


def test_msprt_confidence_sequence_is_wider_than_fixed_interval():
    fixed = stats.welch(np.random.default_rng(0).normal(0, 1, 500), np.random.default_rng(1).normal(0.1, 1, 500))
    seq = stats.msprt_from_test(fixed, tau=0.1)
    assert seq.ci_low < fixed.ci_low and seq.ci_high > fixed.ci_high
    assert seq.p_value >= fixed.p_value


# -- randomization units, sizes for the rule applied ---------------------------------------------------

def test_unit_clustering_without_keys_is_welch():
    rng = np.random.default_rng(21)
    a, b = rng.normal(0, 1, 300), rng.normal(0.1, 2, 80)
    est = stats.estimate(a, b, np.array([f"r{i}" for i in range(300)]), np.array([f"s{i}" for i in range(80)]))
    ours = stats.fixed_test(est, ALPHA)
    ref = sps.ttest_ind(b, a, equal_var=False)
    assert est.method == "welch"
    assert float(ours.p_value) == pytest.approx(ref.pvalue, abs=1e-12)
    assert float(ours.df) == pytest.approx(ref.df, rel=1e-9)
    assert stats.estimate(a, b).variance == pytest.approx(est.variance)  # no labels: one unit per request


def test_unit_clustering_matches_the_sandwich_formula_and_sees_key_effects():
    """20 keys per arm, each key's outcomes shifted by a key effect: CR1 by key, by hand."""
    rng = np.random.default_rng(22)
    keys_a, keys_b = rng.integers(0, 20, 2000), rng.integers(20, 40, 2000)
    effect = rng.normal(0, 0.5, 40)
    a = effect[keys_a] + rng.normal(0, 1, 2000)
    b = effect[keys_b] + rng.normal(0, 1, 2000)
    est = stats.estimate(a, b, keys_a, keys_b)

    def cr1(y, g):
        resid = np.array([np.sum(y[g == k] - y.mean()) for k in np.unique(g)])
        groups = resid.size
        return groups / (groups - 1) * np.sum(resid**2) / y.size**2

    assert est.method == "cluster-unit"
    assert est.variance == pytest.approx(cr1(a, keys_a) + cr1(b, keys_b), rel=1e-12)
    assert est.variance > 5 * stats.estimate(a, b).variance  # the key effect is what the unit variance sees
    v_a, v_b = cr1(a, keys_a), cr1(b, keys_b)
    # df on effective clusters, 1 / sum of squared shares (just under the 20 keys: their counts differ a little)
    g_a, g_b = (y.size**2 / np.sum(np.unique(g, return_counts=True)[1] ** 2.0) for y, g in ((a, keys_a), (b, keys_b)))
    assert 19 < g_a < 20 and 19 < g_b < 20
    assert est.df == pytest.approx((v_a + v_b) ** 2 / (v_a**2 / (g_a - 1) + v_b**2 / (g_b - 1)))


def test_unit_variance_is_never_below_independent_requests():
    """Two keys that happen to agree give a CR1 variance near zero; the estimate keeps s^2/n instead."""
    a = np.tile([0.0, 1.0], 500)
    b = np.tile([0.0, 1.0], 500)
    keys = np.repeat([0, 1], 500)  # each key: half ones -> identical key means, zero residual sums
    est = stats.estimate(a, b, keys, keys + 2)
    assert est.variance == pytest.approx(a.var(ddof=1) / 1000 + b.var(ddof=1) / 1000)


def test_two_way_clustering_without_keys_is_the_time_bucket_variance():
    rng = np.random.default_rng(23)
    a, b = rng.normal(0, 1, 600), rng.normal(0, 1, 400)
    ta, tb = np.sort(rng.random(600)) * 40, np.sort(rng.random(400)) * 40
    est = stats.estimate(a, b, None, None, np.floor(ta), np.floor(tb))
    legacy = stats.cluster_robust(a, np.floor(ta), b, np.floor(tb))
    assert est.method == "cluster"
    assert np.sqrt(est.variance) == pytest.approx(legacy.se, rel=1e-12)
    assert est.df == pytest.approx(39.0)


def test_t_to_z_keeps_the_tail_probability():
    assert float(stats.t_to_z(2.0, np.inf)) == 2.0
    z = float(stats.t_to_z(3.0, 4))
    assert sps.norm.sf(z) == pytest.approx(sps.t.sf(3.0, 4), rel=1e-9) and z < 3.0
    # few units: the same estimate is much weaker evidence for the sequential test
    few = stats.sequential_test(stats.Estimate(0.05, 0.0001, 3.0, "cluster-unit"), tau=0.02)
    many = stats.sequential_test(stats.Estimate(0.05, 0.0001, np.inf, "welch"), tau=0.02)
    assert float(few.p_value) > float(many.p_value)


@pytest.mark.parametrize("sequential", [False, True])
def test_planned_variance_gives_the_power_of_the_rule_applied(sequential):
    """At the planned variance, P(estimate >= max(margin, critical * se)) is the configured power."""
    target, margin, power = 0.02, 0.01, 0.8
    v = stats.required_variance(target, margin, ALPHA, power, sequential, tau=target)
    se = np.sqrt(v)
    critical = stats.msprt_boundary(v, target, ALPHA) if sequential else sps.norm.isf(ALPHA / 2)
    achieved = sps.norm.sf((max(margin, critical * se) - target) / se)
    assert achieved == pytest.approx(power, abs=1e-6)


def test_a_margin_the_rule_cannot_beat_has_no_size():
    assert stats.required_variance(0.02, 0.02, ALPHA, 0.8) is None
    assert stats.required_total(0.21, 0.21, 0.02, ALPHA, 0.8, 0.1, margin=0.03) == float("inf")
    # where the margin binds (a tiny target above it), the size grows: 0.8 power needs the estimate
    # beyond the margin 80 % of the time, not just significant
    loose = stats.required_total(0.21, 0.21, 0.02, ALPHA, 0.8, 0.1, margin=0.0)
    tight = stats.required_total(0.21, 0.21, 0.02, ALPHA, 0.8, 0.1, margin=0.015)
    assert tight > loose
    assert tight == pytest.approx(0.21 * (1 / 0.9 + 1 / 0.1) / (0.005 / sps.norm.ppf(0.8)) ** 2, rel=1e-9)


def test_sequential_sizes_cost_more_than_one_look_and_stop_earlier_on_average():
    fixed = stats.required_total(0.21, 0.21, 0.02, ALPHA, 0.8, 0.1, margin=0.01)
    sequential = stats.required_total(0.21, 0.21, 0.02, ALPHA, 0.8, 0.1, margin=0.01, sequential=True, tau=0.02)
    expected = stats.expected_total(sequential, 0.02, 0.01, ALPHA, 0.8, tau=0.02)
    assert 1.5 * fixed < sequential < 2.5 * fixed
    assert expected < 0.7 * sequential


# -- effective clusters, log-space sequences (issue 27: D3, D4) ------------------------------------------------

def test_degrees_of_freedom_count_effective_clusters_not_distinct_keys():
    """40 keys, one of which carries 90 % of the outcomes: about 1.2 effective clusters, and the df say so."""
    rng = np.random.default_rng(31)
    keys_b = np.concatenate([np.zeros(361, dtype=int), np.arange(1, 40)])
    b = rng.normal(0, 1, keys_b.size) + np.where(keys_b == 0, 0.3, 0.0)
    a = rng.normal(0, 1, 2000)
    est = stats.estimate(a, b, None, keys_b)
    effective = keys_b.size**2 / np.sum(np.bincount(keys_b) ** 2.0)
    assert effective == pytest.approx(1.23, abs=0.01)
    assert float(stats.effective_clusters(np.bincount(keys_b))) == pytest.approx(effective)
    v_a, v_b = est.variance_a, est.variance_b
    assert est.df == pytest.approx((v_a + v_b) ** 2 / (v_a**2 / 1999 + v_b**2 / (effective - 1)))
    assert est.df < 3  # distinct keys would have said 39


@pytest.mark.parametrize("t", [45.0, 60.0, 400.0])
def test_confidence_sequence_never_collapses_for_a_large_statistic(t):
    """With thousands of df, P(T > 40) is below the smallest double: t_to_z must not turn that into an infinite z
    (the widened variance would be 0 and the sequence a point)."""
    variance = 1e-4
    est = stats.Estimate(t * np.sqrt(variance), variance, 5000.0, "batch")
    z = float(stats.t_to_z(t, 5000.0))
    assert np.isfinite(z) and 38 < z <= t  # the t tail, heavier than the normal's, maps to a smaller z
    seq = stats.sequential_test(est, tau=0.02)
    known = stats.msprt(est.difference, variance, 0.02)  # the width at the unwidened variance: a lower bound
    assert float(seq.ci_high) - float(seq.ci_low) >= float(known.ci_high) - float(known.ci_low) > 0
    assert float(seq.ci_low) < est.difference < float(seq.ci_high) and float(seq.p_value) < 1e-10
    # and the log-space tail agrees with scipy where scipy's is still finite
    assert float(stats.t_logsf(37.0, 5000.0)) == pytest.approx(np.log(sps.t.sf(37.0, 5000.0)), rel=1e-9)
    assert float(stats.t_logsf(30.0, 1e7)) == pytest.approx(np.log(sps.t.sf(30.0, 1e7)), rel=1e-6)


def test_batch_means_see_autocorrelation_that_independent_requests_miss():
    """Runs of outcomes (an AR-like arm): batch means widen the variance; shuffled, they do not."""
    rng = np.random.default_rng(33)
    runs = np.repeat(rng.random(300) < 0.6, 8).astype(np.float64)  # 2,400 outcomes in runs of 8
    a = rng.random(2400) < 0.6
    b_size = stats.batch_size(runs.size)
    assert b_size == 8  # 2400^(1/3) = 13.4 -> 8
    correlated = stats.estimate(a, runs, batches=True)
    shuffled = stats.estimate(a, rng.permutation(runs), batches=True)
    plain = stats.estimate(a, runs)
    assert correlated.method == "batch" and correlated.variance_b > 5 * plain.variance_b
    assert shuffled.variance_b == pytest.approx(plain.variance_b, rel=0.3)
