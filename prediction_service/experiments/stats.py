"""Statistics for comparing a challenger with a champion: difference in means of one metric.

Every test here reports *challenger minus champion*. Functions work on summary statistics with numpy
broadcasting, so simulations can evaluate thousands of experiments at once; thin wrappers take raw
samples.

Fixed-horizon test (ExperimentMode.FIXED)
    Welch's t-test: t = (mean_b - mean_a) / sqrt(var_b/n_b + var_a/n_a) with the Welch–Satterthwaite
    degrees of freedom; two-sided p-value and confidence interval from Student's t. Identical to
    ``scipy.stats.ttest_ind(b, a, equal_var=False)``. Valid for ONE look at the data: analysing after
    every batch and stopping at the first p < alpha inflates the false-positive rate far above alpha
    (tests/experiments/test_simulation.py shows it).

Peeking-safe test (ExperimentMode.SEQUENTIAL): mSPRT
    The mixture sequential probability ratio test (Robbins 1970; Johari, Pekelis, Walsh, "Always valid
    inference", 2017). With the estimate d of the difference, its plug-in variance V (var_b/n_b +
    var_a/n_a, or the cluster-robust V below) and a normal mixture prior N(0, tau^2) on the true
    difference, the likelihood ratio against "no difference" is

        Lambda = sqrt(V / (V + tau^2)) * exp(tau^2 d^2 / (2 V (V + tau^2)))

    Under the null Lambda is a (approximate, because V is estimated) non-negative martingale with mean 1,
    so by Ville's inequality P(Lambda ever >= 1/alpha) <= alpha: the always-valid p-value
    min(1, 1/Lambda) may be checked after every batch and rejecting when it is below alpha keeps the
    false-promotion rate <= alpha however often one looks. The matching confidence sequence is
    d +- sqrt(V (V + tau^2) / tau^2 * (2 log(1/alpha) + log((V + tau^2) / V))). tau is the size of
    effect one cares about (by default the minimum gain that justifies a promotion): power is best for
    effects near tau. The p-value reported is the current 1/Lambda, not its running minimum, so a
    decision reached at one analysis is acted on then (auto_apply) rather than remembered.

Cluster-robust variance (VarianceMethod.CLUSTER)
    Trading outcomes are autocorrelated: predictions served in the same minute share a market regime,
    so treating them as independent understates the variance and overstates significance. Observations
    are grouped into time buckets (``cluster_seconds``, by when the prediction was served). With
    residual sums R_a[g] = sum over bucket g of (y - mean_a) (same for b) and G buckets,

        Var(d) = G/(G-1) * sum_g (R_b[g]/n_b - R_a[g]/n_a)^2

    which is the CR1 cluster-robust (sandwich) variance of the arm coefficient in the regression
    y ~ arm, clustered by bucket; it includes the covariance of both arms within a bucket (a shock that
    hits both arms in the same minute cancels out of the difference). Tests then use Student's t with
    G - 1 degrees of freedom, or this V inside the mSPRT. It needs a reasonable number of buckets
    (tens); with fewer than two the test is undefined and reports p = 1.

Sample size (``required_per_arm``)
    Normal approximation for a two-sided test at level alpha with the given power, for an absolute
    difference ``min_effect``, with the challenger getting ``share`` of the traffic:
    N = (z_{1-alpha/2} + z_power)^2 (var_a/(1-share) + var_b/share) / min_effect^2 in total.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

ArrayLike = np.ndarray | float


@dataclass(frozen=True)
class TestResult:
    """Challenger minus champion. Fields are floats, or arrays when computed for many experiments."""

    difference: ArrayLike
    se: ArrayLike
    statistic: ArrayLike
    df: ArrayLike
    p_value: ArrayLike
    ci_low: ArrayLike
    ci_high: ArrayLike
    method: str


def _as_scalar(result: TestResult) -> TestResult:
    def conv(v: ArrayLike) -> float:
        return float(np.asarray(v))
    return TestResult(conv(result.difference), conv(result.se), conv(result.statistic), conv(result.df),
                      conv(result.p_value), conv(result.ci_low), conv(result.ci_high), result.method)


def summarize(values: np.ndarray) -> tuple[int, float, float]:
    """(n, mean, sample variance with ddof=1); variance 0 for fewer than two values."""
    values = np.asarray(values, dtype=np.float64)
    n = values.size
    if n == 0:
        return 0, float("nan"), float("nan")
    return n, float(values.mean()), float(values.var(ddof=1)) if n > 1 else 0.0


def _statistic_and_p(diff: np.ndarray, se: np.ndarray, df: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with np.errstate(divide="ignore", invalid="ignore"):
        t = diff / se
        p = 2.0 * sps.t.sf(np.abs(t), df)
        # Zero variance in both arms: an exact difference is certain, no difference is no evidence.
        degenerate = se == 0
        t = np.where(degenerate, np.where(diff == 0, 0.0, np.sign(diff) * np.inf), t)
    p = np.where(degenerate, np.where(diff == 0, 1.0, 0.0), p)
    return t, p


def welch_from_summary(n_a, mean_a, var_a, n_b, mean_b, var_b, alpha: float = 0.05) -> TestResult:
    """Welch's t-test of mean_b - mean_a from summaries (arrays broadcast)."""
    n_a, mean_a, var_a, n_b, mean_b, var_b = (np.asarray(x, dtype=np.float64)
                                              for x in (n_a, mean_a, var_a, n_b, mean_b, var_b))
    va, vb = var_a / n_a, var_b / n_b
    se = np.sqrt(va + vb)
    with np.errstate(divide="ignore", invalid="ignore"):
        df = (va + vb) ** 2 / (va**2 / (n_a - 1) + vb**2 / (n_b - 1))
    df = np.where(np.isfinite(df), df, n_a + n_b - 2)
    diff = mean_b - mean_a
    t, p = _statistic_and_p(diff, se, df)
    half = sps.t.ppf(1 - alpha / 2, df) * se
    return TestResult(diff, se, t, df, p, diff - half, diff + half, "welch")


