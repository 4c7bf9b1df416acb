"""Numeric parity of each exported variant against the original model (PyTorch, or a tree model's native library).

Errors are absolute, over every output element; per input row the largest error is kept so a
failing report can name the rows that went worst. Classifiers also get the top-1 agreement rate.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..artifacts import Precision
from ..execution.runtimes import Runtime
from ..signature import ModelSignature


class VariantTolerance(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    max_abs_error: float = Field(gt=0)
    """Largest allowed |variant - pytorch| over all output elements."""
    mean_abs_error: float = Field(gt=0)
    """Allowed mean |variant - pytorch|."""
    min_top1_agreement: float | None = Field(None, ge=0, le=1)
    """Classifiers: share of rows whose arg-max matches PyTorch (None = not checked)."""


class Tolerances(BaseModel):
    """Per-precision tolerances; override per model (``Tolerances(int8=VariantTolerance(...))``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    fp32: VariantTolerance = VariantTolerance(max_abs_error=1e-4, mean_abs_error=1e-5, min_top1_agreement=1.0)
    fp16: VariantTolerance = VariantTolerance(max_abs_error=1e-2, mean_abs_error=1e-3, min_top1_agreement=0.99)
    int8: VariantTolerance = VariantTolerance(max_abs_error=0.2, mean_abs_error=0.02, min_top1_agreement=0.97)
    worst_inputs: int = Field(5, ge=1)
    """How many of the worst rows a report names."""

    def for_precision(self, precision: Precision) -> VariantTolerance:
        return getattr(self, precision)


class WorstInput(BaseModel):
    index: int
    """Row of the validation set."""
    max_abs_error: float
    top1_agrees: bool | None = None


class VariantValidation(BaseModel):
    variant: str
    format: str
    precision: Precision
    passed: bool
    rows: int
    max_abs_error: float | None
    """None when the variant never produced outputs (``error`` says why)."""
    mean_abs_error: float | None
    top1_agreement: float | None = None
    tolerance: VariantTolerance
    failures: list[str] = Field(default_factory=list)
    """Which limits were exceeded, in words."""
    worst_inputs: list[WorstInput] = Field(default_factory=list)
    runtime: dict[str, Any] = Field(default_factory=dict)
    """The runtime that produced the variant's outputs and its options: the one serving opens."""
    error: str | None = None
    """Why the variant has no measurement: its process crashed (a signal), hung past the timeout or raised
    (e.g. ``ONNX Runtime crashed (SIGSEGV) creating the session``); also the only entry of ``failures``."""


def not_measured(variant: str, format: str, precision: Precision, rows: int, tolerances: Tolerances,
                 reason: str) -> VariantValidation:
    """The report of a variant that crashed, hung or failed before its outputs could be compared."""
    return VariantValidation(variant=variant, format=format, precision=precision, passed=False, rows=rows,
                             max_abs_error=None, mean_abs_error=None, tolerance=tolerances.for_precision(precision),
                             failures=[reason], error=reason)


def compare(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray], signature: ModelSignature,
            variant: str, format: str, precision: Precision, tolerances: Tolerances) -> VariantValidation:
    """Compare a variant's outputs with the reference outputs on the same rows."""
    tolerance = tolerances.for_precision(precision)
    rows = len(next(iter(reference.values())))
    per_row = np.zeros(rows)
    total, count = 0.0, 0
    failures: list[str] = []
    for spec in signature.outputs:
        want = reference[spec.name].astype(np.float64)
        got = np.asarray(candidate.get(spec.name), dtype=np.float64)
        if got.shape != want.shape:
            failures.append(f"output {spec.name!r} has shape {list(got.shape)}, expected {list(want.shape)}")
            per_row[:] = np.inf
            continue
        error = np.abs(got - want)
        error[~np.isfinite(error)] = np.inf
        per_row = np.maximum(per_row, error.reshape(rows, -1).max(axis=1))
        total += float(error.sum())
        count += error.size
    max_error = float(per_row.max()) if rows else 0.0
    mean_error = total / count if count else float("inf")
    agrees = _top1_agreement(reference, candidate, signature)
    agreement = float(agrees.mean()) if agrees is not None else None

    if max_error > tolerance.max_abs_error:
        failures.append(f"max abs error {max_error:.3g} > {tolerance.max_abs_error:.3g}")
    if mean_error > tolerance.mean_abs_error:
        failures.append(f"mean abs error {mean_error:.3g} > {tolerance.mean_abs_error:.3g}")
    if agreement is not None and tolerance.min_top1_agreement is not None and agreement < tolerance.min_top1_agreement:
        failures.append(f"top-1 agreement {agreement:.3f} < {tolerance.min_top1_agreement:.3f}")
    worst = np.argsort(-per_row, kind="stable")[: tolerances.worst_inputs]
    return VariantValidation(
        variant=variant, format=format, precision=precision, passed=not failures, rows=rows,
        max_abs_error=max_error, mean_abs_error=mean_error, top1_agreement=agreement,
        tolerance=tolerance, failures=failures,
        worst_inputs=[WorstInput(index=int(i), max_abs_error=float(per_row[i]),
                                 top1_agrees=None if agrees is None else bool(agrees[i])) for i in worst],
    )


def _top1_agreement(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray],
                    signature: ModelSignature) -> np.ndarray | None:
    """Per-row arg-max agreement on the first output, for classifiers only."""
    if signature.task != "classification":
        return None
    name = signature.outputs[0].name
    want, got = reference[name], candidate.get(name)
    if got is None or np.shape(got) != want.shape:
        return np.zeros(len(want), dtype=bool)
    return want.reshape(len(want), -1).argmax(axis=1) == np.asarray(got).reshape(len(want), -1).argmax(axis=1)


def validate_runner(runner: Runtime, inputs: dict[str, np.ndarray], reference: dict[str, np.ndarray],
                    signature: ModelSignature, variant: str, format: str, precision: Precision,
                    tolerances: Tolerances) -> VariantValidation:
    result = compare(reference, runner.run(inputs), signature, variant, format, precision, tolerances)
    return result.model_copy(update={"runtime": runner.options})
