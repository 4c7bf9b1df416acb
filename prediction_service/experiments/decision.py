"""PROMOTE / ROLLBACK / CONTINUE from the two arms' samples.

Rules (thresholds from ExperimentSettings, overridable per experiment; every difference is challenger
minus champion; "significant" means p < alpha, with the always-valid mSPRT p-value in sequential mode
(the default) or the fixed-horizon t-test, on a variance clustered by randomization unit, as in
stats.py):

Primary metric, mapped by task:
- classification: accuracy (share of correct predictions). A gain / drop is in absolute points
  (0.02 = 2 percentage points).
- regression: absolute error, lower is better. Its gain is the *relative* MAE reduction
  (mae_champion - mae_challenger) / mae_champion, so "2 points" means "2 % lower MAE" and a "5 point
  drop" means "MAE 5 % higher": absolute error has units, a fraction of the champion's MAE does not.
A prediction that failed or returned NaN/inf is an error AND scores as the worst case when its outcome
arrives (wrong; the experiment's largest absolute error), so failing on hard inputs never helps.

ROLLBACK (checked first; any one suffices):
- latency: mean latency degrades by more than max_latency_degradation_ms AND significantly;
- errors: the challenger's error rate exceeds the champion's by more than rollback_error_rate_increase
  (relative: 0.5 = +50 %; any error counts when the champion has none) AND significantly;
- primary: the estimated gain is below -rollback_accuracy_drop AND the difference is significant.
PROMOTE: the estimated primary gain is at least promote_min_accuracy_gain (the margin) AND significant,
each arm has at least min_units_per_arm independent units (routing keys; and time buckets with
variance=cluster), AND the mean latency degradation is below max_latency_degradation_ms.
CONTINUE otherwise, and always while an arm has fewer than min_samples_per_arm requests (reason
"insufficient samples"); primary-metric rules also need min_samples_per_arm scored outcomes per arm,
so latency and error regressions can be rolled back before outcomes arrive.

Sizes: the primary comparison reports the total that gives the rule above ``power`` at a true gain of
target_accuracy_gain (stats.required_variance: the estimate must land beyond the margin, not just above
zero) and, in sequential mode, the expected stopping size.

``evaluate`` applies the rules to arrays of estimates (one per simulated experiment and look);
``decide`` computes the estimates of one experiment from its samples and calls it, so the simulation
bench (experiments/simulation.py) measures this very code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from . import stats
from .metrics import ArmData, count_units
from .models import Comparison, Decision, DecisionResult, ExperimentMode, Thresholds, VarianceMethod

CONTINUE, PROMOTE, ROLLBACK = 0, 1, 2
_DECISIONS = {CONTINUE: Decision.CONTINUE, PROMOTE: Decision.PROMOTE, ROLLBACK: Decision.ROLLBACK}


@dataclass(frozen=True)
class DecisionContext:
    task: str
    thresholds: Thresholds
    mode: ExperimentMode = ExperimentMode.SEQUENTIAL
    variance: VarianceMethod = VarianceMethod.UNIT
    cluster_seconds: float = 60.0
    traffic_split: float = 0.1

    @property
    def time_buckets(self) -> bool:
        return self.variance is VarianceMethod.CLUSTER


@dataclass(frozen=True)
class Inputs:
    """What the rules look at; fields are floats or arrays broadcasting together (simulations)."""

    requests_a: object
    requests_b: object
    outcomes_a: object
    outcomes_b: object
    units_a: object
    """Independent units behind the champion's scored outcomes (min of keys and time buckets if clustered)."""
    units_b: object
    latency: stats.Estimate
    error_rate_a: object
    error_rate_b: object
    errors: stats.Estimate
    primary: stats.Estimate
    primary_level_a: object
    """The champion's mean of the primary metric (regression: MAE, the unit of a relative gain)."""


@dataclass(frozen=True)
class Evaluation:
    latency: stats.TestResult
    errors: stats.TestResult
    primary: stats.TestResult
    gain: np.ndarray
    enough_requests: np.ndarray
    enough_outcomes: np.ndarray
    enough_units: np.ndarray
    rollback_latency: np.ndarray
    rollback_errors: np.ndarray
    rollback_primary: np.ndarray
    latency_ok: np.ndarray
    significant_gain: np.ndarray
    promote: np.ndarray
    decision: np.ndarray
    """CONTINUE / PROMOTE / ROLLBACK codes."""


def primary_scale(ctx: DecisionContext, level_a) -> np.ndarray:
    """Unit of a primary gain: 1 (accuracy points) or the champion's MAE (regression: relative gains)."""
    level = np.asarray(level_a, dtype=np.float64)
    if ctx.task != "regression":
        return np.ones_like(level)
    return np.where(np.isfinite(level) & (level > 0), level, 1.0)


