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
    that happen to agree). V = V_champion + V_challenger (units are nested in arms). Degrees of freedom:
    Satterthwaite's
    (V_a + V_b)^2 / (V_a^2/(G_a-1) + V_b^2/(G_b-1)). When every request is its own unit (no routing key)
    R[g] = y - mean, V_arm = s^2/n and the df are Welch's: the test *is* Welch's t-test, identical to
    ``scipy.stats.ttest_ind(b, a, equal_var=False)``.

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
    """welch (every request its own unit) | cluster-unit (routing keys) | cluster (time buckets, two-way)."""
    variance_a: ArrayLike = float("nan")
    """Variance of the champion's mean, clustered on units (the part of ``variance`` each arm brings)."""
    variance_b: ArrayLike = float("nan")


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


def _codes(labels: np.ndarray) -> tuple[np.ndarray, int]:
    uniques, inverse = np.unique(np.asarray(labels), return_inverse=True)
    return inverse.reshape(-1), uniques.size


def _arm_terms(values: np.ndarray, codes: np.ndarray, groups: int) -> float:
    """sum_g R[g]^2 of one arm, R[g] = sum over unit g of (y - mean)."""
    resid = np.bincount(codes, weights=values - values.mean(), minlength=groups)
    return float(np.sum(resid**2))


def _arm_variance(values: np.ndarray, units: np.ndarray | None) -> tuple[float, int]:
    n = values.size
    if units is None or np.asarray(units).size != n:  # no unit labels: every request is its own unit
        return (float(values.var(ddof=1)) / n if n > 1 else float("nan")), n
    codes, groups = _codes(units)
    if groups < 2:
        return float("nan"), groups
    clustered = groups / (groups - 1) * _arm_terms(values, codes, groups) / n**2
    return max(clustered, float(values.var(ddof=1)) / n), groups


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
             challenger_buckets: np.ndarray | None = None) -> Estimate:
    """Difference in means clustered on the randomization unit (None: one unit per request), and on time
    buckets as well when they are given."""
    a = np.asarray(champion, dtype=np.float64)
    b = np.asarray(challenger, dtype=np.float64)
    nan = float("nan")
    if a.size < 2 or b.size < 2:
        return Estimate(float(b.mean() - a.mean()) if a.size and b.size else nan, nan, nan, "none")
    var_a, g_a = _arm_variance(a, champion_units)
    var_b, g_b = _arm_variance(b, challenger_units)
    singletons = g_a == a.size and g_b == b.size
    unit = cluster_from_summary(a.size, a.mean(), var_a, g_a, b.size, b.mean(), var_b, g_b,
                                "welch" if singletons else "cluster-unit")
    if champion_buckets is None or challenger_buckets is None:
        return Estimate(float(unit.difference), float(unit.variance), float(unit.df), unit.method, var_a, var_b)
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
    return Estimate(float(unit.difference), float(variance), float(df), "cluster", var_a, var_b)


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


def t_to_z(statistic, df) -> np.ndarray:
    """The normal quantile with the same tail probability as ``statistic`` under Student's t(df)."""
    t = np.asarray(statistic, dtype=np.float64)
    df = np.asarray(df, dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        z = np.sign(t) * sps.norm.isf(sps.t.sf(np.abs(t), df))
    return np.where(np.isinf(df) | np.isinf(t), t, z)


def sequential_test(est: Estimate, tau: float, alpha: float = 0.05) -> TestResult:
    """mSPRT of the estimate, its variance first widened for the df (see the module docstring)."""
    diff = np.asarray(est.difference, dtype=np.float64)
    variance = np.asarray(est.variance, dtype=np.float64)
    df = np.asarray(est.df, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = diff / np.sqrt(variance)
        z = t_to_z(t, df)
        widened = np.where((t != 0) & np.isfinite(t) & (z != 0), variance * (t / z) ** 2, variance)
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
        log_lr = 0.5 * np.log(v / (v + tau2)) + tau2 * d**2 / (2 * v * (v + tau2))
        p = np.minimum(1.0, np.exp(-log_lr))
        half = np.sqrt(v * (v + tau2) / tau2 * (2 * np.log(1 / alpha) + np.log((v + tau2) / v)))
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