def welch(champion: np.ndarray, challenger: np.ndarray, alpha: float = 0.05) -> TestResult:
    """Welch's t-test on raw samples; equals scipy.stats.ttest_ind(challenger, champion, equal_var=False)."""
    return _as_scalar(welch_from_summary(*summarize(champion), *summarize(challenger), alpha=alpha))


def cluster_robust(champion: np.ndarray, champion_clusters: np.ndarray, challenger: np.ndarray,
                   challenger_clusters: np.ndarray, alpha: float = 0.05) -> TestResult:
    """Difference in means with the CR1 cluster-robust variance (clusters = time buckets), t with G-1 df."""
    a = np.asarray(champion, dtype=np.float64)
    b = np.asarray(challenger, dtype=np.float64)
    if a.size == 0 or b.size == 0:
        nan = float("nan")
        return TestResult(nan, nan, nan, nan, 1.0, nan, nan, "cluster")
    labels, inverse = np.unique(np.concatenate([champion_clusters, challenger_clusters]), return_inverse=True)
    groups = labels.size
    inv_a, inv_b = inverse[: a.size], inverse[a.size:]
    resid_a = np.bincount(inv_a, weights=a - a.mean(), minlength=groups) / a.size
    resid_b = np.bincount(inv_b, weights=b - b.mean(), minlength=groups) / b.size
    diff = b.mean() - a.mean()
    if groups < 2:
        return TestResult(diff, float("nan"), float("nan"), 0.0, 1.0, float("-inf"), float("inf"), "cluster")
    variance = groups / (groups - 1) * float(np.sum((resid_b - resid_a) ** 2))
    se, df = np.sqrt(variance), float(groups - 1)
    t, p = _statistic_and_p(np.asarray(diff), np.asarray(se), np.asarray(df))
    half = float(sps.t.ppf(1 - alpha / 2, df)) * se
    return TestResult(diff, se, float(t), df, float(p), diff - half, diff + half, "cluster")


def msprt(difference, variance, tau: float, alpha: float = 0.05, method: str = "msprt") -> TestResult:
    """Always-valid p-value and confidence sequence of the normal-mixture SPRT (arrays broadcast).

    ``variance`` is the (plug-in or cluster-robust) variance of the estimated difference."""
    d = np.asarray(difference, dtype=np.float64)
    v = np.asarray(variance, dtype=np.float64)
    tau2 = float(tau) ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        log_lr = 0.5 * np.log(v / (v + tau2)) + tau2 * d**2 / (2 * v * (v + tau2))
        p = np.minimum(1.0, np.exp(-log_lr))
        half = np.sqrt(v * (v + tau2) / tau2 * (2 * np.log(1 / alpha) + np.log((v + tau2) / v)))
    degenerate = v == 0
    p = np.where(degenerate, np.where(d == 0, 1.0, 0.0), p)
    p = np.where(np.isnan(p), 1.0, p)
    half = np.where(degenerate, 0.0, half)
    se = np.sqrt(v)
    with np.errstate(divide="ignore", invalid="ignore"):
        stat = np.where(degenerate, 0.0, d / se)
    return TestResult(d, se, stat, np.full_like(d, np.inf), p, d - half, d + half, method)


def msprt_from_test(base: TestResult, tau: float, alpha: float = 0.05) -> TestResult:
    """mSPRT on the difference and variance of a fixed test (Welch's or the cluster-robust one)."""
    method = "msprt-cluster" if base.method == "cluster" else "msprt"
    if not np.isfinite(base.se):
        nan = float("nan")
        return TestResult(base.difference, nan, nan, nan, 1.0, float("-inf"), float("inf"), method)
    return _as_scalar(msprt(base.difference, float(base.se) ** 2, tau, alpha, method))


def cohens_d(var_a: float, var_b: float, difference: float) -> float | None:
    pooled = np.sqrt((var_a + var_b) / 2)
    if not np.isfinite(pooled) or pooled == 0:
        return None
    return float(difference / pooled)


def required_total(var_a: float, var_b: float, min_effect: float, alpha: float, power: float,
                   share: float) -> float:
    """Total requests (both arms) needed to detect ``min_effect`` with ``power`` (normal approximation)."""
    if min_effect <= 0:
        return float("inf")
    z = sps.norm.ppf(1 - alpha / 2) + sps.norm.ppf(power)
    return float(z**2 * (var_a / (1 - share) + var_b / share) / min_effect**2)


def samples_still_needed(n_a: int, var_a: float, n_b: int, var_b: float, min_effect: float, alpha: float,
                         power: float, share: float) -> int | None:
    """Samples the slower-filling arm still needs for the configured power; None when unknown."""
    total = required_total(var_a, var_b, min_effect, alpha, power, share)
    if not np.isfinite(total):
        return None
    need_a, need_b = (1 - share) * total, share * total
    return int(np.ceil(max(0.0, need_a - n_a, need_b - n_b)))
