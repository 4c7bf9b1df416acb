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
each arm has at least min_units_per_arm effective independent units (routing keys counted as
1 / sum of squared traffic shares, stats.effective_clusters; and time buckets with variance=cluster), AND
the mean latency degradation is below max_latency_degradation_ms.
CONTINUE otherwise, and always while an arm has fewer than min_samples_per_arm requests (reason
"insufficient samples"); primary-metric rules also need min_samples_per_arm scored outcomes per arm,
so latency and error regressions can be rolled back before outcomes arrive.

Sizes: the primary comparison reports the total that gives the rule above ``power`` at a true gain of
target_accuracy_gain (stats.required_variance: the estimate must land beyond the margin, not just above
zero) and, in sequential mode, the expected stopping size.

Reachability (``plan``): sticky routing keys keep their arm and, roughly, their traffic share, so more
outcomes of the same keys add neither units nor information about between-key differences. Each arm's
variance of its mean is projected as w/n + beta * S * (1 - 1/n): w the part that shrinks with more
outcomes, beta the between-unit variance (the unit-clustering excess over s^2/n divided by
sum c^2/n^2 - 1/n) and S Simpson's unbiased sum of squared unit shares, (sum c^2 - n) / (n (n-1)),
whose inverse is the number of effective units the arm tends to. PROMOTE is out of reach, whatever the
size, when an arm tends to fewer than min_units_per_arm effective units (the unit rule can never pass:
59 or fewer equally busy keys give no split 30 in both arms; 299 or fewer give a 10 % challenger fewer
than 30); no size has the configured power when the floor beta_a S_a + beta_b S_b alone exceeds the
variance that power needs. The analysis says which (``Reachability``) instead of a planned size that
recedes as data arrives.

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
from .models import (Comparison, Decision, DecisionResult, ExperimentMode, Reachability, Thresholds, Unreachable,
                     VarianceMethod)

CONTINUE, PROMOTE, ROLLBACK = 0, 1, 2
_DECISIONS = {CONTINUE: Decision.CONTINUE, PROMOTE: Decision.PROMOTE, ROLLBACK: Decision.ROLLBACK}


@dataclass(frozen=True)
class DecisionContext:
    task: str
    thresholds: Thresholds
    mode: ExperimentMode = ExperimentMode.SEQUENTIAL
    variance: VarianceMethod = VarianceMethod.BATCH
    cluster_seconds: float = 60.0
    traffic_split: float = 0.1

    @property
    def time_buckets(self) -> bool:
        return self.variance is VarianceMethod.CLUSTER

    @property
    def batches(self) -> bool:
        return self.variance is VarianceMethod.BATCH


@dataclass(frozen=True)
class Inputs:
    """What the rules look at; fields are floats or arrays broadcasting together (simulations)."""

    requests_a: object
    requests_b: object
    outcomes_a: object
    outcomes_b: object
    units_a: object
    """Effective independent units behind the champion's scored outcomes (1 / sum of squared shares; the
    smaller of keys and time buckets if clustered)."""
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
    return stats.estimate(a, b, units_a, units_b, _buckets(times_a, ctx), _buckets(times_b, ctx),
                          batches=ctx.batches)


def in_time_order(data: ArmData) -> ArmData:
    """The arm's rows sorted by when they were served (stably): batch means cut consecutive outcomes."""
    def order(times: np.ndarray) -> np.ndarray | None:
        return None if times.size < 2 or bool(np.all(np.diff(times) >= 0)) else np.argsort(times, kind="stable")

    fields = dict(vars(data))
    requests, outcomes = order(data.served_at), order(data.outcome_served_at)
    for names, idx, rows in ((("latency_ms", "error", "served_at", "unit"), requests, data.requests),
                             (("actual", "predicted_class", "correct", "abs_error", "pnl", "outcome_served_at",
                               "outcome_unit", "worst_case"), outcomes, data.outcome_served_at.size)):
        if idx is None:
            continue
        for name in names:
            if fields[name].size == rows:
                fields[name] = fields[name][idx]
    return ArmData(**fields)


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


@dataclass(frozen=True)
class Plan:
    """plan_arrays' answer; fields are floats or arrays (simulations)."""

    total: np.ndarray
    """Total scored outcomes for the configured power; inf where no size reaches it."""
    why_not: np.ndarray
    """0 reachable, 1 units (PROMOTE impossible), 2 variance floor, 3 margin (no size has the power)."""
    units_a: np.ndarray
    """Effective units each arm tends to (inf: unbounded)."""
    units_b: np.ndarray
    units_total: np.ndarray


