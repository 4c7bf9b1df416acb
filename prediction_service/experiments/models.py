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


class ExperimentMode(str, Enum):
    FIXED = "fixed"
    """Classic tests, valid for ONE analysis at a planned sample size. Peeking inflates false promotions."""
    SEQUENTIAL = "sequential"
    """Always-valid mSPRT p-values: analyse after every batch of outcomes without inflating alpha."""


class VarianceMethod(str, Enum):
    IID = "iid"
    """Observations treated as independent (Welch)."""
    CLUSTER = "cluster"
    """Cluster-robust variance over time buckets: for autocorrelated outcomes (trading)."""


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
    msprt_tau: float | None = Field(None, gt=0)
    """Std-dev of the mSPRT normal mixture prior on the primary-metric difference; None = the minimum gain."""


class Thresholds(BaseModel):
    """Resolved thresholds an analysis runs with (settings defaults + the experiment's overrides)."""

    alpha: float
    power: float
    promote_min_accuracy_gain: float
    max_latency_degradation_ms: float
    rollback_error_rate_increase: float
    rollback_accuracy_drop: float
    min_samples_per_arm: int
    msprt_tau: float | None = None


class ExperimentSpec(BaseModel):
    """What an operator asks for when starting an experiment."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model_name: str = Field(min_length=1, max_length=128)
    champion_version: str = Field(min_length=1, max_length=64)
    challenger_version: str = Field(min_length=1, max_length=64)
    traffic_split: float = Field(0.10, gt=0, lt=1)
    """Share of traffic routed to the challenger, strictly between 0 and 1."""
    task: Task = "classification"
    """classification: accuracy is the primary metric; regression: absolute error (lower is better)."""
    mode: ExperimentMode = ExperimentMode.FIXED
    variance: VarianceMethod = VarianceMethod.IID
    cluster_seconds: float = Field(60.0, gt=0)
    """Time-bucket width for VarianceMethod.CLUSTER (outcomes grouped by the minute by default)."""
    auto_apply: bool = False
    """Apply PROMOTE / ROLLBACK decisions when an analysis reaches them."""
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


class PredictionRecord(BaseModel):
    request_id: str
    experiment_id: str
    arm: Arm
    version: str
    served_at: float
    latency_ms: float
    error: bool
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


class ArmMetrics(BaseModel):
    """Descriptive numbers of one arm (metrics.py)."""

    requests: int
    errors: int
    error_rate: float
    latency_mean_ms: float | None = None
    latency_p95_ms: float | None = None
    outcomes: int
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
    """welch | cluster | msprt | msprt-cluster."""
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
    """Per-arm sample size for the configured power at the minimum effect of interest (normal approx.)."""


class DecisionResult(BaseModel):
    decision: Decision
    reasons: list[str]
    primary: Comparison | None = None
    latency: Comparison | None = None
    error_rate: Comparison | None = None
    pnl: Comparison | None = None


class Analysis(BaseModel):
    experiment: Experiment
    thresholds: Thresholds
    arms: dict[Arm, ArmMetrics]
    decision: Decision
    reasons: list[str]
    comparisons: list[Comparison]
    applied: bool = False
    """True when this analysis applied the decision (auto_apply): promoted or rolled back."""