def primary_tau(ctx: DecisionContext, scale) -> np.ndarray:
    th = ctx.thresholds
    return (th.msprt_tau or th.target_accuracy_gain) * np.asarray(scale, dtype=np.float64)


def run_test(est: stats.Estimate, ctx: DecisionContext, tau) -> stats.TestResult:
    if ctx.mode is ExperimentMode.SEQUENTIAL:
        return stats.sequential_test(est, tau, ctx.thresholds.alpha)
    return stats.fixed_test(est, ctx.thresholds.alpha)


def evaluate(x: Inputs, ctx: DecisionContext) -> Evaluation:
    th = ctx.thresholds
    alpha = th.alpha
    n_min = th.min_samples_per_arm
    latency = run_test(x.latency, ctx, max(th.max_latency_degradation_ms, 0.1))
    rate_a = np.asarray(x.error_rate_a, dtype=np.float64)
    rate_b = np.asarray(x.error_rate_b, dtype=np.float64)
    errors = run_test(x.errors, ctx, np.maximum(rate_a * th.rollback_error_rate_increase, 0.01))
    scale = primary_scale(ctx, x.primary_level_a)
    primary = run_test(x.primary, ctx, primary_tau(ctx, scale))

    with np.errstate(invalid="ignore"):
        diff = np.asarray(primary.difference, dtype=np.float64)
        gain = -diff / scale if ctx.task == "regression" else diff
        enough_requests = (np.asarray(x.requests_a) >= n_min) & (np.asarray(x.requests_b) >= n_min)
        enough_outcomes = (np.asarray(x.outcomes_a) >= n_min) & (np.asarray(x.outcomes_b) >= n_min)
        enough_units = (np.asarray(x.units_a) >= th.min_units_per_arm) & (np.asarray(x.units_b) >= th.min_units_per_arm)
        latency_diff = np.asarray(latency.difference, dtype=np.float64)
        rollback_latency = enough_requests & (latency_diff > th.max_latency_degradation_ms) & \
            (np.asarray(latency.p_value) < alpha)
        rollback_errors = enough_requests & (rate_b > rate_a * (1 + th.rollback_error_rate_increase)) & \
            (rate_b > rate_a) & (np.asarray(errors.p_value) < alpha)
        significant = np.asarray(primary.p_value) < alpha
        rollback_primary = enough_requests & enough_outcomes & (gain < -th.rollback_accuracy_drop) & significant
        rollback = rollback_latency | rollback_errors | rollback_primary
        latency_ok = latency_diff < th.max_latency_degradation_ms
        significant_gain = (gain >= th.promote_min_accuracy_gain) & significant
        promote = ~rollback & enough_requests & enough_outcomes & enough_units & significant_gain & latency_ok
    decision = np.where(rollback, ROLLBACK, np.where(promote, PROMOTE, CONTINUE))
    return Evaluation(latency, errors, primary, gain, enough_requests, enough_outcomes, enough_units,
                      rollback_latency, rollback_errors, rollback_primary, latency_ok, significant_gain, promote,
                      decision)


# -- one experiment from its samples -------------------------------------------------------------------

def _opt(value) -> float | None:
    value = float(np.asarray(value))
    return value if math.isfinite(value) else None


def _buckets(times: np.ndarray, ctx: DecisionContext) -> np.ndarray | None:
    return np.floor(times / ctx.cluster_seconds) if ctx.time_buckets else None


def _estimate(a: np.ndarray, b: np.ndarray, units_a, units_b, times_a, times_b, ctx) -> stats.Estimate:
    return stats.estimate(a, b, units_a, units_b, _buckets(times_a, ctx), _buckets(times_b, ctx))


def _comparison(metric: str, a: np.ndarray, b: np.ndarray, test: stats.TestResult) -> Comparison:
    n_a, mean_a, var_a = stats.summarize(a)
    n_b, mean_b, var_b = stats.summarize(b)
    if n_a < 2 or n_b < 2:
        return Comparison(metric=metric, method="none", champion=_opt(mean_a) if n_a else None,
                          challenger=_opt(mean_b) if n_b else None)
    diff = float(np.asarray(test.difference))
    return Comparison(
        metric=metric, method=test.method, champion=_opt(mean_a), challenger=_opt(mean_b),
        difference=_opt(diff), relative_difference=(mean_b - mean_a) / abs(mean_a) if mean_a else None,
        cohens_d=stats.cohens_d(var_a, var_b, diff), ci_low=_opt(test.ci_low), ci_high=_opt(test.ci_high),
        statistic=_opt(test.statistic), df=_opt(test.df), p_value=_opt(test.p_value))


