"""Experiments with a known truth, simulated thousands at a time through the module's own decision rules.

Each simulated experiment is a stream of requests (``look_every`` of them between two analyses, as an
auto_apply schedule would see them), every request scored when its outcome arrives. Per look and per arm
the engine keeps the running sums the variance formulas of stats.py are written in (sum y, sum y^2 per
arm, and for routing keys the per-unit sums sum_g S_g^2, sum_g S_g c_g, sum_g c_g^2; for time buckets
the bucket sums), builds the same ``stats.Estimate`` objects ``decision.decide`` builds from raw samples,
and calls the same ``decision.evaluate``. tests/experiments/test_simulation.py checks, look by look, that
this gives the decisions ``decide`` gives on the same requests materialized as ``ArmData``.

Scenarios (``Scenario``): accuracy of each arm; outcomes autocorrelated within an arm (a DAR(1) process:
an outcome repeats the arm's previous one with probability rho, else is drawn afresh, so the lag-k
autocorrelation is rho^k); sticky routing by K keys, equally busy or Zipf-skewed (key k of K carries a
share proportional to 1/k^zipf, as trading symbols do), each key with its own accuracy (probit-scale
effect with sd ``key_sd``, shared by both arms: the key is a trading symbol); failed requests (scored as
wrong); latency in ms. The traffic split is by key when there are keys (router.py), else by request.

Variances: the unit-clustered sums above; for variance=batch (the default) also each arm's batch sums at
every look, for every batch size the look may use (powers of two, stats.batch_size): the arm's outcomes
are laid out in arm order once, complete batches summed by a reshape, and the partial last batch read
off a cumulative sum.

Shadow experiments (``ShadowScenario``, ``simulate_shadow``): every request scored for both models, the two
models' correctness driven by one latent bivariate Gaussian per request (so their errors coincide), AR(1) over
requests when asked, keys as above with an optional per-key challenger effect. The engine keeps the same running
sums for the single sample of per-request differences d (all requests in it) and calls paired.evaluate_paired,
which paired.decide_paired calls on the raw pairs.
"""

from __future__ import annotations

import math
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from scipy import stats as sps
from scipy.optimize import brentq
from scipy.signal import lfilter

from . import stats
from .decision import (CONTINUE, NO_UNITS, PROMOTE, ROLLBACK, DecisionContext, Inputs, Plan, evaluate, plan_arrays,
                       primary_scale, units_at_any_size)
from .metrics import ArmData
from .models import ExperimentMode, Thresholds, VarianceMethod
from .paired import METHOD, PairedData, PairedInputs, combine, evaluate_paired


@dataclass(frozen=True)
class Scenario:
    name: str
    accuracy: float = 0.70
    """Champion accuracy as scored: failed requests (``error_rate``) count as wrong and are part of it."""
    gain: float = 0.0
    """Challenger accuracy minus champion accuracy, as scored; regression: the relative MAE reduction."""
    task: str = "classification"
    mae: float = 1.0
    """regression: the champion's mean absolute error (errors half-normal)."""
    latency_ms: float = 10.0
    latency_shift_ms: float = 0.0
    latency_sd_ms: float = 2.0
    error_rate: float = 0.01
    rho: float = 0.0
    """Autocorrelation of outcomes within each arm (DAR(1))."""
    keys: int | None = None
    """Sticky routing keys; None: requests carry no key, each is its own unit."""
    zipf: float = 0.0
    """Skew of the keys' traffic: key k (1..K) carries a share proportional to 1 / k^zipf (0: equally busy)."""
    key_sd: float = 0.0
    """Probit-scale accuracy effect of a key."""
    mode: ExperimentMode = ExperimentMode.SEQUENTIAL
    variance: VarianceMethod = VarianceMethod.BATCH
    requests_per_second: float = 5.0
    """Arrival rate: with cluster_seconds 60, 300 requests per time bucket."""
    cluster_seconds: float = 60.0

    def key_shares(self) -> np.ndarray | None:
        if not self.keys:
            return None
        weights = 1.0 / np.arange(1, self.keys + 1, dtype=np.float64) ** self.zipf
        return weights / weights.sum()

    @property
    def challenger_accuracy(self) -> float:
        return self.accuracy + self.gain

    @property
    def challenger_mae(self) -> float:
        return self.mae * (1 - self.gain)

    def __post_init__(self) -> None:
        if self.task == "regression" and self.error_rate:
            raise ValueError("regression scenarios have no failed requests (their worst-case score, the running "
                             "largest error, is not modelled)")


@dataclass
class CellResult:
    scenario: Scenario
    sims: int
    total: int
    """Requests (= scored outcomes) per experiment at the horizon."""
    promoted: int = 0
    rolled_back: int = 0
    stop_sum: float = 0.0
    """Sum over experiments of the total at which they stopped (the horizon when they never did)."""
    reported: list[float] = field(default_factory=list)
    """Per experiment: the planned total the analysis reports from the data at the horizon (inf: none)."""
    unreachable: int = 0
    """Experiments whose analysis at the horizon says PROMOTE can never happen (too few units; decision.plan)."""

    def rate(self, count: int) -> tuple[float, float, float]:
        """(rate, low, high): Wilson 95 % interval."""
        return (count / self.sims, *wilson(count, self.sims))

    @property
    def mean_stop(self) -> float:
        return self.stop_sum / self.sims

    @property
    def median_reported(self) -> float:
        return float(np.median(self.reported)) if self.reported else float("nan")


