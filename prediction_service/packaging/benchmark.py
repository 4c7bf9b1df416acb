"""Latency (batch 1), throughput (batch 32) and file size of a variant, measured in-process."""

from __future__ import annotations

import time

import numpy as np
from pydantic import BaseModel

from ..execution.runtimes import Runtime

THROUGHPUT_BATCH = 32


class BenchmarkResult(BaseModel):
    latency_ms_p50: float
    """Median latency of one batch-1 run."""
    latency_ms_p99: float
    throughput_rows_per_s: float
    """Rows per second at batch ``throughput_batch``."""
    throughput_batch: int
    runs: int
    size_bytes: int
    threads: int


def batch_of(inputs: dict[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
    """The first ``rows`` rows, repeating the set when it is shorter."""
    available = len(next(iter(inputs.values())))
    index = np.arange(rows) % available
    return {name: np.ascontiguousarray(array[index]) for name, array in inputs.items()}


def benchmark(runner: Runtime, inputs: dict[str, np.ndarray], size_bytes: int, runs: int = 50,
              warmup: int = 5, threads: int = 1) -> BenchmarkResult:
    single = batch_of(inputs, 1)
    batch = batch_of(inputs, THROUGHPUT_BATCH)
    for _ in range(warmup):
        runner.run(single)
        runner.run(batch)
    latencies = np.empty(runs)
    for i in range(runs):
        started = time.perf_counter()
        runner.run(single)
        latencies[i] = time.perf_counter() - started
    throughput_runs = max(1, runs // 4)
    started = time.perf_counter()
    for _ in range(throughput_runs):
        runner.run(batch)
    elapsed = time.perf_counter() - started
    return BenchmarkResult(
        latency_ms_p50=float(np.percentile(latencies, 50) * 1e3),
        latency_ms_p99=float(np.percentile(latencies, 99) * 1e3),
        throughput_rows_per_s=THROUGHPUT_BATCH * throughput_runs / elapsed,
        throughput_batch=THROUGHPUT_BATCH,
        runs=runs,
        size_bytes=size_bytes,
        threads=threads,
    )
