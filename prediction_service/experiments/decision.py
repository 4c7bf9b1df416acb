"""PROMOTE / ROLLBACK / CONTINUE from the two arms' samples.

Rules (thresholds from ExperimentSettings, overridable per experiment; every difference is challenger
minus champion; "significant" means p < alpha, with the fixed-horizon test or, in sequential mode, the
always-valid mSPRT p-value, both as configured in stats.py):

Primary metric, mapped by task:
- classification: accuracy (share of correct predictions). A gain / drop is in absolute points
  (0.02 = 2 percentage points).
- regression: absolute error, lower is better. Its gain is the *relative* MAE reduction
  (mae_champion - mae_challenger) / mae_champion, so "2 points" means "2 % lower MAE" and a "5 point
  drop" means "MAE 5 % higher": absolute error has units, a fraction of the champion's MAE does not.

ROLLBACK (checked first; any one suffices):
- latency: mean latency degrades by more than max_latency_degradation_ms AND the latency test is
  significant (a real degradation, not noise in a handful of slow requests);
- errors: the challenger's error rate exceeds the champion's by more than rollback_error_rate_increase
  (relative: 0.5 = +50 %; any error counts when the champion has none) AND significantly;
- primary: accuracy drops by more than rollback_accuracy_drop AND significantly.
PROMOTE: the primary gain is at least promote_min_accuracy_gain, significantly, AND the mean latency
degradation is below max_latency_degradation_ms.
CONTINUE otherwise, and always while an arm has fewer than min_samples_per_arm requests (reason
"insufficient samples"); primary-metric rules also need min_samples_per_arm scored outcomes per arm,
so latency and error regressions can be rolled back before outcomes arrive.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import stats
from .metrics import ArmData
from .models import Comparison, Decision, DecisionResult, ExperimentMode, Thresholds, VarianceMethod


@dataclass(frozen=True)
class DecisionContext:
    task: str
    thresholds: Thresholds
    mode: ExperimentMode = ExperimentMode.FIXED
    variance: VarianceMethod = VarianceMethod.IID
    cluster_seconds: float = 60.0
    traffic_split: float = 0.1


def _opt(value: float) -> float | None:
    value = float(value)
    return value if np.isfinite(value) else None


def compare(metric: str, champion: np.ndarray, champion_times: np.ndarray, challenger: np.ndarray,
            challenger_times: np.ndarray, ctx: DecisionContext, min_effect: float | None,
            tau: float | None = None) -> Comparison:
    """One metric's test as configured (Welch / cluster-robust, fixed / mSPRT) plus effect sizes.

    ``min_effect`` sizes the power calculation and, unless ``tau`` is given, the mSPRT mixture; None for a
    metric no rule acts on (no sample size to plan for)."""
    alpha = ctx.thresholds.alpha
    n_a, mean_a, var_a = stats.summarize(champion)
    n_b, mean_b, var_b = stats.summarize(challenger)
    if n_a < 2 or n_b < 2:
        return Comparison(metric=metric, method="none", champion=_opt(mean_a) if n_a else None,
                          challenger=_opt(mean_b) if n_b else None)
    if ctx.variance is VarianceMethod.CLUSTER:
        result = stats.cluster_robust(champion, np.floor(champion_times / ctx.cluster_seconds), challenger,
                                      np.floor(challenger_times / ctx.cluster_seconds), alpha)
    else:
        result = stats.welch(champion, challenger, alpha)
    if ctx.mode is ExperimentMode.SEQUENTIAL:
        result = stats.msprt_from_test(result, tau=max(tau or min_effect or 0.0, 1e-9), alpha=alpha)
    return Comparison(
        metric=metric, method=result.method, champion=mean_a, challenger=mean_b,
        difference=_opt(result.difference),
        relative_difference=(mean_b - mean_a) / abs(mean_a) if mean_a else None,
        cohens_d=stats.cohens_d(var_a, var_b, float(result.difference)),
        ci_low=_opt(result.ci_low), ci_high=_opt(result.ci_high), statistic=_opt(result.statistic),
        df=_opt(result.df), p_value=_opt(result.p_value),
        samples_needed_per_arm=None if min_effect is None else stats.samples_still_needed(
            n_a, var_a, n_b, var_b, min_effect, alpha, ctx.thresholds.power, ctx.traffic_split),
    )


def _significant(c: Comparison, alpha: float) -> bool:
    return c.p_value is not None and c.p_value < alpha


def decide(champion: ArmData, challenger: ArmData, ctx: DecisionContext) -> DecisionResult:
    th = ctx.thresholds
    n_min = th.min_samples_per_arm
    if champion.requests < n_min or challenger.requests < n_min:
        return DecisionResult(decision=Decision.CONTINUE, reasons=[
            f"insufficient samples: requests champion={champion.requests}, challenger={challenger.requests}; "
            f"each arm needs {n_min}"])

    latency = compare("latency_ms", champion.latency_ms, champion.served_at, challenger.latency_ms,
                      challenger.served_at, ctx, min_effect=max(th.max_latency_degradation_ms, 0.1))
    champion_error_rate = float(champion.error.mean())
    errors = compare("error_rate", champion.error.astype(np.float64), champion.served_at,
                     challenger.error.astype(np.float64), challenger.served_at, ctx,
                     min_effect=max(champion_error_rate * th.rollback_error_rate_increase, 0.01))
    a_values, a_times = champion.primary_values(ctx.task)
    b_values, b_times = challenger.primary_values(ctx.task)
    regression = ctx.task == "regression"
    champion_level = float(a_values.mean()) if a_values.size else 0.0
    # The primary metric's unit for gains: absolute points (accuracy) or a fraction of the champion MAE.
    scale = champion_level if regression and champion_level > 0 else 1.0
    primary = compare("abs_error" if regression else "accuracy", a_values, a_times, b_values, b_times, ctx,
                      min_effect=max(th.promote_min_accuracy_gain, 0.01) * scale,
                      tau=th.msprt_tau * scale if th.msprt_tau else None)
    pnl_a, pnl_a_t = champion.pnl_values()
    pnl_b, pnl_b_t = challenger.pnl_values()
    pnl = compare("pnl", pnl_a, pnl_a_t, pnl_b, pnl_b_t, ctx, min_effect=None) if pnl_a.size and pnl_b.size \
        else None

    result = DecisionResult(decision=Decision.CONTINUE, reasons=[], primary=primary, latency=latency,
                            error_rate=errors, pnl=pnl)
    rollback: list[str] = []
    if latency.difference is not None and latency.difference > th.max_latency_degradation_ms \
            and _significant(latency, th.alpha):
        rollback.append(f"latency degraded by {latency.difference:.2f} ms (> {th.max_latency_degradation_ms} ms, "
                        f"p={latency.p_value:.3g})")
    challenger_error_rate = float(challenger.error.mean())
    limit = champion_error_rate * (1 + th.rollback_error_rate_increase)
    if challenger_error_rate > limit and challenger_error_rate > champion_error_rate \
            and _significant(errors, th.alpha):
        rollback.append(f"error rate {challenger_error_rate:.4f} vs {champion_error_rate:.4f} "
                        f"(> +{th.rollback_error_rate_increase:.0%}, p={errors.p_value:.3g})")

    enough_outcomes = a_values.size >= n_min and b_values.size >= n_min
    gain = None
    if enough_outcomes and primary.difference is not None:
        gain = -primary.difference / scale if regression else primary.difference
        if gain < -th.rollback_accuracy_drop and _significant(primary, th.alpha):
            what = "MAE rose by" if regression else "accuracy dropped by"
            rollback.append(f"{what} {-gain:.2%} (> {th.rollback_accuracy_drop:.2%}, p={primary.p_value:.3g})")
    if rollback:
        result.decision, result.reasons = Decision.ROLLBACK, rollback
        return result

    if not enough_outcomes:
        result.reasons = [f"insufficient samples: scored outcomes champion={a_values.size}, "
                          f"challenger={b_values.size}; each arm needs {n_min}"]
        return result
    label = "MAE reduction" if regression else "accuracy gain"
    latency_ok = latency.difference is not None and latency.difference < th.max_latency_degradation_ms
    if gain is not None and gain >= th.promote_min_accuracy_gain and _significant(primary, th.alpha) \
            and latency_ok:
        result.decision = Decision.PROMOTE
        result.reasons = [f"{label} {gain:.2%} (>= {th.promote_min_accuracy_gain:.2%}, p={primary.p_value:.3g}) "
                          f"and latency change {latency.difference:+.2f} ms "
                          f"(< {th.max_latency_degradation_ms} ms)"]
        return result
    reasons = []
    if gain is None or gain < th.promote_min_accuracy_gain:
        reasons.append(f"{label} {0.0 if gain is None else gain:.2%} below {th.promote_min_accuracy_gain:.2%}")
    if not _significant(primary, th.alpha):
        reasons.append(f"{label} not significant (p={primary.p_value if primary.p_value is not None else 1:.3g}"
                       f", alpha={th.alpha})")
    if not latency_ok:
        reasons.append(f"latency change {latency.difference} ms not below {th.max_latency_degradation_ms} ms")
    result.reasons = reasons
    return result
