"""Statistics for comparing a challenger with a champion: difference in means of one metric.

Every test here reports *challenger minus champion*. The core functions work on summary statistics
with numpy broadcasting, so a simulation can evaluate thousands of experiments at every look at once
(experiments/simulation.py does, through these very functions); thin wrappers take raw samples.

Variance of the difference: on the randomization unit
    Traffic is split by routing key (router.py): every request of one key goes to one arm, so the key,
    not the request, is the independent unit. Requests of one trading account or symbol share its
    behaviour, and treating them as independent understates the variance (a promotion on 5 symbols'
    luck). Each arm's mean gets the CR1 cluster-robust (sandwich) variance over its units g:

        V_arm = G/(G-1) * sum_g R[g]^2 / n^2,    R[g] = sum over unit g of (y - mean)

    floored at the variance independent requests would give (s^2/n): clustering can only add variance,
    and a CR1 estimate from a handful of units is near zero by chance often enough to matter (two keys
    that happen to agree). V = V_champion + V_challenger (units are nested in arms).

    Effective clusters: G counts distinct units, but 500 symbols of which three carry half the flow
    behave like a handful. What the variance estimate rests on is the effective number of clusters
    G_eff = 1 / sum_g share_g^2 = n^2 / sum_g c_g^2 (c_g: the unit's outcomes; G_eff = G for equal
    units, = n with one request per unit). Degrees of freedom: Satterthwaite's
    (V_a + V_b)^2 / (V_a^2/(G_eff_a-1) + V_b^2/(G_eff_b-1)), and decision.py's unit rule counts G_eff.
    When every request is its own unit (no routing key) R[g] = y - mean, V_arm = s^2/n and the df are
    Welch's: the test *is* Welch's t-test, identical to ``scipy.stats.ttest_ind(b, a, equal_var=False)``.

    Batch means (VarianceMethod.BATCH, the default): outcomes autocorrelated within an arm (a model
    that is wrong for a while, in a regime) are not independent either, whatever their keys. Each arm's
    outcomes, in the order they were served, are cut into batches of b consecutive ones, b the largest
    power of two not above n^(1/3) (``batch_size``: the rate that minimises the estimate's mean squared
    error, Flegal and Jones 2010; n^(2/3) batches, so few df are lost, and a batch only ever merges with
    its neighbour as data arrives), and the CR1 variance over batches V_batch (floored at s^2/n)
    replaces s^2/n: with keys, V_arm = V_unit + V_batch - s^2/n, each design effect added to the
    independent-request variance (two-way clustering with the intersection's variance taken as s^2/n:
    exact when a key rarely has two outcomes in one batch, conservative otherwise). When the batches add
    variance (their CR1 estimate exceeds s^2/n), the arm's clusters for the df are min(G_eff units,
    G_eff batches); when the floor binds the estimate is the unit one and so are its df (a large
    effect on a few hundred independent outcomes keeps the evidence Welch's test gives it). Nothing
    about time or traffic rate enters: the batches follow the arm's own outcomes, so the correction
    holds at a few outcomes a day as at thousands a second.

    Time buckets (VarianceMethod.CLUSTER): outcomes served in the same minute share a market regime, in
    both arms. Two-way clustering (Cameron, Gelbach, Miller 2011): V = V_unit + V_time - V_unit&time,
    with V_time = G_t/(G_t-1) * sum_t (R_b[t]/n_b - R_a[t]/n_a)^2 over the G_t buckets (a shock that hits
    both arms in the same minute cancels out of the difference) and V_unit&time the per-arm variance over
    (unit, bucket) cells; df = min(df_unit, G_t - 1). Without routing keys V_unit = V_unit&time exactly and
    V = V_time.

Fixed-horizon test (ExperimentMode.FIXED)
    t = d / sqrt(V), two-sided p-value and confidence interval from Student's t with the df above. Valid for
    ONE look at a planned sample size: analysing after every batch and stopping at the first p < alpha
    inflates the false-positive rate far above alpha.

Peeking-safe test (ExperimentMode.SEQUENTIAL): mSPRT
    The mixture sequential probability ratio test (Robbins 1970; Johari, Pekelis, Walsh, "Always valid
    inference", 2017). With the estimate d, its variance V and a normal mixture N(0, tau^2) on the true
    difference, the likelihood ratio against "no difference" is

        Lambda = sqrt(V / (V + tau^2)) * exp(tau^2 d^2 / (2 V (V + tau^2)))

    Under the null Lambda is a non-negative martingale with mean 1, so by Ville's inequality
    P(Lambda ever >= 1/alpha) <= alpha: the always-valid p-value min(1, 1/Lambda) may be checked after
    every batch. V is estimated; with few units (or buckets) that estimate is noisy and d/sqrt(V) has
    heavier tails than a normal, so V is first widened until d/sqrt(V') has the normal tail probability
    that d/sqrt(V) has under Student's t with the df above (``t_to_z``). The confidence sequence is
    d +- sqrt(V' (V' + tau^2) / tau^2 * (2 log(1/alpha) + log((V' + tau^2) / V'))). tau is the gain the
    experiment is planned for: power is best for effects near tau.

    Both are computed in log space: for |t| beyond ~38 the t tail probability is below the smallest
    double, so ``t_to_z`` takes log P(T > t) (``t_logsf``: scipy where it is finite, the incomplete-beta
    series or the Laplace expansion of the tail where it is not) to z with ``ndtri_exp``; the widened
    variance is exp(log V + 2 log(t/z)) and the half-width exp of half a sum of logs. A large estimate
    is strong evidence, never a zero-width interval.

Sample sizes for the rule the decision applies (``required_variance``, ``required_total``)
    PROMOTE needs the estimated gain d >= margin AND significance. At a true gain delta and variance V of
    the estimate, one look promotes with probability P(d >= max(margin, c sqrt(V))) =
    Phi((delta - max(margin, c sqrt(V))) / sqrt(V)), where c is the test's critical value: z_{1-alpha/2}
    (fixed) or the mSPRT boundary b(V) = sqrt((1 + V/tau^2)(2 log(1/alpha) + log(1 + tau^2/V))). The
    planned size is the smallest total N whose V = K/N gives that probability ``power``; K =
    var/(1-share) + var/share with var the LARGER of the two arms' per-request variances (clustered:
    the observed variance of the arm's mean times its n, so the design effect carries over). The larger
    one, because the test uses the variance estimated where the estimate lands, near the boundary, not at
    the assumed truth: for a proportion that variance lies between the arms' (0.70 vs 0.72 planned at
    0.72's variance loses 0.4 points of power). No size can give power > 50 % when delta <= margin: the answer is None.
    In sequential mode this is the power of the LAST look alone; every earlier look only adds chances to
    stop, so the power by N is at least this whatever the look schedule. ``expected_total`` gives the
    mean size at which the sequential test stops under delta (looks nearly continuous).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from scipy import special as sc
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


@dataclass(frozen=True)
class Estimate:
    """A difference in means with the variance of that difference and its degrees of freedom."""

    difference: ArrayLike
    variance: ArrayLike
    df: ArrayLike
    method: str
    """welch (every request its own unit) | cluster-unit (routing keys) | batch (batch means, with the keys
    if any) | cluster (time buckets, two-way)."""
    variance_a: ArrayLike = float("nan")
    """Variance of the champion's mean, clustered on units (and batches) (the part of ``variance`` each arm
    brings)."""
    variance_b: ArrayLike = float("nan")
    unit_excess_a: ArrayLike = 0.0
    """What clustering on units adds to the champion's independent-request variance s^2/n (>= 0)."""
    unit_excess_b: ArrayLike = 0.0
    unit_sq_a: ArrayLike = float("nan")
    """sum over the champion's units of their squared outcome counts (nan: every outcome its own unit)."""
    unit_sq_b: ArrayLike = float("nan")


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
    p = np.where(np.isnan(p), 1.0, p)
    return t, p


