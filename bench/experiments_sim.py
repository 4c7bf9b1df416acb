"""A/B decisions by simulation: false promotions and rollbacks of A/A experiments, power at the size the
module reports, rollbacks of worse challengers. Every experiment runs through the module's own decision
rules (prediction_service/experiments/simulation.py -> decision.evaluate), with default settings.

    python bench/experiments_sim.py [--sims 2000] [--quick] [--jobs 2] [--seed 0] [--long] [--design all|split|shadow]

Defaults: alpha 0.05, PROMOTE when the estimated gain is >= 1 point and significant, sizes planned for 80 %
power at a true +2 points, ROLLBACK at a significant drop > 2 points or > 2 ms latency, >= 100 samples and
>= 30 effective independent units per arm, 10 % of traffic to the challenger, variances clustered on the
routing key and on batches of consecutive outcomes (variance=batch), champion accuracy 70 % as scored (1 %
of requests fail and count as wrong), latency 10 +- 2 ms; regression cells: MAE, gains relative to the
champion's MAE, no failed requests. Sequential cells are analysed after every 50 outcomes and stop at the
first PROMOTE / ROLLBACK (auto_apply); fixed cells decide once, at their planned size. Horizon: the planned
total the module reports for the cell's design (iid variance), three times that for the autocorrelated
cells (about what the module reports there; --long: the sticky-key cells too). Sticky cells: 50 or 500
equally busy keys, or 500 symbols whose traffic is Zipf-skewed (symbol k carries a share proportional to
1/k^s: s = 1 gives 28 effective units in all, s = 0.5 about 276), each key with its own accuracy.
Rates carry Wilson 95 % intervals. --quick: 400 experiments per cell (a smoke run, wide intervals).

Shadow cells (--design shadow, or all): every request answered by the champion and copied to the challenger,
both scored on its outcome, decided by the paired test (experiments/paired.py) analysed every 50 scored pairs
with the same stopping rule. Per request a latent bivariate Gaussian decides which model is right; its
correlation is solved so that the two models' scored correctness indicators have Pearson correlation 0.8
(latent about 0.97; regression: the signed errors correlate 0.8). Power cells run to a tenth of what the 10 %
split plans for the same gain (the budget they must meet) and report the pairs at PROMOTE; A/A cells run to
three times that, peeking every 50: iid, AR(1) 0.5 on the latent Gaussians (autocorrelated d), and 500
Zipf-skewed symbols with a shared key effect (sd 0.3) and a per-symbol challenger effect (sd 0.3, mean zero:
the models differ by symbol, equally on average).

    python bench/experiments_sim.py --design shadow --experiments 500
"""

from __future__ import annotations

import argparse
import operator
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from prediction_service.experiments.models import ExperimentMode, VarianceMethod  # noqa: E402
from prediction_service.experiments import stats  # noqa: E402
from prediction_service.experiments.simulation import (CellResult, Scenario, ShadowResult,  # noqa: E402
                                                       ShadowScenario, default_thresholds, planned_total, simulate,
                                                       simulate_shadow)

FIXED, CLUSTER, UNIT = ExperimentMode.FIXED, VarianceMethod.CLUSTER, VarianceMethod.UNIT


Target = tuple[str, str, float]
"""(promote | rollback, <= | >= | <, rate) asked of a cell."""
FALSE_PROMOTION = [("promote", "<=", 0.07)]  # alpha + 0.02, with peeking and sticky keys
POWER = [("promote", ">=", 0.80)]
ROLLBACK = [("rollback", ">=", 0.80)]
WORSE = [("rollback", ">=", 0.80), ("promote", "<", 0.005)]
SHADOW_FALSE_PROMOTION = [("promote", "<=", 0.05)]


@dataclass(frozen=True)
class Cell:
    scenario: Scenario
    targets: list[Target]
    """Empty: a contrast (what a misconfiguration costs), no target."""
    horizon_factor: float = 1.0