def wilson(count: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    z = float(sps.norm.isf((1 - confidence) / 2))
    p = count / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def context(scenario: Scenario, thresholds: Thresholds, split: float) -> DecisionContext:
    return DecisionContext(task=scenario.task, thresholds=thresholds, mode=scenario.mode,
                           variance=scenario.variance, cluster_seconds=scenario.cluster_seconds,
                           traffic_split=split)


def planned_total(scenario: Scenario, thresholds: Thresholds, split: float) -> int:
    """The total the module reports for the scenario (plan() at the design's per-outcome variances)."""
    if scenario.task == "regression":  # half-normal errors: variance MAE^2 (pi/2 - 1); gains relative to the MAE
        scale = scenario.mae
        var_a, var_b = (m**2 * (math.pi / 2 - 1) for m in (scenario.mae, scenario.challenger_mae))
    else:
        scale = 1.0
        p_a, p_b = scenario.accuracy, scenario.challenger_accuracy
        var_a, var_b = p_a * (1 - p_a), p_b * (1 - p_b)
    sequential = scenario.mode is ExperimentMode.SEQUENTIAL
    tau = (thresholds.msprt_tau or thresholds.target_accuracy_gain) * scale
    total = stats.required_total(var_a, var_b, thresholds.target_accuracy_gain * scale, thresholds.alpha,
                                 thresholds.power, split, thresholds.promote_min_accuracy_gain * scale, sequential, tau)
    return math.ceil(total)


# -- generation --------------------------------------------------------------------------------------

@dataclass
class Requests:
    """Raw simulated requests, (sims, n) arrays in arrival order."""

    challenger: np.ndarray
    primary: np.ndarray
    """1.0 / 0.0 correct (classification, failures 0.0) or the absolute error (regression)."""
    error: np.ndarray
    latency: np.ndarray
    key: np.ndarray | None = None


def _dar1(fresh: np.ndarray, lane: np.ndarray, rho: float, rng: np.random.Generator) -> np.ndarray:
    """Outcomes that repeat the previous outcome of the same lane (arm) with probability rho."""
    n = fresh.shape[1]
    position = np.arange(n)
    refresh = rng.random(fresh.shape) >= rho
    out = np.empty_like(fresh)
    for value in (False, True):
        mine = lane == value
        first = mine & (np.cumsum(mine, axis=1) == 1)  # an arm's first outcome is always drawn afresh
        source = np.where(mine & (refresh | first), position, -1)
        source = np.maximum.accumulate(source, axis=1)
        taken = np.take_along_axis(fresh, np.maximum(source, 0), axis=1)
        out = np.where(mine, taken, out)
    return out


def generate(scenario: Scenario, rng: np.random.Generator, sims: int, n: int, split: float) -> Requests:
    shape = (sims, n)
    key = None
    if scenario.keys:
        dtype = np.int16 if scenario.keys < 2**15 else np.int32
        if scenario.zipf:
            key = rng.choice(scenario.keys, shape, p=scenario.key_shares()).astype(dtype)
        else:
            key = rng.integers(0, scenario.keys, shape, dtype=dtype)
        challenger_key = rng.random((sims, scenario.keys)) < split  # router.py: uniform bucket per key
        challenger = np.take_along_axis(challenger_key, key, axis=1)
    else:
        challenger = rng.random(shape) < split
    if scenario.task == "regression":
        scale = np.where(challenger, scenario.challenger_mae, scenario.mae) * math.sqrt(math.pi / 2)
        primary = np.abs(rng.standard_normal(shape)) * scale
        if scenario.rho > 0:
            primary = _dar1(primary, challenger, scenario.rho, rng)
        error = np.zeros(shape, dtype=bool)
    else:
        # right when answered: the scored accuracy (failures count as wrong) is then scenario.accuracy
        answered = 1 - scenario.error_rate
        acc_a, acc_b = scenario.accuracy / answered, scenario.challenger_accuracy / answered
        if key is not None and scenario.key_sd > 0:  # a key's accuracy in each arm, on the probit scale
            effect = rng.normal(0.0, scenario.key_sd, (sims, scenario.keys))
            p_a = sps.norm.cdf(sps.norm.ppf(acc_a) + effect)
            p_b = sps.norm.cdf(sps.norm.ppf(acc_b) + effect)
            p = np.take_along_axis(np.where(challenger_key, p_b, p_a), key, axis=1)
        else:
            p = np.where(challenger, acc_b, acc_a)
        hit = rng.random(shape) < p
        if scenario.rho > 0:
            hit = _dar1(hit, challenger, scenario.rho, rng)
        error = rng.random(shape) < scenario.error_rate
        primary = (hit & ~error).astype(np.float64)
    latency = rng.normal(scenario.latency_ms, scenario.latency_sd_ms, shape)
    latency += np.where(challenger, scenario.latency_shift_ms, 0.0)
    return Requests(challenger, primary, error.astype(np.float64), latency, key)


def arm_data(requests: Requests, sim: int, n: int, challenger: bool, scenario: Scenario) -> ArmData:
    """The first n requests of one simulated experiment, one arm, as ``decide`` gets them from the store."""
    mine = requests.challenger[sim, :n] == challenger
    served_at = np.arange(n, dtype=np.float64)[mine] / scenario.requests_per_second
    primary = requests.primary[sim, :n][mine]
    error = requests.error[sim, :n][mine] == 1
    units = np.empty(0, dtype=object)
    if requests.key is not None:
        units = np.array([f"key-{k}" for k in requests.key[sim, :n][mine]], dtype=object)
    nan = np.full(primary.size, np.nan)
    regression = scenario.task == "regression"
    predicted = nan if regression else np.where(primary == 1, 1.0, 0.0)  # actual 1: right means "predicted 1"
    return ArmData(latency_ms=requests.latency[sim, :n][mine], error=error, served_at=served_at,
                   actual=np.ones(primary.size), predicted_class=predicted,
                   correct=nan if regression else primary, abs_error=primary if regression else nan, pnl=nan,
                   outcome_served_at=served_at, unit=units, outcome_unit=units, worst_case=error)


# -- running sums at every look ------------------------------------------------------------------------

@dataclass
class ArmLooks:
    """One arm's summaries of one metric at every look: (sims, looks) arrays."""

    n: np.ndarray
    mean: np.ndarray
    var_of_mean: np.ndarray
    """The variance the test uses: unit-clustered, plus the batch part with variance=batch."""
    groups: np.ndarray
    """Distinct units."""
    effective: np.ndarray = None
    """Effective units, n^2 / sum_g c_g^2."""
    sum_cc: np.ndarray = None
    """sum_g c_g^2 over units (n when every request is its own)."""
    var_iid: np.ndarray = None
    var_unit: np.ndarray = None
    df_groups: np.ndarray = None
    """Clusters behind the df: effective units, at most the effective batches with variance=batch."""

    def __post_init__(self) -> None:
        for name in ("effective", "sum_cc", "df_groups"):
            if getattr(self, name) is None:
                setattr(self, name, self.groups if name != "sum_cc" else self.n)
        if self.var_unit is None:
            self.var_unit = self.var_of_mean
        if self.var_iid is None:
            self.var_iid = self.var_of_mean


@dataclass
class Looks:
    champion: dict[str, ArmLooks]
    challenger: dict[str, ArmLooks]
    time: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    """metric -> (V_time, buckets) when time-clustered."""
    buckets_a: np.ndarray | None = None
    """Effective time buckets of each arm at every look, when time-clustered."""
    buckets_b: np.ndarray | None = None


def _at_looks(x: np.ndarray, look_every: int) -> np.ndarray:
    """Running sums of x (sims, n) at every look_every-th request."""
    sims, n = x.shape
    looks = n // look_every
    return x[:, : looks * look_every].reshape(sims, looks, look_every).sum(axis=2).cumsum(axis=1)


def _within_unit_prefix(key: np.ndarray, values: list[np.ndarray]) -> list[np.ndarray]:
    """For every request, the sum of ``values`` over EARLIER requests of the same key (per row)."""
    order = np.argsort(key, axis=1, kind="stable")
    sorted_key = np.take_along_axis(key, order, axis=1)
    start = np.ones(sorted_key.shape, dtype=bool)
    start[:, 1:] = sorted_key[:, 1:] != sorted_key[:, :-1]
    first = np.maximum.accumulate(np.where(start, np.arange(key.shape[1]), 0), axis=1)
    out = []
    for v in values:
        vs = np.take_along_axis(v, order, axis=1)
        before = np.cumsum(vs, axis=1) - vs
        within = before - np.take_along_axis(before, first, axis=1)
        result = np.empty_like(within)
        np.put_along_axis(result, order, within, axis=1)
        out.append(result)
    return out


def _arm_looks(y: np.ndarray, m: np.ndarray, n: np.ndarray, looks: int, prefix: tuple | None) -> ArmLooks:
    """``m``: the arm's requests (1.0 / 0.0); ``n``: their running count; ``looks``: look_every."""
    total = _at_looks(y * m, looks)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = total / n
        requests_sq = _at_looks(y * y * m, looks)
        iid = np.where(n > 1, np.maximum(requests_sq - n * mean**2, 0.0) / (n - 1) / n, np.nan)
        if prefix is None:  # every request its own unit: sum_g S_g^2 = sum y^2, sum_g S_g c_g = sum y
            var = stats.arm_cluster_variance(n, mean, requests_sq, total, n, n)
            return ArmLooks(n, mean, var, n, n, n, iid, var, n)
        s_prev, c_prev = prefix  # sums and counts of earlier requests of the same unit: the increments of
        # sum_g S_g^2, sum_g S_g c_g and sum_g c_g^2 when y joins its unit
        sum_sq = _at_looks((2 * s_prev * y + y * y) * m, looks)
        sum_sc = _at_looks((s_prev + y * (c_prev + 1)) * m, looks)
        sum_cc = _at_looks((2 * c_prev + 1) * m, looks)
        groups = _at_looks((c_prev == 0) * m, looks)
        var = stats.arm_cluster_variance(n, mean, sum_sq, sum_sc, sum_cc, groups, requests_sq)
        effective = n**2 / sum_cc
        return ArmLooks(n, mean, var, groups, effective, sum_cc, iid, var, effective)


def _arm_order(m: np.ndarray) -> np.ndarray:
    """Per row, the arm's request positions first, in arrival order (the arm's own sequence)."""
    return np.argsort(~m.astype(bool), axis=1, kind="stable")


def _batch_looks(y: np.ndarray, m: np.ndarray, order: np.ndarray, arm: ArmLooks, look_every: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(CR1 variance over batches of stats.batch_size(n) consecutive outcomes of the arm, floored at s^2/n;
    effective batches) at every look, as stats.batch_variance computes them."""
    sims, n = y.shape
    looks = n // look_every
    counts = np.rint(arm.n).astype(np.int64)  # (sims, looks)
    ordered = np.take_along_axis(y * m, order, axis=1)
    cum = np.concatenate([np.zeros((sims, 1)), np.cumsum(ordered, axis=1)], axis=1)  # cum[k]: first k outcomes
    cum_n = np.take_along_axis(cum, counts, axis=1)
    exponent = stats.batch_exponent(counts).astype(np.int64)
    requests_sq = _at_looks(y * y * m, look_every)
    var = np.full((sims, looks), np.nan)
    effective = np.full((sims, looks), np.nan)
    for e in range(int(exponent.max()) + 1):
        here = exponent == e
        if not here.any():
            continue
        b = 1 << e
        complete = n // b
        sums = cum[:, b: complete * b + 1: b] - cum[:, 0: complete * b: b]  # (sims, complete)
        sq = np.concatenate([np.zeros((sims, 1)), np.cumsum(sums**2, axis=1)], axis=1)
        full, rem = counts // b, counts % b
        cum_full = np.take_along_axis(cum, full * b, axis=1)
        partial = cum_n - cum_full
        sum_ss = np.take_along_axis(sq, full, axis=1) + partial**2
        sum_sc = b * cum_full + rem * partial
        sum_cc = (full * b * b + rem * rem).astype(np.float64)
        groups = (full + (rem > 0)).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            v = stats.arm_cluster_variance(arm.n, arm.mean, sum_ss, sum_sc, sum_cc, groups, requests_sq)
            eff = arm.n**2 / sum_cc
        var = np.where(here, v, var)
        effective = np.where(here, eff, effective)
    return var, effective


def _with_batches(arm: ArmLooks, var_batch: np.ndarray, eff_batch: np.ndarray) -> ArmLooks:
    """variance=batch: V_unit + V_batch - s^2/n; df clusters min(effective units, effective batches) where the
    batches add variance, the effective units where they do not."""
    return ArmLooks(arm.n, arm.mean, arm.var_unit + var_batch - arm.var_iid, arm.groups, arm.effective, arm.sum_cc,
                    arm.var_iid, arm.var_unit,
                    np.where(stats.adds_variance(var_batch, arm.var_iid), np.minimum(arm.effective, eff_batch),
                             arm.effective))


def _time_variance(y: np.ndarray, challenger: np.ndarray, a: ArmLooks, b: ArmLooks, look_every: int,
                   per_bucket: int) -> tuple[np.ndarray, np.ndarray]:
    """V_time (stats.time_variance) and the bucket count at every look; buckets hold per_bucket requests."""
    sims, n = y.shape
    blocks_per_bucket = per_bucket // look_every
    looks = n // look_every
    padded = -(-looks // blocks_per_bucket) * blocks_per_bucket

    def block_sums(x: np.ndarray) -> np.ndarray:
        return x[:, : looks * look_every].reshape(sims, looks, look_every).sum(axis=2)

    s_b, c_b, s_all = block_sums(y * challenger), block_sums(challenger.astype(np.float64)), block_sums(y)
    blocks = np.stack([s_b, c_b, s_all - s_b, look_every - c_b], axis=-1)  # (S_b, c_b, S_a, c_a) per block
    blocks = np.concatenate([blocks, np.zeros((sims, padded - looks, 4))], axis=1)
    within = np.cumsum(blocks.reshape(sims, -1, blocks_per_bucket, 4), axis=2)
    complete = within[:, :, -1, :]  # (sims, buckets, 4)
    outer = complete[..., :, None] * complete[..., None, :]
    cum = np.concatenate([np.zeros((sims, 1, 4, 4)), np.cumsum(outer, axis=1)], axis=1)
    partial = within.reshape(sims, padded, 4)[:, :looks]
    j = np.arange(1, looks + 1)
    full, rem = j // blocks_per_bucket, j % blocks_per_bucket
    m = cum[:, full] + (rem != 0)[None, :, None, None] * (partial[..., :, None] * partial[..., None, :])
    with np.errstate(invalid="ignore", divide="ignore"):
        alpha = np.stack([1 / b.n, -b.mean / b.n, -1 / a.n, a.mean / a.n], axis=-1)  # (sims, looks, 4)
    sum_sq = np.einsum("sli,slij,slj->sl", alpha, m, alpha)
    groups = (full + (rem != 0)).astype(np.float64)[None, :].repeat(sims, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        v_time = np.where(groups > 1, groups / (groups - 1) * sum_sq, np.nan)
    return v_time, groups


def _arm_buckets(mask: np.ndarray, look_every: int, per_bucket: int) -> tuple[np.ndarray, np.ndarray]:
    """(buckets in which the arm has at least one request, effective buckets n^2 / sum_t c_t^2) at every look."""
    sims, n = mask.shape
    padded = -(-n // per_bucket) * per_bucket
    m = np.zeros((sims, padded), dtype=bool)
    m[:, :n] = mask
    within = np.cumsum(m.reshape(sims, -1, per_bucket), axis=2).reshape(sims, padded)[:, :n]
    first_in_bucket = mask & (within == 1)
    count = _at_looks(mask.astype(np.float64), look_every)
    sum_cc = _at_looks(np.where(mask, 2.0 * within - 1, 0.0), look_every)
    with np.errstate(invalid="ignore", divide="ignore"):
        effective = count**2 / sum_cc
    return _at_looks(first_in_bucket.astype(np.float64), look_every), effective


def summarize_looks(requests: Requests, scenario: Scenario, look_every: int) -> Looks:
    metrics = {"primary": requests.primary, "error": requests.error, "latency": requests.latency}
    prefixes: dict[str, tuple | None] = dict.fromkeys(metrics)
    if requests.key is not None:  # units (keys) are nested in arms: one prefix serves both arms
        *sums, c_prev = _within_unit_prefix(requests.key, [*metrics.values(), np.ones_like(requests.primary)])
        prefixes = {name: (s_prev, c_prev) for name, s_prev in zip(metrics, sums)}
    champion, challenger = {}, {}
    m_b = requests.challenger.astype(np.float64)
    m_a = 1.0 - m_b
    n_a, n_b = _at_looks(m_a, look_every), _at_looks(m_b, look_every)
    for name, y in metrics.items():
        champion[name] = _arm_looks(y, m_a, n_a, look_every, prefixes[name])
        challenger[name] = _arm_looks(y, m_b, n_b, look_every, prefixes[name])
    result = Looks(champion, challenger)
    if scenario.variance is VarianceMethod.BATCH:
        for arm_looks, m in ((champion, m_a), (challenger, m_b)):
            order = _arm_order(m)
            for name, y in metrics.items():
                arm_looks[name] = _with_batches(arm_looks[name], *_batch_looks(y, m, order, arm_looks[name],
                                                                                look_every))
    if scenario.variance is VarianceMethod.CLUSTER:
        if requests.key is not None:
            raise NotImplementedError("the engine clusters on time buckets only for requests without keys")
        per_bucket = round(scenario.requests_per_second * scenario.cluster_seconds)
        if per_bucket % look_every:
            raise ValueError("requests per time bucket must be a multiple of look_every")
        for name, y in metrics.items():
            result.time[name] = _time_variance(y, requests.challenger, champion[name], challenger[name], look_every,
                                               per_bucket)
        result.buckets_a = _arm_buckets(~requests.challenger, look_every, per_bucket)[1]
        result.buckets_b = _arm_buckets(requests.challenger, look_every, per_bucket)[1]
    return result


def _estimate(looks: Looks, metric: str) -> stats.Estimate:
    a, b = looks.champion[metric], looks.challenger[metric]
    est = stats.cluster_from_summary(a.n, a.mean, a.var_of_mean, a.df_groups, b.n, b.mean, b.var_of_mean,
                                     b.df_groups)
    units = dict(unit_excess_a=a.var_unit - a.var_iid, unit_excess_b=b.var_unit - b.var_iid, unit_sq_a=a.sum_cc,
                 unit_sq_b=b.sum_cc)
    if metric not in looks.time:
        return stats.Estimate(est.difference, est.variance, est.df, est.method, est.variance_a, est.variance_b,
                              **units)
    v_time, groups = looks.time[metric]
    # no keys: (request, bucket) cells are the requests, so V_unit&time = V_unit and V = V_time
    variance, df = stats.two_way(est.variance, est.df, v_time, groups, est.variance)
    return stats.Estimate(est.difference, variance, df, "cluster", est.variance_a, est.variance_b, **units)


def _last(est: stats.Estimate) -> stats.Estimate:
    """The estimate at the last look of every experiment."""
    def at(value):
        value = np.asarray(value)
        return value[:, -1] if value.ndim == 2 else value
    return stats.Estimate(at(est.difference), at(est.variance), at(est.df), est.method, at(est.variance_a),
                          at(est.variance_b), at(est.unit_excess_a), at(est.unit_excess_b), at(est.unit_sq_a),
                          at(est.unit_sq_b))


def reported_plan(looks: Looks, ctx: DecisionContext) -> Plan:
    """What decision.plan() reports at the last look of every experiment."""
    a, b = looks.champion["primary"], looks.challenger["primary"]
    return plan_arrays(_last(_estimate(looks, "primary")), a.n[:, -1], b.n[:, -1], ctx,
                       primary_scale(ctx, a.mean[:, -1]))


def reported_total(looks: Looks, ctx: DecisionContext) -> np.ndarray:
    """The planned total decision.plan() reports at the last look of every experiment (inf: none)."""
    return reported_plan(looks, ctx).total


def decisions(looks: Looks, ctx: DecisionContext) -> np.ndarray:
    """decision.evaluate at every look: (sims, looks) CONTINUE / PROMOTE / ROLLBACK codes."""
    a, b = looks.champion, looks.challenger
    units_a, units_b = a["primary"].effective, b["primary"].effective
    if looks.buckets_a is not None:
        units_a, units_b = np.minimum(units_a, looks.buckets_a), np.minimum(units_b, looks.buckets_b)
    inputs = Inputs(requests_a=a["latency"].n, requests_b=b["latency"].n, outcomes_a=a["primary"].n,
                    outcomes_b=b["primary"].n, units_a=units_a, units_b=units_b,
                    latency=_estimate(looks, "latency"), error_rate_a=a["error"].mean, error_rate_b=b["error"].mean,
                    errors=_estimate(looks, "error"), primary=_estimate(looks, "primary"),
                    primary_level_a=a["primary"].mean)
    return evaluate(inputs, ctx).decision


# -- experiments -------------------------------------------------------------------------------------

def outcome_of(codes: np.ndarray, look_every: int, mode: ExperimentMode) -> tuple[np.ndarray, np.ndarray]:
    """(final decision, total at which it was taken) per experiment: sequential experiments stop at the
    first look that is not CONTINUE; fixed ones decide once, at the last look."""
    sims, n_looks = codes.shape
    if mode is ExperimentMode.FIXED:
        return codes[:, -1], np.full(sims, n_looks * look_every)
    acted = codes != CONTINUE
    first = np.where(acted.any(axis=1), acted.argmax(axis=1), n_looks - 1)
    return codes[np.arange(sims), first], (first + 1) * look_every


def _run_chunk(args: tuple) -> tuple[int, int, float, list[float], int]:
    scenario, thresholds, sims, total, split, look_every, seed = args
    rng = np.random.default_rng(seed)
    n = -(-total // look_every) * look_every
    ctx = context(scenario, thresholds, split)
    if scenario.mode is ExperimentMode.FIXED:
        n = total  # one look, at the planned size
        look_every = total
    requests = generate(scenario, rng, sims, n, split)
    looks = summarize_looks(requests, scenario, look_every)
    final, stopped = outcome_of(decisions(looks, ctx), look_every, scenario.mode)
    plan = reported_plan(looks, ctx)
    return (int(np.sum(final == PROMOTE)), int(np.sum(final == ROLLBACK)), float(stopped.sum()),
            plan.total.tolist(), int(np.sum(plan.why_not == NO_UNITS)))


def simulate(scenario: Scenario, thresholds: Thresholds, sims: int, *, total: int | None = None,
             split: float = 0.1, look_every: int = 50, seed: int = 0, chunk: int = 25,
             jobs: int = 1) -> CellResult:
    """Runs ``sims`` experiments to ``total`` requests (default: the module's planned size)."""
    total = total or planned_total(scenario, thresholds, split)
    seeds = np.random.SeedSequence(seed).spawn(-(-sims // chunk))
    sizes = [min(chunk, sims - i * chunk) for i in range(len(seeds))]
    work = [(scenario, thresholds, size, total, split, look_every, s) for size, s in zip(sizes, seeds)]
    result = CellResult(scenario, sims, total)
    if jobs > 1:
        with ProcessPoolExecutor(jobs) as pool:
            parts = list(pool.map(_run_chunk, work))
    else:
        parts = [_run_chunk(w) for w in work]
    for promoted, rolled_back, stop_sum, reported, unreachable in parts:
        result.promoted += promoted
        result.rolled_back += rolled_back
        result.stop_sum += stop_sum
        result.reported.extend(reported)
        result.unreachable += unreachable
    return result


# -- shadow experiments: both models scored on every request -----------------------------------------------

@dataclass(frozen=True)
class ShadowScenario:
    """A shadow experiment: the champion answers every request and the challenger a copy of it, both scored on
    the same outcome (paired.py). Per request, a latent bivariate Gaussian (X_a, X_b) with correlation
    ``latent_correlation()``; a model is right when its X is below its probit threshold (the shared input
    difficulty makes the two models' errors coincide)."""

    name: str
    accuracy: float = 0.70
    """Champion accuracy as scored (failures count as wrong and are part of it)."""
    gain: float = 0.0
    """Challenger minus champion accuracy as scored; regression: the relative MAE reduction."""
    task: str = "classification"
    mae: float = 1.0
    correlation: float = 0.8
    """classification: Pearson correlation of the two models' correctness indicators as scored (failures
    included; the latent correlation is solved for it at the scenario's accuracies); regression: the
    correlation of the two models' signed (Gaussian) errors."""
    rho: float = 0.0
    """AR(1) coefficient of the latent Gaussians over requests in arrival order (autocorrelated d)."""
    keys: int | None = None
    zipf: float = 0.0
    key_sd: float = 0.0
    """Probit-scale accuracy effect of a key, shared by both models."""
    pair_key_sd: float = 0.0
    """Probit-scale effect of a key on the challenger alone (mean zero over keys): the models differ by key."""
    error_rate: float = 0.01
    """Failed requests per model, independently (scored as wrong)."""
    mode: ExperimentMode = ExperimentMode.SEQUENTIAL

    def key_shares(self) -> np.ndarray | None:
        return Scenario(self.name, keys=self.keys, zipf=self.zipf).key_shares()

    def answered_accuracies(self) -> tuple[float, float]:
        answered = 1 - self.error_rate
        return self.accuracy / answered, (self.accuracy + self.gain) / answered

    def latent_correlation(self) -> float:
        if self.task == "regression":
            return self.correlation
        return latent_for_indicators(*self.answered_accuracies(), self.correlation, 1 - self.error_rate)


def indicator_correlation(p_a: float, p_b: float, latent: float, answered: float = 1.0) -> float:
    """Pearson correlation of two models' scored correctness: right when answered (independently, probability
    ``answered``) and X < Phi^-1(p), (X_a, X_b) standard bivariate normal with correlation ``latent``."""
    t = [sps.norm.ppf(p_a), sps.norm.ppf(p_b)]
    both = answered**2 * float(sps.multivariate_normal(cov=[[1.0, latent], [latent, 1.0]]).cdf(t))
    q_a, q_b = answered * p_a, answered * p_b
    return (both - q_a * q_b) / math.sqrt(q_a * (1 - q_a) * q_b * (1 - q_b))


def latent_for_indicators(p_a: float, p_b: float, correlation: float, answered: float = 1.0) -> float:
    """The latent correlation whose scored indicators have Pearson ``correlation``."""
    return float(brentq(lambda r: indicator_correlation(p_a, p_b, r, answered) - correlation, 0.0, 0.9999,
                        xtol=1e-6))


@dataclass
class ShadowRequests:
    """(sims, n) arrays in arrival order: each model's score on every request."""

    champion: np.ndarray
    challenger: np.ndarray
    key: np.ndarray | None = None


def _ar1(shape: tuple[int, int], rho: float, rng: np.random.Generator) -> np.ndarray:
    """Stationary standard-normal AR(1) series along the last axis."""
    e = rng.standard_normal(shape)
    if rho <= 0:
        return e
    scale = math.sqrt(1 - rho * rho)
    e[:, 0] /= scale  # the first value is drawn from the stationary law
    return lfilter([scale], [1.0, -rho], e, axis=1)


def generate_shadow(scenario: ShadowScenario, rng: np.random.Generator, sims: int, n: int) -> ShadowRequests:
    shape = (sims, n)
    c = scenario.latent_correlation()
    x_a = _ar1(shape, scenario.rho, rng)
    x_b = c * x_a + math.sqrt(1 - c * c) * _ar1(shape, scenario.rho, rng)
    key = None
    if scenario.keys:
        dtype = np.int16 if scenario.keys < 2**15 else np.int32
        key = rng.choice(scenario.keys, shape, p=scenario.key_shares()).astype(dtype)
    if scenario.task == "regression":
        # half-normal absolute errors with MAE mae and mae * (1 - gain); the signed errors correlate c
        scale_a = scenario.mae * math.sqrt(math.pi / 2)
        return ShadowRequests(np.abs(x_a) * scale_a, np.abs(x_b) * scale_a * (1 - scenario.gain), key)
    acc_a, acc_b = scenario.answered_accuracies()
    # thresholds widened for the key effects, so each model's accuracy averaged over keys stays as stated (a
    # mean-zero probit effect alone would lower it): in an A/A cell the models are equally good on average
    spread_a = math.sqrt(1 + scenario.key_sd**2)
    spread_b = math.sqrt(1 + scenario.key_sd**2 + scenario.pair_key_sd**2)
    t_a = np.full((sims, 1), sps.norm.ppf(acc_a) * spread_a)
    t_b = np.full((sims, 1), sps.norm.ppf(acc_b) * spread_b)
    if key is not None and (scenario.key_sd > 0 or scenario.pair_key_sd > 0):
        shared = rng.normal(0.0, scenario.key_sd, (sims, scenario.keys))
        own = rng.normal(0.0, scenario.pair_key_sd, (sims, scenario.keys))
        t_a = np.take_along_axis(t_a + shared, key, axis=1)
        t_b = np.take_along_axis(t_b + shared + own, key, axis=1)
    right_a = (x_a < t_a) & (rng.random(shape) >= scenario.error_rate)
    right_b = (x_b < t_b) & (rng.random(shape) >= scenario.error_rate)
    return ShadowRequests(right_a.astype(np.float64), right_b.astype(np.float64), key)


def shadow_inputs(requests: ShadowRequests, look_every: int) -> PairedInputs:
    """paired.PairedInputs at every look ((sims, looks) arrays) from running sums of d, as decide_paired builds
    them from the pairs: d is one sample (every request in it), clustered on keys and on batches."""
    d = requests.challenger - requests.champion
    ones = np.ones_like(d)
    n = _at_looks(ones, look_every)
    prefix = None
    if requests.key is not None:
        prefix = tuple(_within_unit_prefix(requests.key, [d, ones]))
    looks = _arm_looks(d, ones, n, look_every, prefix)
    order = np.broadcast_to(np.arange(d.shape[1]), d.shape)
    var_batch, eff_batch = _batch_looks(d, ones, order, looks, look_every)
    variance, df = combine(looks.var_unit, var_batch, looks.var_iid, looks.effective, eff_batch)
    est = stats.Estimate(looks.mean, variance, df, METHOD, variance, 0.0, unit_sq_a=looks.sum_cc)
    return PairedInputs(n, looks.effective, est, _at_looks(requests.champion, look_every) / n)


def paired_data(requests: ShadowRequests, sim: int, n: int, requests_per_second: float = 5.0) -> PairedData:
    """The first n pairs of one simulated experiment as decide_paired gets them."""
    units = None
    if requests.key is not None:
        units = np.array([f"key-{k}" for k in requests.key[sim, :n]], dtype=object)
    return PairedData(champion=requests.champion[sim, :n], challenger=requests.challenger[sim, :n],
                      served_at=np.arange(n, dtype=np.float64) / requests_per_second, units=units)


def shadow_context(scenario: ShadowScenario, thresholds: Thresholds) -> DecisionContext:
    return DecisionContext(task=scenario.task, thresholds=thresholds, mode=scenario.mode)


@dataclass
class ShadowResult(CellResult):
    promote_stops: list[int] = field(default_factory=list)
    """Scored pairs at which each promoted experiment promoted."""

    @property
    def median_promote_stop(self) -> float:
        return float(np.median(self.promote_stops)) if self.promote_stops else float("nan")

    @property
    def mean_promote_stop(self) -> float:
        return float(np.mean(self.promote_stops)) if self.promote_stops else float("nan")


def _run_shadow_chunk(args: tuple) -> tuple[int, int, float, list[int], int]:
    scenario, thresholds, sims, total, look_every, seed = args
    rng = np.random.default_rng(seed)
    n = max(total // look_every, 1) * look_every  # the last look at most ``total``: a budget, not a target
    if scenario.mode is ExperimentMode.FIXED:
        n = look_every = total
    requests = generate_shadow(scenario, rng, sims, n)
    inputs = shadow_inputs(requests, look_every)
    ctx = shadow_context(scenario, thresholds)
    final, stopped = outcome_of(evaluate_paired(inputs, ctx).decision, look_every, scenario.mode)
    reach = units_at_any_size(inputs.pairs[:, -1], inputs.estimate.unit_sq_a[:, -1] if requests.key is not None
                              else np.nan)
    return (int(np.sum(final == PROMOTE)), int(np.sum(final == ROLLBACK)), float(stopped.sum()),
            stopped[final == PROMOTE].tolist(), int(np.sum(reach < thresholds.min_units_per_arm)))


def simulate_shadow(scenario: ShadowScenario, thresholds: Thresholds, sims: int, total: int, *,
                    look_every: int = 50, seed: int = 0, chunk: int = 25, jobs: int = 1) -> ShadowResult:
    """Runs ``sims`` shadow experiments to at most ``total`` scored pairs (the last look; ``result.total``),
    analysed every ``look_every`` (sequential: stopping at the first PROMOTE / ROLLBACK)."""
    seeds = np.random.SeedSequence(seed).spawn(-(-sims // chunk))
    sizes = [min(chunk, sims - i * chunk) for i in range(len(seeds))]
    work = [(scenario, thresholds, size, total, look_every, s) for size, s in zip(sizes, seeds)]
    if jobs > 1:
        with ProcessPoolExecutor(jobs) as pool:
            parts = list(pool.map(_run_shadow_chunk, work))
    else:
        parts = [_run_shadow_chunk(w) for w in work]
    last_look = total if scenario.mode is ExperimentMode.FIXED else max(total // look_every, 1) * look_every
    result = ShadowResult(scenario, sims, last_look)
    for promoted, rolled_back, stop_sum, stops, unreachable in parts:
        result.promoted += promoted
        result.rolled_back += rolled_back
        result.stop_sum += stop_sum
        result.promote_stops.extend(stops)
        result.unreachable += unreachable
    return result


def default_thresholds(**overrides) -> Thresholds:
    """Thresholds as ExperimentService resolves them from default ExperimentSettings."""
    from ..settings import ExperimentSettings

    s = ExperimentSettings()
    values = dict(alpha=s.alpha, power=s.power, promote_min_accuracy_gain=s.promote_min_accuracy_gain,
                  max_latency_degradation_ms=s.max_latency_degradation_ms,
                  rollback_error_rate_increase=s.rollback_error_rate_increase,
                  rollback_accuracy_drop=s.rollback_accuracy_drop, min_samples_per_arm=s.min_samples_per_arm,
                  target_accuracy_gain=s.target_accuracy_gain, min_units_per_arm=s.min_units_per_arm)
    return Thresholds(**(values | overrides))


__all__ = ["CellResult", "Scenario", "ShadowResult", "ShadowScenario", "arm_data", "decisions", "default_thresholds",
           "generate", "generate_shadow", "outcome_of", "paired_data", "planned_total", "shadow_inputs", "simulate",
           "simulate_shadow", "summarize_looks", "wilson"]