def _describe(metric: str, a: np.ndarray, b: np.ndarray) -> Comparison:
    """Means and their difference, no test: a metric no rule acts on (P&L) gets no p-value to misread."""
    n_a, mean_a, var_a = stats.summarize(a)
    n_b, mean_b, var_b = stats.summarize(b)
    diff = mean_b - mean_a
    return Comparison(metric=metric, method="description", champion=_opt(mean_a), challenger=_opt(mean_b),
                      difference=_opt(diff), relative_difference=diff / abs(mean_a) if mean_a else None,
                      cohens_d=stats.cohens_d(var_a, var_b, diff))


def planned_totals(est: stats.Estimate, n_a, n_b, ctx: DecisionContext, scale) -> np.ndarray:
    """Total scored outcomes at which the primary rule has the configured power at the target gain, at the
    variance per scored outcome observed so far (arrays broadcast; inf where there is none).

    Each arm's per-outcome variance is its mean's (unit-clustered) variance times its n; the time-bucket
    part of a two-way variance scales both alike; stats.required_total plans each arm at the larger."""
    th = ctx.thresholds
    v_a, v_b = np.asarray(est.variance_a, dtype=np.float64), np.asarray(est.variance_b, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        inflate = np.asarray(est.variance, dtype=np.float64) / (v_a + v_b)  # 1 unless time buckets add to it
        scale2 = np.asarray(scale, dtype=np.float64) ** 2  # target, margin and tau scale with it: V with its square
        total = stats.required_total(v_a * np.asarray(n_a) * inflate / scale2, v_b * np.asarray(n_b) * inflate / scale2,
                                     th.target_accuracy_gain, th.alpha, th.power, ctx.traffic_split,
                                     th.promote_min_accuracy_gain, ctx.mode is ExperimentMode.SEQUENTIAL,
                                     th.msprt_tau or th.target_accuracy_gain)
        total = np.ceil(total)
    return np.where(np.isfinite(total) & (total > 0), total, np.inf)


def plan(est: stats.Estimate, n_a: int, n_b: int, ctx: DecisionContext, scale: float
         ) -> tuple[int | None, int | None, int | None]:
    """(planned_total, samples still needed by the slower-filling arm, expected_total) of the primary rule."""
    th = ctx.thresholds
    if n_a < 2 or n_b < 2:
        return None, None, None
    total = float(planned_totals(est, n_a, n_b, ctx, scale))
    if not math.isfinite(total):
        return None, None, None
    sequential = ctx.mode is ExperimentMode.SEQUENTIAL
    target, margin = th.target_accuracy_gain * scale, th.promote_min_accuracy_gain * scale
    tau = float(primary_tau(ctx, scale))
    planned = int(total)
    share = ctx.traffic_split
    remaining = math.ceil(max(0.0, (1 - share) * planned - n_a, share * planned - n_b))
    expected = stats.expected_total(planned, target, margin, th.alpha, th.power, tau) if sequential else None
    return planned, remaining, None if expected is None else math.ceil(expected)


def worst_abs_error(champion: ArmData, challenger: ArmData) -> float | None:
    """The largest finite absolute error of the experiment: the score of a failed regression prediction."""
    errors = np.concatenate([champion.abs_error, challenger.abs_error])
    errors = errors[np.isfinite(errors)]
    return float(errors.max()) if errors.size else None


def scored_units(units: np.ndarray | None, times: np.ndarray, rows: int, ctx: DecisionContext) -> int:
    """Independent units behind an arm's scored outcomes: keys, and at most the time buckets if clustered."""
    count = count_units(units, rows)
    if ctx.time_buckets:
        count = min(count, int(np.unique(_buckets(times, ctx)).size))
    return count


def decide(champion: ArmData, challenger: ArmData, ctx: DecisionContext) -> DecisionResult:
    units_a, units_b = champion.request_units(), challenger.request_units()
    latency_est = _estimate(champion.latency_ms, challenger.latency_ms, units_a, units_b, champion.served_at,
                            challenger.served_at, ctx)
    err_a, err_b = champion.error.astype(np.float64), challenger.error.astype(np.float64)
    errors_est = _estimate(err_a, err_b, units_a, units_b, champion.served_at, challenger.served_at, ctx)
    worst = worst_abs_error(champion, challenger) if ctx.task == "regression" else None
    a_values, a_times, a_units = champion.primary_values(ctx.task, worst)
    b_values, b_times, b_units = challenger.primary_values(ctx.task, worst)
    primary_est = _estimate(a_values, b_values, a_units, b_units, a_times, b_times, ctx)
    level_a = float(a_values.mean()) if a_values.size else float("nan")
    inputs = Inputs(
        requests_a=champion.requests, requests_b=challenger.requests,
        outcomes_a=a_values.size, outcomes_b=b_values.size,
        units_a=scored_units(a_units, a_times, a_values.size, ctx),
        units_b=scored_units(b_units, b_times, b_values.size, ctx),
        latency=latency_est, error_rate_a=float(err_a.mean()) if err_a.size else float("nan"),
        error_rate_b=float(err_b.mean()) if err_b.size else float("nan"), errors=errors_est,
        primary=primary_est, primary_level_a=level_a)
    ev = evaluate(inputs, ctx)

    regression = ctx.task == "regression"
    scale = float(primary_scale(ctx, level_a))
    primary = _comparison("abs_error" if regression else "accuracy", a_values, b_values, ev.primary)
    primary.planned_total, primary.samples_needed_per_arm, primary.expected_total = plan(
        primary_est, a_values.size, b_values.size, ctx, scale)
    latency = _comparison("latency_ms", champion.latency_ms, challenger.latency_ms, ev.latency)
    errors = _comparison("error_rate", err_a, err_b, ev.errors)
    pnl_a, _ = champion.pnl_values()
    pnl_b, _ = challenger.pnl_values()
    pnl = _describe("pnl", pnl_a, pnl_b) if pnl_a.size and pnl_b.size else None
    result = DecisionResult(decision=_DECISIONS[int(ev.decision)], reasons=[], primary=primary, latency=latency,
                            error_rate=errors, pnl=pnl)
    result.reasons = _reasons(ev, inputs, champion, challenger, ctx, primary)
    return result


def _reasons(ev: Evaluation, x: Inputs, champion: ArmData, challenger: ArmData, ctx: DecisionContext,
             primary: Comparison) -> list[str]:
    th = ctx.thresholds
    n_min = th.min_samples_per_arm
    if not bool(ev.enough_requests):
        return [f"insufficient samples: requests champion={champion.requests}, challenger={challenger.requests}; "
                f"each arm needs {n_min}"]
    if int(ev.decision) == ROLLBACK:
        reasons = []
        if bool(ev.rollback_latency):
            reasons.append(f"latency degraded by {float(ev.latency.difference):.2f} ms "
                           f"(> {th.max_latency_degradation_ms} ms, p={float(ev.latency.p_value):.3g})")
        if bool(ev.rollback_errors):
            reasons.append(f"error rate {float(x.error_rate_b):.4f} vs {float(x.error_rate_a):.4f} "
                           f"(> +{th.rollback_error_rate_increase:.0%}, p={float(ev.errors.p_value):.3g})")
        if bool(ev.rollback_primary):
            what = "MAE rose by" if ctx.task == "regression" else "accuracy dropped by"
            reasons.append(f"{what} {-float(ev.gain):.2%} (> {th.rollback_accuracy_drop:.2%}, "
                           f"p={float(ev.primary.p_value):.3g})")
        return reasons
    if not bool(ev.enough_outcomes):
        return [f"insufficient samples: scored outcomes champion={x.outcomes_a}, challenger={x.outcomes_b}; "
                f"each arm needs {n_min}"]
    label = "MAE reduction" if ctx.task == "regression" else "accuracy gain"
    gain = float(ev.gain)
    p_value = float(ev.primary.p_value)
    latency_diff = float(ev.latency.difference)
    if int(ev.decision) == PROMOTE:
        return [f"{label} {gain:.2%} (>= {th.promote_min_accuracy_gain:.2%}, p={p_value:.3g}) "
                f"and latency change {latency_diff:+.2f} ms (< {th.max_latency_degradation_ms} ms)"]
    reasons = []
    if not bool(ev.enough_units):
        reasons.append(f"too few independent units: champion={x.units_a}, challenger={x.units_b} "
                       f"(routing keys{', time buckets' if ctx.time_buckets else ''}); each arm needs "
                       f"{th.min_units_per_arm} before a promotion")
    if not math.isfinite(gain) or gain < th.promote_min_accuracy_gain:
        reasons.append(f"{label} {gain if math.isfinite(gain) else 0.0:.2%} below the "
                       f"{th.promote_min_accuracy_gain:.2%} margin")
    if not p_value < th.alpha:
        reasons.append(f"{label} not significant (p={p_value:.3g}, alpha={th.alpha})")
    if not bool(ev.latency_ok):
        reasons.append(f"latency change {latency_diff:.2f} ms not below {th.max_latency_degradation_ms} ms")
    if primary.planned_total is not None:
        reasons.append(f"planned size {primary.planned_total} scored outcomes for {th.power:.0%} power at a "
                       f"{th.target_accuracy_gain:.2%} {label}"
                       + (f"; expected stop near {primary.expected_total}" if primary.expected_total else ""))
    return reasons