REACHABLE, NO_UNITS, NO_VARIANCE, NO_MARGIN = 0, 1, 2, 3
UNREACHABLE = {NO_UNITS: Unreachable.UNITS, NO_VARIANCE: Unreachable.VARIANCE, NO_MARGIN: Unreachable.MARGIN}


def units_at_any_size(n, sum_sq) -> np.ndarray:
    """Effective units an arm tends to as its units' outcomes grow in fixed shares: 1 / Simpson's unbiased
    sum of squared shares, n (n-1) / (sum_g c_g^2 - n); inf while no unit has two outcomes."""
    n, sum_sq = np.asarray(n, dtype=np.float64), np.asarray(sum_sq, dtype=np.float64)
    sum_sq = np.where(np.isnan(sum_sq), n, sum_sq)  # nan: every outcome its own unit
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(sum_sq > n, n * (n - 1) / (sum_sq - n), np.inf)


def _projection(n, variance, excess, sum_sq) -> tuple[np.ndarray, np.ndarray]:
    """(w, floor) of an arm: its mean's variance at n outcomes is w/n + floor (1 - 1/n) (module docstring)."""
    n, variance = np.asarray(n, dtype=np.float64), np.asarray(variance, dtype=np.float64)
    excess = np.maximum(np.nan_to_num(np.asarray(excess, dtype=np.float64)), 0.0)
    sum_sq = np.asarray(sum_sq, dtype=np.float64)
    sum_sq = np.where(np.isnan(sum_sq), n, sum_sq)
    with np.errstate(invalid="ignore", divide="ignore"):
        repeat = (sum_sq - n) / n**2  # sum c^2 / n^2 - 1/n
        beta = np.where(repeat > 0, excess / repeat, 0.0)
        simpson = np.where((n > 1) & (sum_sq > n), (sum_sq - n) / (n * (n - 1)), 0.0)
        return n * (variance - excess), beta * simpson


def plan_arrays(est: stats.Estimate, n_a, n_b, ctx: DecisionContext, scale) -> Plan:
    """Total scored outcomes at which the primary rule has the configured power at the target gain, at the
    variance per scored outcome observed so far with the between-unit part projected as a floor, and
    whether PROMOTE is reachable at all (arrays broadcast).

    The part of each arm's variance that shrinks with more outcomes is planned at the larger arm's per
    outcome (stats.required_total: the test meets the variance where the estimate lands); the time-bucket
    part of a two-way variance scales everything alike."""
    th = ctx.thresholds
    share = ctx.traffic_split
    v_a, v_b = np.asarray(est.variance_a, dtype=np.float64), np.asarray(est.variance_b, dtype=np.float64)
    n_a, n_b = np.asarray(n_a, dtype=np.float64), np.asarray(n_b, dtype=np.float64)
    w_a, floor_a = _projection(n_a, v_a, est.unit_excess_a, est.unit_sq_a)
    w_b, floor_b = _projection(n_b, v_b, est.unit_excess_b, est.unit_sq_b)
    reach_a, reach_b = units_at_any_size(n_a, est.unit_sq_a), units_at_any_size(n_b, est.unit_sq_b)
    sq = [np.where(np.isnan(np.asarray(q, dtype=np.float64)), n, q)
          for q, n in ((est.unit_sq_a, n_a), (est.unit_sq_b, n_b))]
    reach_total = units_at_any_size(n_a + n_b, sq[0] + sq[1])
    with np.errstate(invalid="ignore", divide="ignore"):
        inflate = np.asarray(est.variance, dtype=np.float64) / (v_a + v_b)  # 1 unless time buckets add to it
        factor = inflate / np.asarray(scale, dtype=np.float64) ** 2  # target, margin, tau scale with it
        sequential = ctx.mode is ExperimentMode.SEQUENTIAL
        required = stats.required_variance(th.target_accuracy_gain, th.promote_min_accuracy_gain, th.alpha, th.power,
                                           sequential, th.msprt_tau or th.target_accuracy_gain)
        floor = (floor_a + floor_b) * factor
        shrinking = (np.maximum(w_a, w_b) * (1 / (1 - share) + 1 / share) - floor_a / (1 - share)
                     - floor_b / share) * factor
        if required is None or required <= 0:
            total = np.full(np.broadcast(floor, shrinking).shape, np.inf)
        else:
            total = np.where(floor < required, np.ceil(np.maximum(shrinking, 0.0) / (required - floor)), np.inf)
            total = np.where(np.isfinite(total), np.maximum(total, 2.0), np.inf)
        enough = (n_a >= th.min_samples_per_arm) & (n_b >= th.min_samples_per_arm)
        few_units = enough & ((reach_a < th.min_units_per_arm) | (reach_b < th.min_units_per_arm))
        why = np.where(required is None, NO_MARGIN,
                       np.where(few_units, NO_UNITS,
                                np.where(np.isnan(floor) | (floor < (required or 0.0)), REACHABLE, NO_VARIANCE)))
        total = np.where((why == REACHABLE) & np.isfinite(total) & (total > 0), total, np.inf)
    return Plan(total, why, reach_a, reach_b, reach_total)


