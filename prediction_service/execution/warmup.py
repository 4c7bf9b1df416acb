"""Warm-up: run a freshly loaded model on synthetic inputs before it takes traffic.

First runs are slow: TorchScript's profiling executor records shapes and optimizes the graph over its
first calls (a cold first request takes 6-8x the warm latency, ~30 ms for the first model of a process),
and runtimes allocate per new batch shape. The in-process adapters run these batches on the model's
runtime, off the batcher, before the model is visible to requests, so neither the first request after
a hot reload nor the batch metrics see them. TorchServe workers (``warmup.npz`` in the .mar) and Triton
(``model_warmup`` in config.pbtxt) run the same batches before they report the model ready.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from ..settings import WarmupSettings
from ..signature import ModelSignature

Tensors = dict[str, np.ndarray]


class WarmupFailed(Exception):
    def __init__(self, rows: int, cause: BaseException):
        super().__init__(f"warm-up run on a batch of {rows} rows failed: {type(cause).__name__}: {cause}")
        self.rows = rows


@dataclass(frozen=True)
class WarmupReport:
    runs: int
    seconds: float
    first_run_ms: float
    last_run_ms: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def warmup_batches(signature: ModelSignature, settings: WarmupSettings) -> list[Tensors]:
    sizes = sorted({min(size, signature.max_batch_size) for size in settings.batch_size_list})
    return [signature.synthetic_inputs(size, seed=i) for i, size in enumerate(sizes)]


def warm_up(run: Callable[[Tensors], Tensors], signature: ModelSignature, settings: WarmupSettings) -> WarmupReport:
    """Run every warm-up batch ``settings.iterations`` times (blocking: call it off the event loop).
    Raises WarmupFailed naming the batch size that failed."""
    started = time.perf_counter()
    timings: list[float] = []
    for inputs in warmup_batches(signature, settings):
        rows = next(iter(inputs.values())).shape[0]
        for _ in range(settings.iterations):
            run_started = time.perf_counter()
            try:
                run(inputs)
            except Exception as exc:  # noqa: BLE001 - runtimes raise unrelated types; name the batch
                raise WarmupFailed(rows, exc) from exc
            timings.append((time.perf_counter() - run_started) * 1000.0)
    return WarmupReport(runs=len(timings), seconds=round(time.perf_counter() - started, 4),
                        first_run_ms=round(timings[0], 3), last_run_ms=round(timings[-1], 3))


def one_row_run_us(run: Callable[[Tensors], Tensors], signature: ModelSignature, runs: int = 5) -> float:
    """The median time of ``runs`` runs of one synthetic row, after one run that is not counted (blocking:
    call it off the event loop). What decides whether a small request may run on the event loop itself."""
    inputs = signature.synthetic_inputs(1)
    run(inputs)
    timings = []
    for _ in range(runs):
        started = time.perf_counter()
        run(inputs)
        timings.append((time.perf_counter() - started) * 1e6)
    return float(np.median(timings))
