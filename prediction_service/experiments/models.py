"""Pydantic models of the A/B experiment domain: what an operator asks for (ExperimentSpec), what is
stored (Experiment), what the hot path gets (Assignment) and what an analysis returns (Analysis)."""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Arm(str, Enum):
    CHAMPION = "champion"
    CHALLENGER = "challenger"


class ExperimentStatus(str, Enum):
    RUNNING = "running"
    STOPPED = "stopped"
    PROMOTED = "promoted"
    ROLLED_BACK = "rolled_back"


class ExperimentKind(str, Enum):
    SPLIT = "split"
    """The default. Each request is answered by one arm, chosen by its routing key (``traffic_split``); the
    arms are compared on different requests."""
    SHADOW = "shadow"
    """Every production request (or a ``shadow_fraction`` of them) is answered by the champion, and a copy runs
    on the challenger off the response path; an outcome scores both models on the same request, and a paired
    test on the per-request differences decides (experiments/paired.py). The challenger serves nobody."""


class ExperimentMode(str, Enum):
    SEQUENTIAL = "sequential"
    """The default. Always-valid mSPRT p-values: analyse after every batch of outcomes (auto_apply does,
    on a schedule) without inflating alpha."""
    FIXED = "fixed"
    """Classic t-tests, valid for ONE analysis at a planned sample size (``planned_outcomes``): before it
    the decision is CONTINUE; at it the data is frozen and the experiment decides once."""


class VarianceMethod(str, Enum):
    BATCH = "batch"
    """The default. Cluster-robust by randomization unit (the routing key; a request without one is its own
    unit) AND by batches of consecutive outcomes within each arm (batch means, about n^(1/3) outcomes each): robust
    to outcomes autocorrelated within an arm (a model wrong for a while), at any traffic rate, with nothing
    to configure. Costs almost nothing when outcomes are independent."""
    UNIT = "unit"
    """Cluster-robust by randomization unit only: outcomes of different requests of one arm are taken as
    independent over time. The default before "batch"; an experiment stored with it keeps it."""
    CLUSTER = "cluster"
    """Two-way cluster-robust by unit and by time bucket (``cluster_seconds``): for outcomes that are
    autocorrelated in time (a market regime shared by the requests of one minute)."""
    IID = "iid"
    """Kept for experiments stored before "unit" existed; analysed as "unit" (a request is independent of
    another only when it is its own unit)."""


class Decision(str, Enum):
    PROMOTE = "promote"
    ROLLBACK = "rollback"
    CONTINUE = "continue"


Task = Literal["classification", "regression"]


class ThresholdOverrides(BaseModel):
    """Per-experiment overrides of ExperimentSettings; a field left None keeps the configured default."""

    model_config = ConfigDict(extra="forbid")

    alpha: float | None = Field(None, gt=0, lt=1)
    power: float | None = Field(None, gt=0, lt=1)
    promote_min_accuracy_gain: float | None = Field(None, ge=0, lt=1)
    max_latency_degradation_ms: float | None = Field(None, ge=0)
    rollback_error_rate_increase: float | None = Field(None, ge=0)
    rollback_accuracy_drop: float | None = Field(None, ge=0, lt=1)
    target_accuracy_gain: float | None = Field(None, gt=0, lt=1)
    min_units_per_arm: int | None = Field(None, ge=2)
    msprt_tau: float | None = Field(None, gt=0)
    """Std-dev of the mSPRT normal mixture prior on the primary-metric difference; None = the target gain."""


class Thresholds(BaseModel):
    """Resolved thresholds an analysis runs with (settings defaults + the experiment's overrides)."""

    alpha: float
    power: float
    promote_min_accuracy_gain: float
    max_latency_degradation_ms: float
    rollback_error_rate_increase: float
    rollback_accuracy_drop: float
    min_samples_per_arm: int
    target_accuracy_gain: float = 0.02
    """The true gain sample sizes are planned for (with ``power``); must exceed promote_min_accuracy_gain."""
    min_units_per_arm: int = 30
    """PROMOTE needs at least this many effective independent units (routing keys, 1 / sum of squared
    traffic shares; time buckets too with variance=cluster) in each arm."""
    msprt_tau: float | None = None