def planned_totals(est: stats.Estimate, n_a, n_b, ctx: DecisionContext, scale) -> np.ndarray:
    """plan_arrays' totals: inf where none reaches the power or PROMOTE is out of reach."""
    return plan_arrays(est, n_a, n_b, ctx, scale).total


def _units_text(value: float) -> str:
    return "an unbounded number of" if not math.isfinite(value) else f"about {value:.1f}"


def reachability(p: Plan, n_a: int, n_b: int, ctx: DecisionContext) -> Reachability | None:
    """The typed answer of ``plan_arrays`` for one experiment; None before both arms have min_samples_per_arm
    scored outcomes."""
    th = ctx.thresholds
    if n_a < th.min_samples_per_arm or n_b < th.min_samples_per_arm:
        return None
    why = int(np.asarray(p.why_not))
    units = [float(np.asarray(x)) for x in (p.units_a, p.units_b, p.units_total)]
    opt = [u if math.isfinite(u) else None for u in units]
    result = Reachability(promotion_reachable=why != NO_UNITS, size_reachable=why == REACHABLE,
                          units_champion=opt[0], units_challenger=opt[1], units_total=opt[2],
                          min_units_per_arm=th.min_units_per_arm)
    if why == REACHABLE:
        return result
    result.why_not = UNREACHABLE[why]
    need = th.min_units_per_arm
    if why == NO_UNITS:
        total = units[2]
        text = (f"no promotion is reachable at this split: the champion's outcomes tend to {_units_text(units[0])} "
                f"effective units and the challenger's to {_units_text(units[1])} (sticky routing keys keep their "
                f"arm and traffic share, so more outcomes add none); PROMOTE needs {need} in each arm. ")
        if math.isfinite(total) and total < 2 * need:
            text += (f"The {total:.1f} effective units of both arms together give no split {need} in both: only a "
                     "routing key with more distinct values (or none: every request its own unit) can.")
        else:
            low = need / total if math.isfinite(total) else 0.0
            result.splits = (round(low, 4), round(1 - low, 4))
            text += (f"A new experiment with traffic_split between {low:.2f} and {1 - low:.2f} could give both "
                     f"arms {need} (keys of even traffic assumed).")
        result.reason = text
    elif why == NO_VARIANCE:
        result.reason = (f"no size gives the rule {th.power:.0%} power at a {th.target_accuracy_gain:.2%} gain at "
                         "this split: the variance between the routing keys, which more outcomes of the same keys "
                         "do not reduce, alone exceeds what that power needs (a larger gain can still be "
                         "promoted; more distinct keys, or a split nearer 50 %, would help)")
    else:
        result.reason = (f"no size gives the rule {th.power:.0%} power: the target gain "
                         f"{th.target_accuracy_gain:.2%} does not exceed the {th.promote_min_accuracy_gain:.2%} margin")
    return result


def plan(est: stats.Estimate, n_a: int, n_b: int, ctx: DecisionContext, scale: float
         ) -> tuple[int | None, int | None, int | None, Reachability | None]:
    """(planned_total, samples still needed by the slower-filling arm, expected_total, reachability) of the
    primary rule."""
    th = ctx.thresholds
    if n_a < 2 or n_b < 2:
        return None, None, None, None
    p = plan_arrays(est, n_a, n_b, ctx, scale)
    reach = reachability(p, n_a, n_b, ctx)
    total = float(np.asarray(p.total))
    if not math.isfinite(total):
        return None, None, None, reach
    sequential = ctx.mode is ExperimentMode.SEQUENTIAL
    target, margin = th.target_accuracy_gain * scale, th.promote_min_accuracy_gain * scale
    tau = float(primary_tau(ctx, scale))
    planned = int(total)
    share = ctx.traffic_split
    remaining = math.ceil(max(0.0, (1 - share) * planned - n_a, share * planned - n_b))
    expected = stats.expected_total(planned, target, margin, th.alpha, th.power, tau) if sequential else None
    return planned, remaining, None if expected is None else math.ceil(expected), reach


def worst_abs_error(champion: ArmData, challenger: ArmData) -> float | None:
    """The largest finite absolute error of the experiment: the score of a failed regression prediction."""
    errors = np.concatenate([champion.abs_error, challenger.abs_error])
    errors = errors[np.isfinite(errors)]
    return float(errors.max()) if errors.size else None


