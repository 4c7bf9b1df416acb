"""Per-arm samples (ArmData) and their descriptive metrics (ArmMetrics).

Sharpe ratio: mean(pnl) / std(pnl) * sqrt(periods_per_year), each recorded outcome counting as one
period. ``ExperimentSettings.sharpe_periods_per_year`` defaults to 252 (one decision per trading day, as
daily-bar models make); intraday models set it to their decisions per year (e.g. 252 * 390 for
minute bars). Both arms use the same factor, so the comparison does not depend on the choice.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .models import ArmMetrics


def _empty() -> np.ndarray:
    return np.empty(0, dtype=np.float64)


@dataclass
class ArmData:
    """Everything an analysis needs about one arm, as numpy arrays.

    Prediction arrays cover every request served; outcome arrays cover the scored ones (aligned with
    each other). ``unit`` / ``outcome_unit`` is the randomization unit of each row (a digest of the routing
    key; the request id when the request had none): empty means every row is its own unit.
    ``outcome_served_at`` (when the scored prediction was served) drives time buckets.
    """

    latency_ms: np.ndarray = field(default_factory=_empty)
    error: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=bool))
    served_at: np.ndarray = field(default_factory=_empty)
    actual: np.ndarray = field(default_factory=_empty)
    predicted_class: np.ndarray = field(default_factory=_empty)
    """NaN where the prediction was a regression value or failed."""
    correct: np.ndarray = field(default_factory=_empty)
    """1.0 / 0.0, NaN where not a classification or the prediction failed."""
    abs_error: np.ndarray = field(default_factory=_empty)
    pnl: np.ndarray = field(default_factory=_empty)
    """NaN where no P&L was reported."""
    outcome_served_at: np.ndarray = field(default_factory=_empty)
    unit: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=object))
    outcome_unit: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=object))
    worst_case: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=bool))
    """Outcome rows whose prediction failed or was not finite: scored as the worst case."""

    @property
    def requests(self) -> int:
        return int(self.latency_ms.size)

    def request_units(self) -> np.ndarray | None:
        return self.unit if self.unit.size == self.latency_ms.size and self.unit.size else None

    def primary_values(self, task: str, worst_abs_error: float | None = None
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(values, served_at, units) of the primary metric: correctness or absolute error.

        A prediction that failed or was NaN/inf scores as wrong (classification) or with ``worst_abs_error``
        (regression; the largest finite absolute error of the experiment): a model must not look better
        by failing on its hardest inputs. Rows with nothing to score are dropped."""
        values = (self.correct if task == "classification" else self.abs_error).astype(np.float64, copy=True)
        if self.worst_case.size == values.size and self.worst_case.any():
            fill = 0.0 if task == "classification" else (np.nan if worst_abs_error is None else worst_abs_error)
            values[self.worst_case] = fill
        keep = ~np.isnan(values)
        units = self.outcome_unit[keep] if self.outcome_unit.size == values.size and values.size else None
        return values[keep], self.outcome_served_at[keep], units

    def pnl_values(self) -> tuple[np.ndarray, np.ndarray]:
        keep = ~np.isnan(self.pnl)
        return self.pnl[keep], self.outcome_served_at[keep]


def count_units(units: np.ndarray | None, rows: int) -> int:
    """Distinct randomization units among ``rows`` rows (each row its own unit when ``units`` is None)."""
    return rows if units is None else int(np.unique(units).size)


def effective_units(units: np.ndarray | None, rows: int) -> float:
    """Effective randomization units among ``rows`` rows: 1 / sum of squared traffic shares (rows when
    every row is its own unit)."""
    if units is None or not rows:
        return float(rows)
    counts = np.unique(units, return_counts=True)[1].astype(np.float64)
    return float(rows * rows / np.sum(counts**2))


def macro_precision_recall_f1(actual: np.ndarray, predicted: np.ndarray) -> tuple[float, float, float]:
    """Macro averages over the classes seen in either array; an undefined ratio counts as 0."""
    classes = np.union1d(actual, predicted)
    precisions, recalls, f1s = [], [], []
    for cls in classes:
        tp = float(np.sum((predicted == cls) & (actual == cls)))
        predicted_pos, actual_pos = float(np.sum(predicted == cls)), float(np.sum(actual == cls))
        precision = tp / predicted_pos if predicted_pos else 0.0
        recall = tp / actual_pos if actual_pos else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        precisions.append(precision)
        recalls.append(recall)
        f1s.append(f1)
    return float(np.mean(precisions)), float(np.mean(recalls)), float(np.mean(f1s))


def sharpe_ratio(pnl: np.ndarray, periods_per_year: float) -> float | None:
    if pnl.size < 2:
        return None
    std = float(pnl.std(ddof=1))
    if std == 0:
        return None
    return float(pnl.mean() / std * np.sqrt(periods_per_year))


def arm_metrics(data: ArmData, task: str, periods_per_year: float,
                worst_abs_error: float | None = None) -> ArmMetrics:
    errors = int(data.error.sum())
    latency = data.latency_ms  # every served request, failed ones included
    metrics = ArmMetrics(
        requests=data.requests,
        units=count_units(data.request_units(), data.requests),
        errors=errors,
        error_rate=errors / data.requests if data.requests else 0.0,
        latency_mean_ms=float(latency.mean()) if latency.size else None,
        latency_p95_ms=float(np.percentile(latency, 95)) if latency.size else None,
        outcomes=int(data.actual.size),
    )
    values, _, units = data.primary_values(task, worst_abs_error)
    metrics.scored = int(values.size)
    metrics.scored_units = count_units(units, values.size)
    metrics.effective_units = effective_units(units, values.size)
    metrics.worst_case = int(data.worst_case.sum()) if data.worst_case.size == data.actual.size else 0
    if task == "classification":
        if values.size:
            metrics.accuracy = float(values.mean())
        scored = ~np.isnan(data.correct) & ~np.isnan(data.predicted_class)
        if scored.any():  # precision / recall describe the predictions that produced a class
            precision, recall, f1 = macro_precision_recall_f1(data.actual[scored], data.predicted_class[scored])
            metrics.precision_macro, metrics.recall_macro, metrics.f1_macro = precision, recall, f1
    elif values.size:
        metrics.mae = float(values.mean())
    pnl, _ = data.pnl_values()
    metrics.pnl_count = int(pnl.size)
    if pnl.size:
        metrics.win_rate = float(np.mean(pnl > 0))
        metrics.total_pnl = float(pnl.sum())
        metrics.sharpe = sharpe_ratio(pnl, periods_per_year)
    return metrics
