"""PROMOTE / ROLLBACK / CONTINUE for a shadow experiment: both models scored on the same requests.

Every production request is answered by the champion and a copy runs on the challenger, so an outcome
scores both models on the same input. The comparison is paired: on the per-request differences
d_i = score(challenger)_i - score(champion)_i, whose mean is the difference of the two models' means. The
inputs that are hard for one model are mostly hard for the other, so d varies far less than either score
and the paired test needs far fewer outcomes than a split that gives the challenger a share of traffic.

Variance of mean(d), as the split design's default (VarianceMethod.BATCH) gives one arm (stats.py):
- cluster-robust (CR1) over randomization units (routing-key digests; a request without a key is its own
  unit), floored at s^2/n: a key's requests share its behaviour, and both models see the same keys, so a
  model difference confined to a few busy keys is a few units' worth of evidence;
- batch means over the time-ordered d (batches of about n^(1/3) consecutive pairs), floored at s^2/n: a
  stretch where one model is right and the other wrong is one piece of evidence, not many;
- V = V_unit + V_batch - s^2/n (each design effect added to the independent-pair variance), and the
  degrees of freedom G - 1 with G the effective units (1 / sum of squared traffic shares), at most the
  effective batches where the batches add variance.
This holds whatever the experiment's ``variance`` setting: both corrections cost little when the pairs are
independent, and a shared time bucket needs no third one (a shock that hits both models in the same minute
cancels out of d).

Test: the always-valid mSPRT (ExperimentMode.SEQUENTIAL, the default; ``stats.sequential_test``, V widened
for the df, tau as the split design chooses it) or the t-test (fixed). Scores and gains as in decision.py:
classification scores 1 / 0 and the gain is in accuracy points; regression scores the absolute error
(lower is better) and the gain is the relative MAE reduction -mean(d) / MAE(champion).

Rules (thresholds as in a split; "arm" sizes read as pairs, since both models score every pair):
ROLLBACK when the gain is below -rollback_accuracy_drop and significant, with at least min_samples_per_arm
pairs; PROMOTE when the gain is at least promote_min_accuracy_gain and significant, with at least
min_samples_per_arm pairs resting on at least min_units_per_arm effective units; CONTINUE otherwise.

``evaluate_paired`` applies the rules to arrays of estimates (one per simulated experiment and look);
``decide_paired`` computes the estimate of one experiment from its pairs and calls it, so the simulation
bench (simulation.py, shadow cells) measures this very code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from . import stats
from .decision import (CONTINUE, PROMOTE, ROLLBACK, DecisionContext, _projection, gain_reasons, primary_scale,
                       primary_tau, run_test, size_reasons, units_at_any_size)
from .models import Comparison, Decision, DecisionResult, ExperimentMode, Reachability, Unreachable

_DECISIONS = {CONTINUE: Decision.CONTINUE, PROMOTE: Decision.PROMOTE, ROLLBACK: Decision.ROLLBACK}
METHOD = "paired-batch"


@dataclass(frozen=True)
class PairedData:
    champion: np.ndarray
    """float64, one entry per scored request: the champion's primary score."""
    challenger: np.ndarray
    """Same requests, same order: the challenger's primary score."""
    served_at: np.ndarray
    """float64 epoch seconds, same order (sorted inside when not in time order)."""
    units: np.ndarray | None
    """Randomization-unit labels (routing-key digest; a request without a key is its own unit); None: every
    request its own unit."""


@dataclass(frozen=True)
class PairedInputs:
    """What the rules look at; fields are floats or arrays broadcasting together (simulations)."""

    pairs: object
    """Scored pairs."""
    units: object
    """Effective units behind them (1 / sum of squared traffic shares)."""
    estimate: stats.Estimate
    """mean(d) with its variance and df (``paired_estimate``)."""
    level_a: object
    """The champion's mean score (regression: its MAE, the unit of a relative gain)."""