def scored_units(units: np.ndarray | None, times: np.ndarray, rows: int, ctx: DecisionContext) -> tuple[int, float]:
    """(distinct, effective) independent units behind an arm's scored outcomes: keys (effective: 1 / sum of
    squared shares), and at most the time buckets if clustered."""
    count = count_units(units, rows)
    if units is None or np.asarray(units).size != rows:
        effective = float(rows)
    else:
        effective = float(stats.effective_clusters(np.unique(units, return_counts=True)[1])) if rows else 0.0
    if ctx.time_buckets:
        buckets = np.unique(_buckets(times, ctx), return_counts=True)[1]
        count = min(count, int(buckets.size))
        effective = min(effective, float(stats.effective_clusters(buckets)) if buckets.size else 0.0)
    return count, effective


def decide(champion: ArmData, challenger: ArmData, ctx: DecisionContext) -> DecisionResult:
    champion, challenger = in_time_order(champion), in_time_order(challenger)
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
        units_a=scored_units(a_units, a_times, a_values.size, ctx)[1],
        units_b=scored_units(b_units, b_times, b_values.size, ctx)[1],
        latency=latency_est, error_rate_a=float(err_a.mean()) if err_a.size else float("nan"),
        error_rate_b=float(err_b.mean()) if err_b.size else float("nan"), errors=errors_est,
        primary=primary_est, primary_level_a=level_a)
    ev = evaluate(inputs, ctx)

    regression = ctx.task == "regression"
    scale = float(primary_scale(ctx, level_a))
    primary = _comparison("abs_error" if regression else "accuracy", a_values, b_values, ev.primary)
    primary.planned_total, primary.samples_needed_per_arm, primary.expected_total, reach = plan(
        primary_est, a_values.size, b_values.size, ctx, scale)
    latency = _comparison("latency_ms", champion.latency_ms, challenger.latency_ms, ev.latency)
    errors = _comparison("error_rate", err_a, err_b, ev.errors)
    pnl_a, _ = champion.pnl_values()
    pnl_b, _ = challenger.pnl_values()
    pnl = _describe("pnl", pnl_a, pnl_b) if pnl_a.size and pnl_b.size else None
    result = DecisionResult(decision=_DECISIONS[int(ev.decision)], reasons=[], primary=primary, latency=latency,
                            error_rate=errors, pnl=pnl, reachability=reach)
    result.reasons = _reasons(ev, inputs, champion, challenger, ctx, primary, reach)
    return result


def _reasons(ev: Evaluation, x: Inputs, champion: ArmData, challenger: ArmData, ctx: DecisionContext,
             primary: Comparison, reach: Reachability | None = None) -> list[str]:
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
        reasons.append(f"too few independent units: champion={float(x.units_a):.1f}, challenger={float(x.units_b):.1f} "
                       f"effective (routing keys, 1 / sum of squared traffic shares"
                       f"{'; time buckets' if ctx.time_buckets else ''}); each arm needs "
                       f"{th.min_units_per_arm} before a promotion")
    reasons += gain_reasons(label, gain, p_value, th)
    if not bool(ev.latency_ok):
        reasons.append(f"latency change {latency_diff:.2f} ms not below {th.max_latency_degradation_ms} ms")
    return reasons + size_reasons(label, primary, reach, th, "scored outcomes")


def gain_reasons(label: str, gain: float, p_value: float, th: Thresholds) -> list[str]:
    """Why a gain does not promote yet: below the margin, not significant (a split's and a paired test's)."""
    reasons = []
    if not math.isfinite(gain) or gain < th.promote_min_accuracy_gain:
        reasons.append(f"{label} {gain if math.isfinite(gain) else 0.0:.2%} below the "
                       f"{th.promote_min_accuracy_gain:.2%} margin")
    if not p_value < th.alpha:
        reasons.append(f"{label} not significant (p={p_value:.3g}, alpha={th.alpha})")
    return reasons


def size_reasons(label: str, primary: Comparison, reach: Reachability | None, th: Thresholds,
                 outcomes: str) -> list[str]:
    """What more ``outcomes`` can do: none reaches the power (why), or the planned size and expected stop."""
    if reach is not None and not reach.size_reachable and reach.reason:
        return [reach.reason]
    if primary.planned_total is not None:
        return [f"planned size {primary.planned_total} {outcomes} for {th.power:.0%} power at a "
                f"{th.target_accuracy_gain:.2%} {label}"
                + (f"; expected stop near {primary.expected_total}" if primary.expected_total else "")]
    return []
