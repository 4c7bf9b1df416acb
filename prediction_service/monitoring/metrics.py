"""Prometheus metrics of the service, defined against a ``CollectorRegistry`` passed in.

One ``ServiceMetrics`` per app. It is fed by the hooks the service already has:

- ``observe(record)``: a ``DataPlane`` observer, called after every prediction (success or domain error);
- ``observe_batch(model, rows)``: the in-process adapter's ``batch_observer``;
- ``on_model_event(event, key, details)``: the ``ModelManager`` event hook (load / load_failed / unload);
- ``refresh(...)``: at scrape time, gauges that are read rather than counted (queue depth per model,
  models loaded, in-flight, audit backlog, process memory / CPU via psutil);
- the ``ExperimentObserver`` methods (``experiment_*``): A/B arms' predictions and outcomes, the last
  analysis (decision, p-values, differences) and decisions applied, from ``ExperimentService``;
- ``observe_health(health)`` / ``observe_readiness(readiness)``: the backend's health and the worker's
  readiness, from the service's background health check (never a backend call per scrape).

Several uvicorn workers: when ``PROMETHEUS_MULTIPROC_DIR`` is set (``serve`` sets up a fresh one for
more than one worker), prometheus_client writes every value to per-process files and ``exposition()``
merges them, so any worker answers ``/metrics`` for all. Gauges say how workers combine
(``livesum`` for queue depth, memory, backlog; ``livemax`` for models loaded). Read-at-scrape gauges
are refreshed by the answering worker at scrape time and by every worker once a second
(``run_refresher``), so a scrape sees other workers' values at most a second old.

``/v1/stats`` percentiles come from a bounded window of this worker's most recent predictions
(``LatencyWindow``, 10 000 by default), not from the histograms: exact for recent traffic, O(window)
per call, and per worker. Request counts there come from the (merged) counters.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import psutil
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import multiprocess
from prometheus_client.exposition import CONTENT_TYPE_LATEST

if TYPE_CHECKING:
    from ..adapters.base import AdapterHealth, ServingAdapter
    from ..experiments.models import Analysis, Experiment
    from ..types import PredictionRecord, Readiness
    from ..registry import ModelKey
    from .audit import AuditStats

log = logging.getLogger(__name__)

MAX_CACHED_LABEL_SETS = 10_000
"""Metric children kept per (model, version, status); past it the cache starts over (bounded memory)."""

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
LATENCY_BUCKETS = (0.0005, 0.001, 0.0015, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05,
                   0.1, 0.25, 0.5, 1.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
LOAD_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
ANALYSIS_DECISIONS = ("continue", "promote", "rollback")
APPLIED_DECISIONS = ("promote", "rollback")
UNRESOLVED = "_unresolved"
"""Model label of predictions that never resolved to a version (unknown names stay out of label values)."""


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


@dataclass(frozen=True)
class LatencySummary:
    count: int
    mean_ms: float | None
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None


class LatencyWindow:
    """The latencies of the last ``size`` predictions of this worker (successes only)."""

    def __init__(self, size: int = 10_000):
        self._values: deque[float] = deque(maxlen=size)

    def add(self, latency_ms: float) -> None:
        self._values.append(latency_ms)

    def summary(self) -> LatencySummary:
        if not self._values:
            return LatencySummary(0, None, None, None, None)
        values = np.fromiter(self._values, dtype=np.float64)
        p50, p95, p99 = np.percentile(values, [50, 95, 99])
        return LatencySummary(len(values), round(float(values.mean()), 3), round(float(p50), 3),
                              round(float(p95), 3), round(float(p99), 3))


class _CumulativeFeed:
    """Turns cumulative numbers read from elsewhere (batcher stats, audit stats) into counter increments."""

    def __init__(self, counter: Counter):
        self._counter = counter
        self._seen: dict[tuple[str, ...], float] = {}

    def update(self, value: float, *labels: str) -> None:
        previous = self._seen.get(labels)
        if previous is None:  # a new series starts at 0: its first increase is one Prometheus can see
            previous = 0.0
            if labels:
                self._counter.labels(*labels)
        if value < previous:  # the source restarted (model reloaded): count from its new zero
            previous = 0.0
        if value > previous:
            (self._counter.labels(*labels) if labels else self._counter).inc(value - previous)
        self._seen[labels] = value


class ServiceMetrics:
    def __init__(self, registry: CollectorRegistry, latency_window: int = 10_000):
        self.registry = registry
        self.started_at = time.time()
        self.window = LatencyWindow(latency_window)
        self._process = psutil.Process()
        self._queued_models: dict[str, int] = {}
        """Model versions with queue gauges, and how many priority lanes each had."""

        def counter(name: str, doc: str, labels: Iterable[str] = ()) -> Counter:
            return Counter(name, doc, list(labels), registry=registry)

        def gauge(name: str, doc: str, mode: str, labels: Iterable[str] = ()) -> Gauge:
            return Gauge(name, doc, list(labels), registry=registry, multiprocess_mode=mode)

        self.requests = counter("prediction_requests_total", "Predictions answered, by HTTP status.",
                                ("model", "version", "status"))
        self.errors = counter("prediction_errors_total", "Failed predictions by error code.", ("model", "code"))
        self.latency = Histogram("prediction_latency_seconds", "Prediction latency inside the service.",
                                 ["model", "version"], buckets=LATENCY_BUCKETS, registry=registry)
        self.batch_rows = Histogram("prediction_batch_rows", "Rows per model run (dynamic batching).",
                                    ["model"], buckets=BATCH_BUCKETS, registry=registry)
        # priority: "1" (the highest) .. BATCH_PRIORITY_LEVELS, at most MAX_PRIORITY_LEVELS label values
        self.queue_depth = gauge("prediction_queue_depth", "Requests waiting for a model run, per model version "
                                 "and priority lane.", "livesum", ("model", "priority"))
        self.in_flight = gauge("prediction_in_flight", "Predictions in progress.", "livesum")
        self.models_loaded = gauge("prediction_models_loaded", "Model versions loaded (max over workers).",
                                   "livemax")
        self.model_loads = counter("prediction_model_loads_total", "Model loads by result.", ("model", "result"))
        self.load_seconds = Histogram("prediction_model_load_seconds", "Time to load a model version.",
                                      ["model"], buckets=LOAD_BUCKETS, registry=registry)
        self.unload_seconds = Histogram("prediction_model_unload_seconds", "Time to drain and unload a version.",
                                        ["model"], buckets=LOAD_BUCKETS, registry=registry)
        self.batcher_expired = counter("prediction_batcher_expired_total",
                                       "Requests dropped by the batcher because their deadline passed.", ("model",))
        self.batcher_shed = counter("prediction_batcher_shed_total",
                                    "Requests shed because the model's queue was full (refused on arrival, or "
                                    "displaced by a higher priority), by their priority.", ("model", "priority"))
        self.rate_limited = counter("prediction_rate_limited_total", "Requests refused by the rate limiter.",
                                    ("endpoint",))
        self.audit_backlog = gauge("prediction_audit_backlog", "Audit records waiting to be written.", "livesum")
        self.audit_written = counter("prediction_audit_written_total", "Audit records written.")
        self.audit_dropped = counter("prediction_audit_dropped_total", "Audit records dropped (backlog full).")
        self.audit_write_errors = counter("prediction_audit_write_errors_total", "Failed audit writes.")
        self.audit_pruned = counter("prediction_audit_pruned_total", "Audit records deleted past the retention.")
        self.rss = gauge("prediction_process_resident_memory_bytes", "Resident memory (sum over workers).", "livesum")
        self.cpu = gauge("prediction_process_cpu_seconds", "CPU time used (sum over workers).", "livesum")
        self.uptime = gauge("prediction_uptime_seconds", "Seconds since this worker started.", "livemax")
        # Health: set by the background check (Service.check_health); min over workers, so one worker
        # that is not ready (or cannot reach the backend) shows as 0.
        self.ready = gauge("prediction_ready", "1 when the worker is ready to serve (min over workers).", "livemin")
        self.backend_healthy = gauge("prediction_backend_healthy",
                                     "1 when the serving backend answers its health check (min over workers).",
                                     "livemin", ("backend",))
        # A/B experiments. Few label sets: one per experiment and arm / decision / metric.
        experiment = ("model", "experiment")
        self.experiment_predictions = counter("prediction_experiment_predictions_total",
                                              "Predictions served inside an A/B experiment, by arm.",
                                              (*experiment, "arm"))
        self.experiment_outcomes = counter("prediction_experiment_outcomes_total",
                                           "Outcomes reported for an A/B experiment's predictions, by arm.",
                                           (*experiment, "arm"))
        self.experiment_decision = gauge("prediction_experiment_decision",
                                         "1 for the decision of the experiment's last analysis, 0 for the others.",
                                         "mostrecent", (*experiment, "decision"))
        self.experiment_p_value = gauge("prediction_experiment_p_value",
                                        "p-value of the last analysis per metric (always-valid mSPRT in sequential "
                                        "mode, t-test in fixed mode); NaN before each arm has 2 samples.",
                                        "mostrecent", (*experiment, "metric"))
        self.experiment_difference = gauge("prediction_experiment_difference",
                                           "Challenger minus champion per metric in the last analysis.",
                                           "mostrecent", (*experiment, "metric"))
        self.experiment_analyzed_at = gauge("prediction_experiment_last_analysis_timestamp_seconds",
                                            "Unix time of the experiment's last analysis.", "max", experiment)
        self.experiment_applied = counter("prediction_experiment_applied_total",
                                          "Decisions applied by auto_apply (promote / rollback).",
                                          (*experiment, "decision"))
        self.shadow_runs_total = counter("prediction_shadow_runs_total", "Shadow copies run on a shadow experiment's "
                                   "challenger, by whether its answer agreed with the champion's (agree, disagree, "
                                   "error).", ("model", "outcome"))
        self.shadow_shed_total = counter("prediction_shadow_shed_total", "Shadow copies shed: the shadow queue was full, "
                                   "or production kept the challenger busy past EXPERIMENT_SHADOW_TIMEOUT_SECONDS.",
                                   ("model",))
        self.shadow_latency = Histogram("prediction_shadow_latency_seconds", "A shadow run's wait in the challenger's "
                                        "lowest priority lane and its run (copies waiting together share one run).", ["model"], buckets=LATENCY_BUCKETS, registry=registry)
        self._expired_feed = _CumulativeFeed(self.batcher_expired)
        self._shed_feed = _CumulativeFeed(self.batcher_shed)
        self._written_feed = _CumulativeFeed(self.audit_written)
        self._dropped_feed = _CumulativeFeed(self.audit_dropped)
        self._write_error_feed = _CumulativeFeed(self.audit_write_errors)
        self._pruned_feed = _CumulativeFeed(self.audit_pruned)
        self._children: dict[tuple[str, str, int, str | None], tuple[Any, Any, Any]] = {}

    # ---- hooks ----------------------------------------------------------------------------------

    def observe(self, record: PredictionRecord) -> None:
        resolved = record.version is not None
        model = record.model if resolved else UNRESOLVED
        version = record.version or ""
        error_code = record.error_code
        key = (model, version, record.status, error_code)
        children = self._children.get(key)
        if children is None:  # labels() validates and locks on every call: resolve the children once
            if len(self._children) > MAX_CACHED_LABEL_SETS:
                self._children.clear()
            children = self._children[key] = (
                self.requests.labels(model, version, str(record.status)),
                self.latency.labels(model, version) if resolved else None,
                self.errors.labels(model, error_code) if error_code is not None else None)
        children[0].inc()
        if children[2] is not None:  # refusals under overload come here thousands of times a second
            children[2].inc()
        if children[1] is not None:
            children[1].observe(record.latency_ms / 1000.0)
        if record.status == 200:
            self.window.add(record.latency_ms)

    def observe_batch(self, model: str, rows: int) -> None:
        self.batch_rows.labels(model).observe(rows)

    def on_model_event(self, event: str, key: ModelKey, details: dict) -> None:
        if event == "load":
            self.model_loads.labels(key.name, "ok").inc()
            if "seconds" in details:
                self.load_seconds.labels(key.name).observe(float(details["seconds"]))
        elif event == "load_failed":
            self.model_loads.labels(key.name, "failed").inc()
        elif event == "unload" and "seconds" in details:
            self.unload_seconds.labels(key.name).observe(float(details["seconds"]))

    def observe_rate_limited(self, endpoint: str) -> None:
        self.rate_limited.labels(endpoint).inc()

    def observe_health(self, health: AdapterHealth) -> None:
        self.backend_healthy.labels(health.backend).set(1 if health.healthy else 0)

    def observe_readiness(self, readiness: Readiness) -> None:
        self.ready.set(1 if readiness.ready else 0)

    # ---- shadow experiments (serving.shadow.ShadowObserver) -------------------------------------------

    def shadow_run(self, model: str, outcomes: Counter[str], latency_s: float) -> None:
        for outcome, count in outcomes.items():
            self.shadow_runs_total.labels(model, outcome).inc(count)
        self.shadow_latency.labels(model).observe(latency_s)

    def shadow_shed(self, model: str, count: int = 1) -> None:
        self.shadow_shed_total.labels(model).inc(count)

    # ---- A/B experiments (experiments.service.ExperimentObserver) ------------------------------------

    def experiment_seen(self, experiment: Experiment) -> None:
        # Applied counters exist at 0 from the first sight of an experiment, so the first promotion or
        # rollback is an increase Prometheus can see (a series born at 1 has no increase).
        for decision in APPLIED_DECISIONS:
            self.experiment_applied.labels(experiment.model_name, experiment.id, decision)

    def experiment_prediction(self, experiment: Experiment, arm: str, count: int = 1) -> None:
        self.experiment_predictions.labels(experiment.model_name, experiment.id, arm).inc(count)

    def experiment_outcome(self, experiment: Experiment, arm: str) -> None:
        self.experiment_outcomes.labels(experiment.model_name, experiment.id, arm).inc()

    def experiment_analysis(self, analysis: Analysis) -> None:
        experiment = analysis.experiment
        labels = (experiment.model_name, experiment.id)
        self.experiment_seen(experiment)
        for decision in ANALYSIS_DECISIONS:
            self.experiment_decision.labels(*labels, decision).set(1 if analysis.decision.value == decision else 0)
        for comparison in analysis.comparisons:
            if comparison.method != "description":  # P&L is described, never tested
                p_value = comparison.p_value
                self.experiment_p_value.labels(*labels, comparison.metric).set(
                    float("nan") if p_value is None else p_value)
            difference = comparison.difference
            self.experiment_difference.labels(*labels, comparison.metric).set(
                float("nan") if difference is None else difference)
        self.experiment_analyzed_at.labels(*labels).set(time.time())

    def experiment_applied_decision(self, experiment: Experiment, decision: str) -> None:
        self.experiment_applied.labels(experiment.model_name, experiment.id, decision).inc()

    # ---- scrape time ------------------------------------------------------------------------------

    async def refresh(self, adapter: ServingAdapter, in_flight: int = 0, audit: AuditStats | None = None) -> None:
        """Read the gauges that are states rather than events."""
        loaded = adapter.loaded()
        self.models_loaded.set(len(loaded))
        self.in_flight.set(in_flight)
        stats = {str(key): queue for key, queue in adapter.queue_stats().items()}
        for model in set(self._queued_models) - set(stats):
            for priority in range(1, self._queued_models[model] + 1):
                self.queue_depth.labels(model, str(priority)).set(0)  # unloaded since the last scrape
        lanes: dict[str, int] = {}
        for model, queue in stats.items():
            depths = queue.depth_by_priority or (queue.queue_depth,)
            shed = queue.shed_by_priority or (queue.shed,)
            for priority, (depth, refused) in enumerate(zip(depths, shed), start=1):
                self.queue_depth.labels(model, str(priority)).set(depth)
                self._shed_feed.update(refused, model, str(priority))
            self._expired_feed.update(queue.expired, model)
            lanes[model] = len(depths)
        self._queued_models = lanes
        if audit is not None:
            self.audit_backlog.set(audit.backlog)
            self._written_feed.update(audit.written)
            self._dropped_feed.update(audit.dropped)
            self._write_error_feed.update(audit.write_errors)
            self._pruned_feed.update(audit.pruned)
        with self._process.oneshot():
            self.rss.set(self._process.memory_info().rss)
            times = self._process.cpu_times()
            self.cpu.set(times.user + times.system)
        self.uptime.set(time.time() - self.started_at)

    async def run_refresher(self, refresh, interval_s: float = 1.0) -> None:
        """Call ``refresh`` every ``interval_s``: read-at-scrape gauges in every worker (multiprocess mode),
        the health check (Service.check_health)."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await refresh()
            except Exception:  # noqa: BLE001 - metrics must never take the worker down
                log.exception("metrics refresh failed")

    def exposition_registry(self) -> CollectorRegistry:
        """The registry to expose: this one, or all workers' values merged in multiprocess mode."""
        if multiprocess_dir() is None:
            return self.registry
        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged)
        return merged

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.exposition_registry()), CONTENT_TYPE_LATEST

    def stats(self) -> dict[str, Any]:
        by_status: dict[str, int] = {}
        loaded = rss = 0.0
        for family in self.exposition_registry().collect():
            for sample in family.samples:
                if sample.name == "prediction_requests_total":
                    status = sample.labels["status"]
                    by_status[status] = by_status.get(status, 0) + int(sample.value)
                elif sample.name == "prediction_models_loaded":
                    loaded = max(loaded, sample.value)
                elif sample.name == "prediction_process_resident_memory_bytes":
                    rss += sample.value
        total = sum(by_status.values())
        latency = self.window.summary()
        return {
            "worker_pid": os.getpid(),
            "uptime_seconds": round(time.time() - self.started_at, 3),
            "requests_total": total,
            "requests_by_status": dict(sorted(by_status.items())),
            "success_rate": round(by_status.get("200", 0) / total, 6) if total else None,
            "latency_ms": {"window": latency.count, "mean": latency.mean_ms, "p50": latency.p50_ms,
                           "p95": latency.p95_ms, "p99": latency.p99_ms,
                           "scope": "this worker's most recent successful predictions"},
            "models_loaded": int(loaded),
            "process_resident_memory_bytes": int(rss),
            "host": host_resources(),
        }


def host_resources() -> dict[str, Any]:
    """The machine's CPU and memory (psutil), beside the process figures (the AIPX-compatible API's system resources)."""
    memory = psutil.virtual_memory()
    return {"cpu_count": psutil.cpu_count(), "cpu_percent": psutil.cpu_percent(interval=None),
            "load_average_1m": round(os.getloadavg()[0], 3) if hasattr(os, "getloadavg") else None,
            "memory_total_bytes": int(memory.total), "memory_available_bytes": int(memory.available),
            "memory_percent": float(memory.percent)}


def mark_worker_dead() -> None:
    """Drop this worker's live gauges from the merged view (multiprocess mode)."""
    if multiprocess_dir() is not None:
        multiprocess.mark_process_dead(os.getpid())