@dataclass(frozen=True)
class PairedEvaluation:
    test: stats.TestResult
    gain: np.ndarray
    enough_pairs: np.ndarray
    enough_units: np.ndarray
    significant: np.ndarray
    rollback: np.ndarray
    promote: np.ndarray
    decision: np.ndarray
    """CONTINUE / PROMOTE / ROLLBACK codes."""


def paired_method(ctx: DecisionContext) -> str:
    return "paired-msprt-batch" if ctx.mode is ExperimentMode.SEQUENTIAL else METHOD


def combine(var_unit, var_batch, var_iid, eff_units, eff_batches) -> tuple[np.ndarray, np.ndarray]:
    """(V, df) of mean(d) from its unit-clustered and batch variances (each floored at s^2/n) and their
    effective clusters, as stats.estimate combines them for one arm (arrays broadcast)."""
    var_unit, var_batch, var_iid = (np.asarray(x, dtype=np.float64) for x in (var_unit, var_batch, var_iid))
    eff_units, eff_batches = np.asarray(eff_units, dtype=np.float64), np.asarray(eff_batches, dtype=np.float64)
    variance = var_unit + var_batch - var_iid
    groups = np.where(stats.adds_variance(var_batch, var_iid), np.minimum(eff_units, eff_batches), eff_units)
    # one variance component: Satterthwaite's df reduce to G - 1
    return variance, np.where(groups > 1, groups - 1, 1.0)


def paired_estimate(d: np.ndarray, units: np.ndarray | None) -> tuple[stats.Estimate, float, float]:
    """(estimate of mean(d), effective units, sum of squared unit counts) from the time-ordered d."""
    n = d.size
    if n < 2:
        nan = float("nan")
        return stats.Estimate(float(d.mean()) if n else nan, nan, nan, "none"), float(n), float(n)
    var_unit, _, eff_units, sum_sq = stats._arm_variance(d, units)
    var_batch, _, eff_batches = stats.batch_variance(d)
    var_iid = stats._iid_variance(d)
    variance, df = combine(var_unit, var_batch, var_iid, eff_units, eff_batches)
    singletons = sum_sq == n
    est = stats.Estimate(float(d.mean()), float(variance), float(df), METHOD, float(variance), 0.0,
                         unit_excess_a=var_unit - var_iid, unit_excess_b=0.0,
                         unit_sq_a=float("nan") if singletons else sum_sq)
    return est, eff_units, sum_sq


def evaluate_paired(x: PairedInputs, ctx: DecisionContext) -> PairedEvaluation:
    th = ctx.thresholds
    scale = primary_scale(ctx, x.level_a)
    test = run_test(x.estimate, ctx, primary_tau(ctx, scale))
    with np.errstate(invalid="ignore"):
        diff = np.asarray(test.difference, dtype=np.float64)
        gain = -diff / scale if ctx.task == "regression" else diff
        enough_pairs = np.asarray(x.pairs) >= th.min_samples_per_arm
        enough_units = np.asarray(x.units) >= th.min_units_per_arm
        significant = np.asarray(test.p_value) < th.alpha
        rollback = enough_pairs & (gain < -th.rollback_accuracy_drop) & significant
        promote = ~rollback & enough_pairs & enough_units & (gain >= th.promote_min_accuracy_gain) & significant
    decision = np.where(rollback, ROLLBACK, np.where(promote, PROMOTE, CONTINUE))
    return PairedEvaluation(test, gain, enough_pairs, enough_units, significant, rollback, promote, decision)


# -- one experiment from its pairs ---------------------------------------------------------------------

def _opt(value) -> float | None:
    value = float(np.asarray(value))
    return value if math.isfinite(value) else None