class ExperimentSpec(BaseModel):
    """What an operator asks for when starting an experiment."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model_name: str = Field(min_length=1, max_length=128)
    champion_version: str = Field(min_length=1, max_length=64)
    challenger_version: str = Field(min_length=1, max_length=64)
    kind: ExperimentKind = ExperimentKind.SPLIT
    traffic_split: float = Field(0.10, gt=0, lt=1)
    """kind=split: share of traffic routed to the challenger, strictly between 0 and 1."""
    shadow_fraction: float = Field(1.0, gt=0, le=1)
    """kind=shadow: share of production requests copied to the challenger (sampled per request)."""
    task: Task = "classification"
    """classification: accuracy is the primary metric; regression: absolute error (lower is better)."""
    mode: ExperimentMode = ExperimentMode.SEQUENTIAL
    variance: VarianceMethod = VarianceMethod.BATCH
    cluster_seconds: float = Field(60.0, gt=0)
    """Time-bucket width for VarianceMethod.CLUSTER (outcomes grouped by the minute by default)."""
    planned_outcomes: int | None = Field(None, ge=4)
    """mode=fixed: total scored outcomes (both arms) at which the experiment decides, once, on the first
    ``planned_outcomes`` outcomes; take it from an analysis's ``planned_total``. Required with auto_apply."""
    auto_apply: bool = False
    """Apply PROMOTE / ROLLBACK decisions when an analysis reaches them (sequential mode; or fixed mode
    once, at planned_outcomes)."""
    min_samples_per_arm: int | None = Field(None, ge=2)
    """None = ExperimentSettings.min_samples_per_arm."""
    thresholds: ThresholdOverrides = Field(default_factory=ThresholdOverrides)


class Experiment(ExperimentSpec):
    id: str
    status: ExperimentStatus
    created_at: datetime
    ended_at: datetime | None = None
    end_reason: str | None = None


class Assignment(BaseModel):
    """The arm the router picked for one request; the caller serves ``version``."""

    model_config = ConfigDict(frozen=True)

    experiment_id: str
    arm: Arm
    version: str
    unit: str | None = None
    """Digest of the routing key (the randomization unit); None when the request had no key."""
    shadow_version: str | None = None
    """kind=shadow: the challenger version a copy of this request runs on, off the response path; None when
    the request was not sampled (or the experiment is a split)."""


class PredictionRecord(BaseModel):
    request_id: str
    experiment_id: str
    arm: Arm
    version: str
    served_at: float
    latency_ms: float
    error: bool
    """The request failed, or its output was NaN/inf."""
    predicted_class: int | None = None
    predicted_value: float | None = None
    unit: str | None = None
    """Randomization unit: digest of the routing key; None = the request id is the unit."""
    api_key_id: str | None = None
    """Key id of the caller that made the prediction; None when anonymous."""


class ShadowRecord(BaseModel):
    """The challenger's answer to a copy of a production request (kind=shadow), stored by its request id."""

    request_id: str
    experiment_id: str
    version: str
    served_at: float
    latency_ms: float
    error: bool
    """The shadow run failed, or its output was NaN/inf."""
    predicted_class: int | None = None
    predicted_value: float | None = None


class OutcomeRecord(BaseModel):
    request_id: str
    experiment_id: str
    arm: Arm
    actual: float
    correct: bool | None = None
    abs_error: float | None = None
    pnl: float | None = None
    recorded_at: float
    worst_case: bool = False
    """The prediction failed or was not finite: scored as wrong (classification) or with the experiment's
    largest absolute error (regression)."""


class ArmMetrics(BaseModel):
    """Descriptive numbers of one arm (metrics.py)."""

    requests: int
    units: int = 0
    """Distinct randomization units (routing keys; a request without a key counts as one) among requests."""
    errors: int
    error_rate: float
    latency_mean_ms: float | None = None
    latency_p95_ms: float | None = None
    outcomes: int
    scored: int = 0
    """Outcomes that score the primary metric (worst-case rows included)."""
    scored_units: int = 0
    """Distinct units behind the scored outcomes (routing keys; at most the time buckets with variance=cluster)."""
    effective_units: float = 0.0
    """Effective independent units behind the scored outcomes, 1 / sum of squared traffic shares (n^2 / sum of
    squared per-unit counts; at most the effective time buckets with variance=cluster): what the primary
    test's variance and degrees of freedom rest on, and what PROMOTE's min_units_per_arm counts. 500 symbols
    whose flow is Zipf-skewed are about 28 effective units, not 500."""
    time_buckets: int | None = None
    """variance=cluster: time buckets holding this arm's scored outcomes."""
    worst_case: int = 0
    """Scored outcomes of failed or non-finite predictions (scored as the worst case)."""
    accuracy: float | None = None
    precision_macro: float | None = None
    recall_macro: float | None = None
    f1_macro: float | None = None
    mae: float | None = None
    pnl_count: int = 0
    win_rate: float | None = None
    sharpe: float | None = None
    """mean(pnl)/std(pnl) * sqrt(periods_per_year); each outcome counts as one period (see metrics.py)."""
    total_pnl: float | None = None