def cells(long: bool) -> list[Cell]:
    sticky = 3.0 if long else 1.0
    return [
        Cell(Scenario("A/A iid"), FALSE_PROMOTION),
        Cell(Scenario("A/A AR(1) 0.5 (the default variance)", rho=0.5), FALSE_PROMOTION, 3.0),
        Cell(Scenario("A/A AR(1) 0.5, variance=cluster (60 s buckets)", rho=0.5, variance=CLUSTER), FALSE_PROMOTION,
             3.0),
        Cell(Scenario("A/A AR(1) 0.5, variance=unit (ignores it)", rho=0.5, variance=UNIT), [], 3.0),
        Cell(Scenario("A/A sticky, 50 keys, key sd 0.3", keys=50, key_sd=0.3), FALSE_PROMOTION, sticky),
        Cell(Scenario("A/A sticky, 500 keys, key sd 0.3", keys=500, key_sd=0.3), FALSE_PROMOTION, sticky),
        Cell(Scenario("A/A sticky, 500 symbols Zipf(1), key sd 0.3", keys=500, zipf=1.0, key_sd=0.3),
             FALSE_PROMOTION, sticky),
        Cell(Scenario("A/A sticky, 500 symbols Zipf(0.5), key sd 0.3", keys=500, zipf=0.5, key_sd=0.3),
             FALSE_PROMOTION, sticky),
        Cell(Scenario("+5 points, 500 symbols Zipf(0.5), key sd 0.3", keys=500, zipf=0.5, key_sd=0.3, gain=0.05),
             [], sticky),
        Cell(Scenario("+2 points", gain=0.02), POWER),
        Cell(Scenario("+5 points", gain=0.05), POWER),
        Cell(Scenario("-5 points", gain=-0.05), WORSE),
        Cell(Scenario("+3 ms latency", latency_shift_ms=3.0), ROLLBACK),
        Cell(Scenario("A/A regression (MAE, half-normal errors)", task="regression", error_rate=0.0), FALSE_PROMOTION),
        Cell(Scenario("regression, MAE 2 % lower", task="regression", gain=0.02, error_rate=0.0), POWER),
        Cell(Scenario("A/A iid, fixed", mode=FIXED), FALSE_PROMOTION),
        Cell(Scenario("+2 points, fixed", gain=0.02, mode=FIXED), POWER),
        Cell(Scenario("-5 points, fixed", gain=-0.05, mode=FIXED), WORSE),
    ]


@dataclass(frozen=True)
class ShadowCell:
    scenario: ShadowScenario
    targets: list[Target]
    split_gain: float = 0.02
    """The split cell whose planned size sets the budget: its total / budget_divisor scored pairs."""
    horizon_factor: float = 1.0


BUDGET_DIVISOR = 10


def shadow_cells() -> list[ShadowCell]:
    zipf = dict(keys=500, key_sd=0.3, pair_key_sd=0.3)
    return [
        ShadowCell(ShadowScenario("shadow +2 points, correlation 0.8", gain=0.02), POWER),
        ShadowCell(ShadowScenario("shadow +2 points, correlation 0.5", gain=0.02, correlation=0.5), []),
        ShadowCell(ShadowScenario("shadow regression, MAE 2 % lower, corr 0.8", task="regression", gain=0.02,
                                  error_rate=0.0), POWER),
        ShadowCell(ShadowScenario("shadow -5 points", gain=-0.05), WORSE),
        ShadowCell(ShadowScenario("shadow A/A iid"), SHADOW_FALSE_PROMOTION, horizon_factor=3.0),
        ShadowCell(ShadowScenario("shadow A/A AR(1) 0.5", rho=0.5), SHADOW_FALSE_PROMOTION, horizon_factor=3.0),
        ShadowCell(ShadowScenario("shadow A/A 500 symbols Zipf(0.5), per-symbol sd", zipf=0.5, **zipf),
                   SHADOW_FALSE_PROMOTION, horizon_factor=3.0),
        ShadowCell(ShadowScenario("shadow A/A 500 symbols Zipf(1), per-symbol sd", zipf=1.0, **zipf),
                   SHADOW_FALSE_PROMOTION, horizon_factor=3.0),
        ShadowCell(ShadowScenario("shadow A/A regression", task="regression", error_rate=0.0), SHADOW_FALSE_PROMOTION,
                   horizon_factor=3.0),
    ]


def split_planned(scenario: ShadowScenario, th) -> int:
    """What the 10 % split plans for the shadow cell's task and gain (at least the +2 points it is quoted at)."""
    gain = scenario.gain if scenario.gain > 0 else th.target_accuracy_gain
    split = Scenario("split", task=scenario.task, gain=gain, error_rate=scenario.error_rate)
    return planned_total(split, th, 0.1)


def pct(result: CellResult, count: int) -> str:
    rate, low, high = result.rate(count)
    return f"{rate:6.2%} [{low:5.2%}, {high:5.2%}]"


def verdict(result: CellResult, targets: list[Target]) -> str:
    """ok: the estimate meets every target; within CI: it misses one but the 95 % interval includes the bound;
    MISSED: the interval excludes it."""
    if not targets:
        return "(contrast, no target)"
    words = []
    state = "ok"
    for what, op, limit in targets:
        rate, low, high = result.rate(result.promoted if what == "promote" else result.rolled_back)
        words.append(f"{what} {op} {limit:.1%}")
        check = {"<=": operator.le, ">=": operator.ge, "<": operator.lt}[op]
        if not check(rate, limit):
            plausible = (low <= limit) if op == ">=" else (high >= limit)
            state = "MISSED" if not plausible or state == "MISSED" else "within CI"
    return f"{', '.join(words)}: {state}"