def _pairs_in_time_order(data: PairedData) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(champion, challenger, units) of the pairs both scores of which are finite, sorted stably by
    served_at: batch means cut consecutive pairs."""
    a = np.asarray(data.champion, dtype=np.float64)
    b = np.asarray(data.challenger, dtype=np.float64)
    times = np.asarray(data.served_at, dtype=np.float64)
    units = None if data.units is None else np.asarray(data.units, dtype=object)
    if units is not None and units.size != a.size:
        units = None
    keep = np.isfinite(a) & np.isfinite(b)
    if not keep.all():
        a, b, times = a[keep], b[keep], times[keep]
        units = None if units is None else units[keep]
    if times.size > 1 and not bool(np.all(np.diff(times) >= 0)):
        order = np.argsort(times, kind="stable")
        a, b = a[order], b[order]
        units = None if units is None else units[order]
    return a, b, units


@dataclass(frozen=True)
class PairedPlan:
    total: float
    """Pairs at which one look has the configured power at the target gain; inf: none."""
    reach: float
    """Effective units the pairs tend to as outcomes arrive (inf: unbounded)."""
    why_not: Unreachable | None


def paired_plan(est: stats.Estimate, n: int, ctx: DecisionContext, scale: float) -> PairedPlan:
    """Planned pairs, with sticky units' between-unit variance projected as a floor that more outcomes of
    the same units do not lower (decision.plan's projection, for one sample)."""
    th = ctx.thresholds
    reach = float(units_at_any_size(n, est.unit_sq_a))
    if reach < th.min_units_per_arm:
        return PairedPlan(math.inf, reach, Unreachable.UNITS)
    sequential = ctx.mode is ExperimentMode.SEQUENTIAL
    required = stats.required_variance(th.target_accuracy_gain, th.promote_min_accuracy_gain, th.alpha, th.power,
                                       sequential, th.msprt_tau or th.target_accuracy_gain)
    if required is None or required <= 0:
        return PairedPlan(math.inf, reach, Unreachable.MARGIN)
    w, floor = (float(np.asarray(x)) / scale**2
                for x in _projection(n, est.variance, est.unit_excess_a, est.unit_sq_a))
    if not (math.isfinite(w) and math.isfinite(floor)):
        return PairedPlan(math.inf, reach, None)
    if floor >= required:
        return PairedPlan(math.inf, reach, Unreachable.VARIANCE)
    return PairedPlan(max(2.0, math.ceil(max(w, 0.0) / (required - floor))), reach, None)


def _reachability(p: PairedPlan, n: int, ctx: DecisionContext) -> Reachability | None:
    th = ctx.thresholds
    if n < th.min_samples_per_arm:
        return None
    units = p.reach if math.isfinite(p.reach) else None
    result = Reachability(promotion_reachable=p.why_not is not Unreachable.UNITS, size_reachable=p.why_not is None,
                          why_not=p.why_not, units_champion=units, units_challenger=units, units_total=units,
                          min_units_per_arm=th.min_units_per_arm)
    if p.why_not is Unreachable.UNITS:
        result.reason = (f"no promotion is reachable: the scored pairs tend to about {p.reach:.1f} effective units "
                         f"(sticky routing keys keep their traffic shares, so more outcomes add none); PROMOTE needs "
                         f"{th.min_units_per_arm}. Both models score every request, so no traffic split changes this: "
                         "only a routing key with more distinct values (or none: every request its own unit) can.")
    elif p.why_not is Unreachable.VARIANCE:
        result.reason = (f"no size gives the rule {th.power:.0%} power at a {th.target_accuracy_gain:.2%} gain: the "
                         "variance between the routing keys, which more outcomes of the same keys do not reduce, "
                         "alone exceeds what that power needs (a larger gain can still be promoted)")
    elif p.why_not is Unreachable.MARGIN:
        result.reason = (f"no size gives the rule {th.power:.0%} power: the target gain "
                         f"{th.target_accuracy_gain:.2%} does not exceed the {th.promote_min_accuracy_gain:.2%} margin")
    return result


def decide_paired(data: PairedData, ctx: DecisionContext) -> DecisionResult:
    a, b, units = _pairs_in_time_order(data)
    d = b - a
    n = d.size
    regression = ctx.task == "regression"
    metric = "abs_error" if regression else "accuracy"
    level_a = float(a.mean()) if n else float("nan")
    est, eff_units, _ = paired_estimate(d, units)
    ev = evaluate_paired(PairedInputs(n, eff_units, est, level_a), ctx)
    if n < 2:
        primary = Comparison(metric=metric, method="none", champion=_opt(level_a) if n else None,
                             challenger=_opt(b.mean()) if n else None)
        return DecisionResult(decision=Decision.CONTINUE, primary=primary,
                              reasons=[f"insufficient samples: {n} scored pairs; the paired test needs "
                                       f"{ctx.thresholds.min_samples_per_arm}"])
    scale = float(primary_scale(ctx, level_a))
    test = ev.test
    mean_b = float(b.mean())
    primary = Comparison(
        metric=metric, method=paired_method(ctx), champion=_opt(level_a), challenger=_opt(mean_b),
        difference=_opt(test.difference), relative_difference=(mean_b - level_a) / abs(level_a) if level_a else None,
        cohens_d=stats.cohens_d(float(a.var(ddof=1)), float(b.var(ddof=1)), float(test.difference)),
        ci_low=_opt(test.ci_low), ci_high=_opt(test.ci_high), statistic=_opt(test.statistic), df=_opt(test.df),
        p_value=_opt(test.p_value))
    plan = paired_plan(est, n, ctx, scale)
    reach = _reachability(plan, n, ctx)
    if math.isfinite(plan.total):
        th = ctx.thresholds
        primary.planned_total = int(plan.total)
        primary.samples_needed_per_arm = max(0, int(plan.total) - n)
        if ctx.mode is ExperimentMode.SEQUENTIAL:
            target, margin = th.target_accuracy_gain * scale, th.promote_min_accuracy_gain * scale
            expected = stats.expected_total(plan.total, target, margin, th.alpha, th.power,
                                            float(primary_tau(ctx, scale)))
            primary.expected_total = None if expected is None else math.ceil(expected)
    result = DecisionResult(decision=_DECISIONS[int(ev.decision)], reasons=[], primary=primary, reachability=reach)
    result.reasons = _reasons(ev, n, eff_units, ctx, primary, reach)
    return result


def _reasons(ev: PairedEvaluation, n: int, units: float, ctx: DecisionContext, primary: Comparison,
             reach: Reachability | None) -> list[str]:
    th = ctx.thresholds
    label = "MAE reduction" if ctx.task == "regression" else "accuracy gain"
    gain, p_value = float(ev.gain), float(ev.test.p_value)
    if not bool(ev.enough_pairs):
        return [f"insufficient samples: {n} scored pairs (both models scored on the same request); the paired "
                f"test needs {th.min_samples_per_arm}"]
    if int(ev.decision) == ROLLBACK:
        what = "MAE rose by" if ctx.task == "regression" else "accuracy dropped by"
        return [f"{what} {-gain:.2%} on {n} paired outcomes (> {th.rollback_accuracy_drop:.2%}, p={p_value:.3g})"]
    if int(ev.decision) == PROMOTE:
        return [f"{label} {gain:.2%} on {n} paired outcomes (>= {th.promote_min_accuracy_gain:.2%}, "
                f"p={p_value:.3g})"]
    reasons = []
    if not bool(ev.enough_units):
        reasons.append(f"too few independent units: {units:.1f} effective (routing keys, 1 / sum of squared traffic "
                       f"shares) behind {n} paired outcomes; a promotion needs {th.min_units_per_arm}")
    return reasons + gain_reasons(label, gain, p_value, th) + size_reasons(label, primary, reach, th,
                                                                        "paired outcomes")


__all__ = ["PairedData", "PairedEvaluation", "PairedInputs", "combine", "decide_paired", "evaluate_paired",
           "paired_estimate"]