class Comparison(BaseModel):
    """Challenger minus champion for one metric, with its test."""

    metric: str
    method: str
    """welch | cluster-unit | batch (batch means, with the units) | cluster (unit and time) | msprt |
    msprt-cluster-unit | msprt-batch | msprt-cluster | description (reported, no test: P&L)."""
    champion: float | None = None
    challenger: float | None = None
    difference: float | None = None
    relative_difference: float | None = None
    cohens_d: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    statistic: float | None = None
    df: float | None = None
    p_value: float | None = None
    samples_needed_per_arm: int | None = None
    """Primary metric: scored outcomes the slower-filling arm still needs to reach ``planned_total``."""
    planned_total: int | None = None
    """Primary metric: total scored outcomes at which the decision rule (estimate >= the promotion margin
    AND significant) has the configured power at the target gain, at the variance per outcome observed so
    far (clustering included; sticky units' between-unit variance does not shrink with more outcomes and
    is projected as such). Sequential: the power of the last look alone, a lower bound. None when no size
    reaches it: see the analysis's ``reachability``."""
    expected_total: int | None = None
    """Sequential mode: mean total at which the test stops under the target gain."""


class Unreachable(str, Enum):
    UNITS = "units"
    """An arm's scored outcomes will never rest on min_units_per_arm effective units: the sticky routing
    keys it has keep their traffic shares, so more outcomes do not add units. PROMOTE cannot happen."""
    VARIANCE = "variance"
    """The between-unit variance, which more outcomes of the same units do not reduce, alone exceeds the
    variance at which the rule has the configured power at the target gain: no size has that power (a
    larger gain may still be promoted)."""
    MARGIN = "margin"
    """The target gain does not exceed the promotion margin: no size gives the rule the power."""


class Reachability(BaseModel):
    """What more outcomes can still achieve at this split (decision.plan): the analysis says so instead of
    a planned size that recedes as data arrives. ROLLBACK stays reachable either way."""

    promotion_reachable: bool
    """False: PROMOTE can never happen in this experiment (why_not=units)."""
    size_reachable: bool
    """False: no number of outcomes gives the rule the configured power at the target gain (planned_total
    is None); why_not says why."""
    why_not: Unreachable | None = None
    reason: str | None = None
    units_champion: float | None = None
    """Effective units the champion's scored outcomes tend to as outcomes arrive, its keys keeping their
    traffic shares (1 / Simpson's unbiased sum of squared shares); None: unbounded (no unit repeats)."""
    units_challenger: float | None = None
    units_total: float | None = None
    """Both arms together: below 2 x min_units_per_arm no split gives both arms enough units."""
    min_units_per_arm: int | None = None
    splits: tuple[float, float] | None = None
    """why_not=units: the traffic_split range under which a new experiment could give both arms
    min_units_per_arm (keys of even traffic assumed); None when no split can."""


class DecisionResult(BaseModel):
    decision: Decision
    reasons: list[str]
    primary: Comparison | None = None
    latency: Comparison | None = None
    error_rate: Comparison | None = None
    pnl: Comparison | None = None
    reachability: Reachability | None = None


class Analysis(BaseModel):
    experiment: Experiment
    thresholds: Thresholds
    arms: dict[Arm, ArmMetrics]
    decision: Decision
    reasons: list[str]
    comparisons: list[Comparison]
    applied: bool = False
    """True when this analysis applied the decision (auto_apply): promoted or rolled back."""
    horizon_reached: bool | None = None
    """mode=fixed with planned_outcomes: whether the decision was taken (on the frozen first outcomes)."""
    reachability: Reachability | None = None
    """Whether more outcomes can still lead to PROMOTE (None until both arms have min_samples_per_arm scored
    outcomes): with few sticky keys, or a challenger that got few of them, no size can."""