# -- estimates ---------------------------------------------------------------------------------------

def satterthwaite(v_a, g_a, v_b, g_b) -> np.ndarray:
    """Degrees of freedom of V_a + V_b, each estimated from G - 1 degrees of freedom (Welch's when G = n)."""
    v_a, g_a, v_b, g_b = (np.asarray(x, dtype=np.float64) for x in (v_a, g_a, v_b, g_b))
    with np.errstate(divide="ignore", invalid="ignore"):
        df = (v_a + v_b) ** 2 / (v_a**2 / (g_a - 1) + v_b**2 / (g_b - 1))
    return np.where(np.isfinite(df), df, np.maximum(np.minimum(g_a, g_b) - 1, 1.0))


def arm_cluster_variance(n, mean, sum_y_sq, sum_y_c, sum_c_sq, groups, sum_sq_requests=None) -> np.ndarray:
    """CR1 variance of one arm's mean from running sums over its units g (arrays broadcast):
    sum_g S_g^2, sum_g S_g c_g and sum_g c_g^2 with S_g, c_g the unit's sum and count; floored at
    s^2/n, computed from ``sum_sq_requests`` (sum of y^2 over requests) when given.

    sum_g (S_g - mean c_g)^2 expands into those three sums, so a simulation keeps them up to date one
    request at a time; with one request per unit they are sum y^2, sum y, n and this is s^2 / n."""
    n, mean, groups = (np.asarray(x, dtype=np.float64) for x in (n, mean, groups))
    resid_sq = np.maximum(np.asarray(sum_y_sq) - 2 * mean * np.asarray(sum_y_c) + mean**2 * np.asarray(sum_c_sq),
                          0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        variance = np.where(groups > 1, groups / (groups - 1) * resid_sq / n**2, np.nan)
        if sum_sq_requests is not None:
            iid = np.maximum(np.asarray(sum_sq_requests) - n * mean**2, 0.0) / (n - 1) / n
            variance = np.where(groups > 1, np.maximum(variance, iid), np.nan)
    return variance


def cluster_from_summary(n_a, mean_a, var_a, g_a, n_b, mean_b, var_b, g_b,
                         method: str = "cluster-unit") -> Estimate:
    """Difference of two arms' means from each arm's (cluster-robust) variance of its mean."""
    mean_a, mean_b, var_a, var_b = (np.asarray(x, dtype=np.float64) for x in (mean_a, mean_b, var_a, var_b))
    return Estimate(mean_b - mean_a, var_a + var_b, satterthwaite(var_a, g_a, var_b, g_b), method, var_a, var_b)


def effective_clusters(counts) -> np.ndarray:
    """1 / sum of squared shares = n^2 / sum_g c_g^2 from cluster sizes c_g (last axis)."""
    counts = np.asarray(counts, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return counts.sum(axis=-1) ** 2 / np.sum(counts**2, axis=-1)


def _codes(labels: np.ndarray) -> tuple[np.ndarray, int]:
    uniques, inverse = np.unique(np.asarray(labels), return_inverse=True)
    return inverse.reshape(-1), uniques.size


def _arm_terms(values: np.ndarray, codes: np.ndarray, groups: int) -> float:
    """sum_g R[g]^2 of one arm, R[g] = sum over unit g of (y - mean)."""
    resid = np.bincount(codes, weights=values - values.mean(), minlength=groups)
    return float(np.sum(resid**2))


def _iid_variance(values: np.ndarray) -> float:
    n = values.size
    return float(values.var(ddof=1)) / n if n > 1 else float("nan")


def _arm_variance(values: np.ndarray, units: np.ndarray | None) -> tuple[float, int, float, float]:
    """(CR1 variance of the arm's mean floored at s^2/n, distinct units, effective units, sum_g c_g^2)."""
    n = values.size
    if units is None or np.asarray(units).size != n:  # no unit labels: every request is its own unit
        return _iid_variance(values), n, float(n), float(n)
    codes, groups = _codes(units)
    counts = np.bincount(codes, minlength=groups)
    effective, sum_sq = float(effective_clusters(counts)), float(np.sum(counts.astype(np.float64) ** 2))
    if groups < 2:
        return float("nan"), groups, effective, sum_sq
    clustered = groups / (groups - 1) * _arm_terms(values, codes, groups) / n**2
    return max(clustered, _iid_variance(values)), groups, effective, sum_sq


def adds_variance(clustered, iid) -> np.ndarray:
    """Whether a floored cluster-robust variance exceeds the independent-request one (beyond rounding: an
    estimate that equals s^2/n in exact arithmetic must not flip on the last bit)."""
    clustered, iid = np.asarray(clustered, dtype=np.float64), np.asarray(iid, dtype=np.float64)
    return clustered > iid * (1 + 1e-9)


BATCH_ROOT = 3
"""Batches hold about n^(1/BATCH_ROOT) outcomes (power of two at most that)."""


def batch_exponent(n) -> np.ndarray:
    """log2 of ``batch_size`` (arrays too)."""
    n = np.maximum(np.asarray(n, dtype=np.float64), 1.0)
    return (np.frexp(n)[1] - 1) // BATCH_ROOT


def batch_size(n: int) -> int:
    """Outcomes per batch for batch means: the largest power of two not above n^(1/3) (1 below n = 8)."""
    return 1 << int(batch_exponent(int(n)))


def batch_variance(values: np.ndarray) -> tuple[float, int, float]:
    """(CR1 variance of the mean over batches of ``batch_size(n)`` consecutive values, floored at s^2/n;
    batches; effective batches). ``values`` in the order they were served."""
    n = values.size
    b = batch_size(n)
    codes = np.arange(n) // b
    groups = int(codes[-1]) + 1 if n else 0
    effective = float(effective_clusters(np.bincount(codes, minlength=groups))) if n else float("nan")
    if groups < 2:
        return float("nan"), groups, effective
    clustered = groups / (groups - 1) * _arm_terms(values, codes, groups) / n**2
    return max(clustered, _iid_variance(values)), groups, effective


def time_variance(champion: np.ndarray, champion_buckets: np.ndarray, challenger: np.ndarray,
                  challenger_buckets: np.ndarray) -> tuple[float, int]:
    """CR1 variance of the difference over shared time buckets, and the number of buckets."""
    codes, groups = _codes(np.concatenate([champion_buckets, challenger_buckets]))
    code_a, code_b = codes[: champion.size], codes[champion.size:]
    resid_a = np.bincount(code_a, weights=champion - champion.mean(), minlength=groups) / champion.size
    resid_b = np.bincount(code_b, weights=challenger - challenger.mean(), minlength=groups) / challenger.size
    if groups < 2:
        return float("nan"), groups
    return groups / (groups - 1) * float(np.sum((resid_b - resid_a) ** 2)), groups


def two_way(v_unit, df_unit, v_time, groups_time, v_both) -> tuple[np.ndarray, np.ndarray]:
    """Two-way (unit and time bucket) variance and df; the larger one-way variance if it is not positive."""
    v_unit, v_time, v_both = (np.asarray(x, dtype=np.float64) for x in (v_unit, v_time, v_both))
    v = v_unit + v_time - v_both
    v = np.where(v > 0, v, np.maximum(v_unit, v_time))
    df = np.minimum(np.asarray(df_unit, dtype=np.float64), np.asarray(groups_time, dtype=np.float64) - 1)
    return v, np.maximum(df, 1.0)


def estimate(champion: np.ndarray, challenger: np.ndarray, champion_units: np.ndarray | None = None,
             challenger_units: np.ndarray | None = None, champion_buckets: np.ndarray | None = None,
             challenger_buckets: np.ndarray | None = None, *, batches: bool = False) -> Estimate:
    """Difference in means clustered on the randomization unit (None: one unit per request), and on time
    buckets as well when they are given, or on batches of consecutive outcomes within each arm when
    ``batches`` (values in the order they were served; see the module docstring)."""
    a = np.asarray(champion, dtype=np.float64)
    b = np.asarray(challenger, dtype=np.float64)
    nan = float("nan")
    if a.size < 2 or b.size < 2:
        return Estimate(float(b.mean() - a.mean()) if a.size and b.size else nan, nan, nan, "none")
    var_a, g_a, eff_a, sq_a = _arm_variance(a, champion_units)
    var_b, g_b, eff_b, sq_b = _arm_variance(b, challenger_units)
    singletons = g_a == a.size and g_b == b.size
    units = dict(unit_excess_a=var_a - _iid_variance(a), unit_excess_b=var_b - _iid_variance(b), unit_sq_a=sq_a,
                 unit_sq_b=sq_b)
    if batches:
        arms = []
        for values, v_unit, eff in ((a, var_a, eff_a), (b, var_b, eff_b)):
            v_batch, _, eff_batch = batch_variance(values)
            iid = _iid_variance(values)
            arms.append((v_unit + v_batch - iid, min(eff, eff_batch) if adds_variance(v_batch, iid) else eff))
        (var_a, eff_a), (var_b, eff_b) = arms
        est = cluster_from_summary(a.size, a.mean(), var_a, eff_a, b.size, b.mean(), var_b, eff_b, "batch")
        return Estimate(float(est.difference), float(est.variance), float(est.df), est.method, var_a, var_b, **units)
    unit = cluster_from_summary(a.size, a.mean(), var_a, eff_a, b.size, b.mean(), var_b, eff_b,
                                "welch" if singletons else "cluster-unit")
    if champion_buckets is None or challenger_buckets is None:
        return Estimate(float(unit.difference), float(unit.variance), float(unit.df), unit.method, var_a, var_b,
                        **units)
    v_time, groups_time = time_variance(a, champion_buckets, b, challenger_buckets)
    if singletons:
        v_both = float(unit.variance)  # (request, bucket) cells are the requests themselves
    else:
        cells_a = np.char.add(np.asarray(champion_units).astype(str),
                              np.char.add("|", np.asarray(champion_buckets).astype(str)))
        cells_b = np.char.add(np.asarray(challenger_units).astype(str),
                              np.char.add("|", np.asarray(challenger_buckets).astype(str)))
        v_both = _arm_variance(a, cells_a)[0] + _arm_variance(b, cells_b)[0]
    variance, df = two_way(unit.variance, unit.df, v_time, groups_time, v_both)
    return Estimate(float(unit.difference), float(variance), float(df), "cluster", var_a, var_b, **units)


# -- tests -------------------------------------------------------------------------------------------

def fixed_test(est: Estimate, alpha: float = 0.05) -> TestResult:
    """Student's t test of the estimate with its df (Welch's t-test when the estimate is Welch's)."""
    diff = np.asarray(est.difference, dtype=np.float64)
    se = np.sqrt(np.asarray(est.variance, dtype=np.float64))
    df = np.asarray(est.df, dtype=np.float64)
    t, p = _statistic_and_p(diff, se, df)
    with np.errstate(invalid="ignore"):
        half = sps.t.ppf(1 - alpha / 2, df) * se
    half = np.where(np.isnan(se), np.inf, half)
    return TestResult(diff, se, t, df, p, diff - half, diff + half, est.method)


def t_logsf(t, df) -> np.ndarray:
    """log P(T > t) for Student's t(df), t >= 0 (arrays broadcast), finite far beyond where P underflows.

    scipy's tail where its log is finite; beyond (|t| above ~38 with many df, far more with few) the
    incomplete-beta form P = I_x(df/2, 1/2) / 2, x = df / (df + t^2), taken in logs as
    x^a (1-x)^b / (a B(a, b)) 2F1(a+b, 1; a+1; x), while x <= 0.99, and else (t^2 << df, so the t density
    is nearly normal around t and its log falls steeply) the Laplace expansion of the tail integral,
    P = f(t) / -g'(t) * (1 + g''(t) / g'(t)^2) with g = log f."""
    t, df = np.broadcast_arrays(np.asarray(t, dtype=np.float64), np.asarray(df, dtype=np.float64))
    shape = t.shape
    t, df = t.reshape(-1), df.reshape(-1)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore", under="ignore"):
        out = np.asarray(np.where(np.isinf(df), sps.norm.logsf(t), np.log(sps.t.sf(t, df))),
                         dtype=np.float64).reshape(-1)
        far = ~np.isfinite(out) & np.isfinite(t) & (t > 0) & (df > 0)
        if np.any(far):
            tf, nu = t[far], df[far]
            a = nu / 2
            log_t2 = 2 * np.log(tf)
            log_x = np.log(nu) - np.logaddexp(np.log(nu), log_t2)
            log_1mx = log_t2 - np.logaddexp(np.log(nu), log_t2)
            beta = (np.log(0.5) + a * log_x + 0.5 * log_1mx - np.log(a) - sc.betaln(a, 0.5)
                    + np.log(sc.hyp2f1(a + 0.5, 1.0, a + 1.0, np.exp(log_x))))
            # Laplace: g = log f, f(s) = C (1 + s^2/nu)^(-(nu+1)/2); normal density when nu is infinite
            log_c = sc.gammaln((nu + 1) / 2) - sc.gammaln(nu / 2) - 0.5 * np.log(nu * np.pi)
            g = log_c - (nu + 1) / 2 * np.log1p(tf**2 / nu)
            g1 = -(nu + 1) * tf / (nu + tf**2)
            g2 = -(nu + 1) * (nu - tf**2) / (nu + tf**2) ** 2
            laplace = g - np.log(-g1) + np.log1p(g2 / g1**2)
            use_beta = (log_x <= np.log(0.99)) & np.isfinite(beta)
            out[far] = np.where(use_beta, beta, laplace)
    return out.reshape(shape)


def t_to_z(statistic, df) -> np.ndarray:
    """The normal quantile with the same tail probability as ``statistic`` under Student's t(df), matched
    in log space (``t_logsf``), so a t of 60 on 5,000 df is a z near 59, not an infinite z."""
    t = np.asarray(statistic, dtype=np.float64)
    df = np.asarray(df, dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        z = np.sign(t) * -sc.ndtri_exp(t_logsf(np.abs(t), df))
    return np.where(np.isinf(df) | np.isinf(t), t, z)


def sequential_test(est: Estimate, tau: float, alpha: float = 0.05) -> TestResult:
    """mSPRT of the estimate, its variance first widened for the df (see the module docstring)."""
    diff = np.asarray(est.difference, dtype=np.float64)
    variance = np.asarray(est.variance, dtype=np.float64)
    df = np.asarray(est.df, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        t = diff / np.sqrt(variance)
        z = t_to_z(t, df)
        # V' = V (t/z)^2 in logs: t and z both huge must not become 0 / inf
        log_ratio = 2 * (np.log(np.abs(t)) - np.log(np.abs(z)))
        widened = np.where((t != 0) & np.isfinite(t) & (z != 0) & np.isfinite(log_ratio),
                           np.exp(np.log(variance) + log_ratio), variance)
    method = "msprt" if est.method == "welch" else f"msprt-{est.method}"
    result = msprt(diff, widened, tau, alpha, method)
    return TestResult(result.difference, result.se, result.statistic, df, result.p_value, result.ci_low,
                      result.ci_high, method)


def welch_from_summary(n_a, mean_a, var_a, n_b, mean_b, var_b, alpha: float = 0.05) -> TestResult:
    """Welch's t-test of mean_b - mean_a from summaries (arrays broadcast)."""
    n_a, mean_a, var_a, n_b, mean_b, var_b = (np.asarray(x, dtype=np.float64)
                                              for x in (n_a, mean_a, var_a, n_b, mean_b, var_b))
    est = cluster_from_summary(n_a, mean_a, var_a / n_a, n_a, n_b, mean_b, var_b / n_b, n_b, "welch")
    return fixed_test(est, alpha)


def welch(champion: np.ndarray, challenger: np.ndarray, alpha: float = 0.05) -> TestResult:
    """Welch's t-test on raw samples; equals scipy.stats.ttest_ind(challenger, champion, equal_var=False)."""
    return _as_scalar(welch_from_summary(*summarize(champion), *summarize(challenger), alpha=alpha))


def cluster_robust(champion: np.ndarray, champion_clusters: np.ndarray, challenger: np.ndarray,
                   challenger_clusters: np.ndarray, alpha: float = 0.05) -> TestResult:
    """Difference in means with the CR1 variance over clusters shared by both arms (time buckets), t with
    G-1 df. (``estimate`` adds the routing-key units to this: two-way clustering.)"""
    a = np.asarray(champion, dtype=np.float64)
    b = np.asarray(challenger, dtype=np.float64)
    if a.size == 0 or b.size == 0:
        nan = float("nan")
        return TestResult(nan, nan, nan, nan, 1.0, nan, nan, "cluster")
    variance, groups = time_variance(a, np.asarray(champion_clusters), b, np.asarray(challenger_clusters))
    diff = float(b.mean() - a.mean())
    if groups < 2:
        return TestResult(diff, float("nan"), float("nan"), 0.0, 1.0, float("-inf"), float("inf"), "cluster")
    return _as_scalar(fixed_test(Estimate(diff, variance, float(groups - 1), "cluster"), alpha))


def msprt(difference, variance, tau, alpha: float = 0.05, method: str = "msprt") -> TestResult:
    """Always-valid p-value and confidence sequence of the normal-mixture SPRT (arrays broadcast, tau too).

    ``variance`` is the variance of the estimated difference (taken as known)."""
    d = np.asarray(difference, dtype=np.float64)
    v = np.asarray(variance, dtype=np.float64)
    tau2 = np.asarray(tau, dtype=np.float64) ** 2
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        log_lr = -0.5 * np.log1p(tau2 / v) + tau2 * d**2 / (2 * v * (v + tau2))
        p = np.minimum(1.0, np.exp(-log_lr))
        # sqrt(V (V + tau^2) / tau^2 * (2 log(1/alpha) + log(1 + tau^2/V))), as a sum of logs
        half = np.exp(0.5 * (np.log(v) + np.log1p(v / tau2)
                             + np.log(2 * np.log(1 / alpha) + np.log1p(tau2 / v))))
    degenerate = v == 0
    p = np.where(degenerate, np.where(d == 0, 1.0, 0.0), p)
    p = np.where(np.isnan(p), 1.0, p)
    half = np.where(degenerate, 0.0, np.where(np.isnan(half), np.inf, half))
    se = np.sqrt(v)
    with np.errstate(divide="ignore", invalid="ignore"):
        stat = np.where(degenerate, 0.0, d / se)
    return TestResult(d, se, stat, np.full(np.broadcast(d, v).shape, np.inf), p, d - half, d + half, method)


def msprt_from_test(base: TestResult, tau: float, alpha: float = 0.05) -> TestResult:
    """mSPRT on the difference, variance and df of a fixed test (Welch's or a cluster-robust one)."""
    method = "msprt" if base.method == "welch" else f"msprt-{base.method}"
    if not np.isfinite(base.se):
        nan = float("nan")
        return TestResult(base.difference, nan, nan, nan, 1.0, float("-inf"), float("inf"), method)
    df = base.df if np.isfinite(base.df) else np.inf
    return _as_scalar(sequential_test(Estimate(base.difference, float(base.se) ** 2, df,
                                               "welch" if base.method == "welch" else base.method), tau, alpha))


def cohens_d(var_a: float, var_b: float, difference: float) -> float | None:
    pooled = np.sqrt((var_a + var_b) / 2)
    if not np.isfinite(pooled) or pooled == 0 or not np.isfinite(difference):
        return None
    return float(difference / pooled)


# -- sample sizes ------------------------------------------------------------------------------------

def msprt_boundary(variance, tau: float, alpha: float) -> np.ndarray:
    """|d| / sqrt(V) at which the mSPRT rejects, at variance V."""
    v = np.asarray(variance, dtype=np.float64)
    tau2 = float(tau) ** 2
    return np.sqrt((1 + v / tau2) * (2 * np.log(1 / alpha) + np.log1p(tau2 / v)))


def required_variance(target: float, margin: float, alpha: float, power: float, sequential: bool = False,
                      tau: float | None = None) -> float | None:
    """Largest variance of the estimate at which one look promotes a true gain ``target`` with probability
    ``power`` under the rule "estimate >= margin and significant"; None when no variance does."""
    if target <= 0 or not 0 < power < 1:
        return None
    z_power = float(sps.norm.ppf(power))
    if target <= margin and z_power >= 0:
        return None
    margin_cap = ((target - margin) / z_power) ** 2 if z_power > 0 else float("inf")
    if not sequential:
        return min(margin_cap, (target / (float(sps.norm.isf(alpha / 2)) + z_power)) ** 2)
    tau = float(tau or target)

    def ok(se: np.ndarray) -> np.ndarray:
        return target / se - msprt_boundary(se**2, tau, alpha) >= z_power

    grid = target * np.logspace(-6, 0, 3001)  # target/se - b(se^2) is not monotone far from the answer
    passing = grid[ok(grid)]
    if passing.size == 0:
        return None
    lo = float(passing.max())
    hi = lo * 10 ** (6 / 3000)
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if ok(np.asarray(mid)) else (lo, mid)
    return min(margin_cap, lo**2)


def required_total(var_a, var_b, min_effect: float, alpha: float, power: float, share: float,
                   margin: float = 0.0, sequential: bool = False, tau: float | None = None):
    """Total requests (both arms) at which the rule has ``power`` at a true difference ``min_effect``
    (per-request variances var_a, var_b, arrays broadcast, each arm planned at the larger; the challenger
    gets ``share``); inf when no size does."""
    v = required_variance(min_effect, margin, alpha, power, sequential, tau)
    if v is None or v <= 0:
        return float("inf")
    per_request = np.maximum(np.asarray(var_a, dtype=np.float64), np.asarray(var_b, dtype=np.float64))
    total = per_request * (1 / (1 - share) + 1 / share) / v
    return float(total) if np.ndim(total) == 0 else total


def samples_still_needed(n_a: int, var_a: float, n_b: int, var_b: float, min_effect: float, alpha: float,
                         power: float, share: float, margin: float = 0.0, sequential: bool = False,
                         tau: float | None = None) -> int | None:
    """Samples the slower-filling arm still needs for the configured power; None when unknown."""
    total = required_total(var_a, var_b, min_effect, alpha, power, share, margin, sequential, tau)
    if not np.isfinite(total):
        return None
    need_a, need_b = (1 - share) * total, share * total
    return int(np.ceil(max(0.0, need_a - n_a, need_b - n_b)))


@functools.lru_cache(maxsize=256)
def _expected_stop_fraction(margin: float, tau: float, alpha: float, v_star: float) -> float:
    """E[stopping size] / planned size of the mSPRT rule under a true gain 1 (everything in units of the
    gain), by simulating 2,000 Brownian paths seen at 400 looks up to 4 planned sizes (seeded; the mean is
    within about 1 % of a planned size)."""
    rng = np.random.default_rng(20261130)
    looks = np.linspace(4 / 400, 4.0, 400)
    steps = rng.standard_normal((2000, looks.size)) * np.sqrt(np.diff(looks, prepend=0.0))
    d = 1.0 + np.sqrt(v_star) * np.cumsum(steps, axis=1) / looks  # the estimate: variance v_star / u
    v = v_star / looks
    stop = (d >= margin) & (msprt(d, v, tau, alpha).p_value < alpha)
    first = np.where(stop.any(axis=1), stop.argmax(axis=1), looks.size - 1)
    return float(looks[first].mean())


def expected_total(planned: float, target: float, margin: float, alpha: float, power: float,
                   tau: float | None = None) -> float | None:
    """Mean total size at which the sequential rule stops (promotes) under a true gain ``target``, for an
    experiment whose ``planned`` total is the sequential planned size (looks close to continuous)."""
    v = required_variance(target, margin, alpha, power, True, tau)
    if v is None or not np.isfinite(planned):
        return None
    fraction = _expected_stop_fraction(round(margin / target, 4), round(float(tau or target) / target, 4),
                                       alpha, round(v / target**2, 10))
    return planned * fraction