def run_split(sims: int, args: argparse.Namespace) -> None:
    th = default_thresholds()
    print(f"{sims} simulated experiments per cell, seed {args.seed}, {args.jobs} processes; split 10 %, "
          f"alpha {th.alpha}, margin {th.promote_min_accuracy_gain:.0%}, target {th.target_accuracy_gain:.0%} "
          f"at power {th.power:.0%}")
    header = (f"{'cell':50s} {'mode':10s} {'horizon':>8s} {'module plans':>12s} {'no PROMOTE':>10s} "
              f"{'promoted [95% CI]':>26s} {'rolled back [95% CI]':>26s} {'mean stop':>9s}  target")
    print(header)
    print("-" * len(header))
    started = time.perf_counter()
    for i, cell in enumerate(cells(args.long)):
        sc = cell.scenario
        horizon = round(planned_total(sc, th, 0.1) * cell.horizon_factor)
        result = simulate(sc, th, sims, total=horizon, seed=args.seed + i, jobs=args.jobs)
        plans = result.median_reported
        plans_text = f"{plans:12.0f}" if plans != float("inf") else f"{'none':>12s}"
        print(f"{sc.name:50s} {sc.mode.value:10s} {result.total:8d} {plans_text} "
              f"{result.unreachable / result.sims:10.1%} {pct(result, result.promoted):>26s} "
              f"{pct(result, result.rolled_back):>26s} {result.mean_stop:9.0f}  {verdict(result, cell.targets)}",
              flush=True)
    print(f"\nhorizon: outcomes per experiment (sequential: looks every 50); module plans: median planned_total the "
          f"analysis reports from the data at the horizon (none: no size gives the power at this split, or an arm "
          f"has < 2 units); no PROMOTE: share of experiments whose analysis at the horizon says PROMOTE can never "
          f"happen (an arm tends to fewer than 30 effective units); mean stop: mean outcomes at the decision (the "
          f"horizon if none). {time.perf_counter() - started:.0f} s")


def stop_text(result: ShadowResult) -> str:
    if not result.promote_stops:
        return f"{'-':>15s}"
    return f"{result.median_promote_stop:7.0f}/{result.mean_promote_stop:7.0f}"


def run_shadow(sims: int, args: argparse.Namespace) -> None:
    th = default_thresholds()
    split = planned_total(Scenario("+2 points", gain=0.02), th, 0.1)
    expected = stats.expected_total(split, th.target_accuracy_gain, th.promote_min_accuracy_gain, th.alpha, th.power)
    print(f"\nSHADOW (paired test, every request scored for both models), {sims} experiments per cell, seed "
          f"{args.seed}, analysed every 50 pairs. The 10 % split plans {split} outcomes for +2 points "
          f"(expected sequential stop near {expected:.0f}); shadow power cells run to 1/{BUDGET_DIVISOR} of the "
          f"split's planned size, A/A cells to 3x that.")
    header = (f"{'cell':50s} {'horizon':>8s} {'split plans':>11s} {'no PROMOTE':>10s} {'promoted [95% CI]':>26s} "
              f"{'rolled back [95% CI]':>26s} {'PROMOTE at med/mean':>19s}  target")
    print(header)
    print("-" * len(header))
    started = time.perf_counter()
    for i, cell in enumerate(shadow_cells()):
        sc = cell.scenario
        planned = split_planned(sc, th)
        horizon = round(planned / BUDGET_DIVISOR * cell.horizon_factor)
        result = simulate_shadow(sc, th, sims, horizon, seed=args.seed + 100 + i, jobs=args.jobs)
        print(f"{sc.name:50s} {result.total:8d} {planned:11d} {result.unreachable / result.sims:10.1%} "
              f"{pct(result, result.promoted):>26s} {pct(result, result.rolled_back):>26s} "
              f"{stop_text(result):>19s}  {verdict(result, cell.targets)}", flush=True)
    print(f"\nhorizon: scored pairs per experiment; split plans: the 10 % split's planned total for the cell's task "
          f"and gain (+2 points for A/A cells); no PROMOTE: share whose pairs tend to fewer than 30 effective units; "
          f"PROMOTE at: median / mean scored pairs at which promoted experiments promoted. "
          f"{time.perf_counter() - started:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sims", "--experiments", dest="sims", type=int, default=2000,
                        help="simulated experiments per cell")
    parser.add_argument("--quick", action="store_true", help="400 experiments per cell")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--long", action="store_true", help="sticky-key cells to 3x the planned size")
    parser.add_argument("--design", choices=("all", "split", "shadow"), default="all",
                        help="split cells, shadow (paired) cells, or both")
    args = parser.parse_args()
    sims = 400 if args.quick else args.sims
    if args.design in ("all", "split"):
        run_split(sims, args)
    if args.design in ("all", "shadow"):
        run_shadow(sims, args)


if __name__ == "__main__":
    main()
