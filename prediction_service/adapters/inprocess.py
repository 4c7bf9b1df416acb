"""Shared machinery of the in-process adapters: LRU + idle unload, one dynamic batcher per model,
model runs on a thread pool so the event loop never blocks."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import psutil

from ..artifacts import ARTIFACT_FORMATS
from ..execution.batching import DynamicBatcher
from ..execution.run_pools import RunPools
from ..execution.single_flight import SingleFlight
from ..errors import ModelLoadError, ModelNotFound
from ..registry import ArtifactInfo, ModelKey, ModelVersion
from ..registry.fsutil import sha256_file
from ..execution.runtimes import Runtime
from ..settings import BatchingSettings, Settings
from ..signature import ModelSignature
from ..types import RequestContext
from ..execution.warmup import WarmupFailed, WarmupReport, one_row_run_us, warm_up
from .base import AdapterHealth, LoadedModel, MemoryUse, QueueStats, ServingAdapter
from .runtimes import open_runtime

log = logging.getLogger(__name__)


@dataclass
class _Entry:
    model: LoadedModel
    runtime: Runtime
    batcher: DynamicBatcher
    last_used: float
    memory_bytes: int = 0
    """Resident memory the load added (session, weights, the warm-up's arena), at least the artifact's size."""


class InProcessAdapter(ServingAdapter):
    name = "inprocess"
    traces_runs = True
    enforces_deadlines = True
    formats: tuple[str, ...] = ARTIFACT_FORMATS

    def __init__(self, settings: Settings):
        self.settings = settings
        batching = settings.batching
        self._pools = RunPools(self.name, urgent_threads=max(2, batching.concurrent_batches
                                                              + batching.priority_reserved_slots),
                               background_threads=batching.concurrent_batches,
                               background_nice=batching.background_nice if batching.priority_levels > 1 else 0)
        # Least recently used first. Pinned keys (what a stage serves) are never evicted or idled out.
        self._models: OrderedDict[ModelKey, _Entry] = OrderedDict()
        self._pinned: frozenset[ModelKey] = frozenset()
        self._loads = SingleFlight("load", log_failures=False)  # the model manager logs load failures
        self._measured = asyncio.Lock()
        """Loads take turns, so each one's growth of the process's resident memory is its own."""
        self._process = psutil.Process()
        self._background: set[asyncio.Task] = set()
        self._sweeper: asyncio.Task | None = None

    # ---- contract -----------------------------------------------------------------------------

    async def load(self, version: ModelVersion) -> LoadedModel:
        entry = self._models.get(version.key)
        if entry is not None:
            return entry.model
        return await self._loads.run(version.key, lambda: self._open_model(version))

    async def _open_model(self, version: ModelVersion) -> LoadedModel:
        key = version.key
        artifact = self.choose_artifact(version)
        loop = asyncio.get_running_loop()
        async with self._measured:
            before = self._process.memory_info().rss
            runtime = await loop.run_in_executor(self._pools.urgent, self._open, version, artifact)
            details: dict = {"format": runtime.format}
            if self.settings.warmup.enabled:
                details["warmup"] = (await self._warm_up(key, runtime, version)).as_dict()
            inline_rows = await self._inline_rows(runtime, version, details)
            grown = self._process.memory_info().rss - before
        memory_bytes = max(grown, artifact.size_bytes or 0)
        details["memory_bytes"] = memory_bytes
        model = LoadedModel(version=version, backend=self.name, artifact=artifact, details=details)
        batcher = DynamicBatcher(
            self._runner(runtime),
            max_batch_size=min(self.settings.batching.max_batch_size, version.signature.max_batch_size),
            max_queue_delay_ms=_batch_delay_ms(self.settings.batching, version.signature),
            wait_while_idle=version.signature.batch_delay_ms is not None or not self.settings.batching.adaptive,
            max_queue_size=self.settings.batching.max_queue_size,
            max_concurrent_batches=self.settings.batching.concurrent_batches,
            priority_levels=self.settings.batching.priority_levels,
            default_priority=self.settings.batching.default_priority,
            reserved_slots=self.settings.batching.priority_reserved_slots,
            run_inline=lambda inputs: runtime.run(inputs),  # looked up per run, as the threads' runner does
            inline_rows=inline_rows,
            on_batch=self._observe_batch(key.name),
            name=str(key),
        )
        self._models[key] = _Entry(model, runtime, batcher, time.monotonic(), memory_bytes)
        self._evict_over_bound()
        self._ensure_sweeper()
        log.info("loaded %s (%s, %s) in %s", key, artifact.file, artifact.precision, self.name)
        return model

    async def unload(self, key: ModelKey) -> None:
        entry = self._models.pop(key, None)
        if entry is not None:
            await self._retire(key, entry)

    async def predict(self, key: ModelKey, inputs: dict[str, np.ndarray], *, deadline: float | None = None,
                      context: RequestContext | None = None):
        entry = self._models.get(key)
        if entry is None:
            raise ModelNotFound(f"{key} is not loaded", {"model": key.name, "version": key.version})
        entry.last_used = time.monotonic()
        self._models.move_to_end(key)
        if context is None:
            return await entry.batcher.submit(inputs, deadline)
        return await entry.batcher.submit(inputs, deadline, context.priority, context.trace)

    async def health(self) -> AdapterHealth:
        return AdapterHealth(True, self.name, f"{len(self._models)} models loaded in process")

    def loaded(self) -> list[LoadedModel]:
        return [entry.model for entry in self._models.values()]

    def loaded_model(self, key: ModelKey) -> LoadedModel | None:
        entry = self._models.get(key)
        return entry.model if entry is not None else None

    async def describe(self, key: ModelKey) -> dict:
        entry = self._models.get(key)
        if entry is None:
            return {}
        stats = self._queue_stats(entry)
        return {"runtime": entry.runtime.format, "queue_depth": stats.queue_depth, "batches": stats.batches,
                "requests": stats.requests, "mean_batch_rows": round(stats.mean_batch_rows, 2),
                "shed": stats.shed, "expired": stats.expired}

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        self._loads.cancel_all()
        await super().close()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        self._pools.shutdown()

    def pin(self, keys: frozenset[ModelKey]) -> None:
        self._pinned = keys
        self._evict_over_bound()  # versions that just left their stage now count against the bound

    def queue_full(self, key: ModelKey) -> bool:
        entry = self._models.get(key)
        return entry is not None and entry.batcher.refuses_every_priority

    def queue_stats(self) -> dict[ModelKey, QueueStats]:
        return {key: self._queue_stats(entry) for key, entry in list(self._models.items())}

    @staticmethod
    def _queue_stats(entry: _Entry) -> QueueStats:
        stats = entry.batcher.stats
        return QueueStats(entry.batcher.queue_depth, stats.batches, stats.requests, stats.mean_batch_rows,
                          stats.shed, stats.expired, stats.depth_by_priority, stats.shed_by_priority)

    # ---- extension points -----------------------------------------------------------------------

    def choose_artifact(self, version: ModelVersion) -> ArtifactInfo:
        artifact = version.artifact(self.formats, self.settings.serving_precision.value)
        if artifact is None:
            raise ModelLoadError(
                f"{version.key} has no artifact this adapter can serve (wants {', '.join(self.formats)})",
                {"artifacts": [a.file for a in version.metadata.artifacts]},
            )
        return artifact

    def open_runtime(self, version: ModelVersion, artifact: ArtifactInfo) -> Runtime:
        return open_runtime(version, artifact, self.settings.simple.intra_op_threads)

    # ---- internals -------------------------------------------------------------------------------

    def _open(self, version: ModelVersion, artifact: ArtifactInfo) -> Runtime:
        path = version.artifact_path(artifact)
        if not path.is_file():
            raise ModelLoadError(f"artifact {artifact.file} of {version.key} is missing")
        # Serve exactly the bytes the registry recorded: the sha256 in every response means something.
        if sha256_file(path) != artifact.sha256:
            raise ModelLoadError(f"artifact {artifact.file} of {version.key} does not match its recorded sha256")
        return self.open_runtime(version, artifact)

    async def _warm_up(self, key: ModelKey, runtime: Runtime, version: ModelVersion) -> WarmupReport:
        loop = asyncio.get_running_loop()
        try:
            report = await loop.run_in_executor(self._pools.urgent, warm_up, runtime.run, version.signature,
                                                self.settings.warmup)
        except WarmupFailed as exc:
            runtime.close()
            raise ModelLoadError(f"{key}: {exc}", {"model": key.name, "version": key.version,
                                                   "warmup_rows": exc.rows}) from exc
        log.info("warmed up %s: %d runs in %.0f ms (first %.1f ms, last %.1f ms)", key, report.runs,
                 report.seconds * 1000, report.first_run_ms, report.last_run_ms)
        return report

    async def _inline_rows(self, runtime: Runtime, version: ModelVersion, details: dict) -> int:
        """Most rows of a request that runs alone on the event loop instead of a thread: as many as fit
        BATCH_INLINE_RUN_MAX_US at the one-row run time measured now (0 when that setting is 0, or when the
        runtime serializes its runs)."""
        budget_us = self.settings.batching.inline_run_max_us
        if not budget_us or not runtime.runs_concurrently:
            return 0
        one_row_us = await asyncio.get_running_loop().run_in_executor(
            self._pools.urgent, one_row_run_us, runtime.run, version.signature)
        rows = min(int(budget_us // max(one_row_us, 1.0)), version.signature.max_batch_size)
        details["one_row_run_us"], details["inline_rows"] = round(one_row_us, 1), rows
        return rows

    def _runner(self, runtime: Runtime):
        async def run(inputs, priority: int = 1):
            return await asyncio.get_running_loop().run_in_executor(self._pools.for_priority(priority),
                                                                    runtime.run, inputs)
        return run

    def _observe_batch(self, model_name: str):
        def observe(rows: int) -> None:
            if self.batch_observer is not None:
                self.batch_observer(model_name, rows)
        return observe

    def memory(self) -> MemoryUse:
        return MemoryUse({key: entry.memory_bytes for key, entry in list(self._models.items())},
                         int(self.settings.simple.cache_size_mb * 2**20))

    def _evict_over_bound(self) -> None:
        limit = self.settings.simple.max_models_in_memory
        unpinned = [key for key in self._models if key not in self._pinned]  # least recently used first
        for key in unpinned[:max(0, len(unpinned) - limit)]:
            self._evict(key, f"LRU, limit {limit} versions outside a stage")
        budget = int(self.settings.simple.cache_size_mb * 2**20)
        if not budget:
            return
        total = sum(entry.memory_bytes for entry in self._models.values())
        newest = next(reversed(self._models), None)  # just loaded or just used: a request is waiting for it
        for key in [key for key in self._models if key not in self._pinned and key != newest]:
            if total <= budget:
                break
            total -= self._models[key].memory_bytes
            self._evict(key, f"LRU, memory budget {self.settings.simple.cache_size_mb:g} MB")

    def _evict(self, key: ModelKey, why: str) -> None:
        log.info("evicting %s (%s)", key, why)
        entry = self._models.pop(key)
        self._spawn(self._retire(key, entry))
        self._emit_unloaded(key, "evicted (LRU)")

    async def _retire(self, key: ModelKey, entry: _Entry) -> None:
        await entry.batcher.close()  # queued requests finish first
        entry.runtime.close()
        _return_freed_memory()
        log.info("unloaded %s", key)

    def _emit_unloaded(self, key: ModelKey, reason: str) -> None:
        if self.unload_observer is not None:
            self.unload_observer(key, reason)

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _ensure_sweeper(self) -> None:
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep_idle())

    async def _sweep_idle(self) -> None:
        timeout = self.settings.simple.model_timeout_seconds
        while True:
            await asyncio.sleep(min(60.0, max(0.05, timeout / 4)))
            now = time.monotonic()
            for key, entry in list(self._models.items()):
                if key in self._pinned:
                    continue
                if now - entry.last_used > timeout and entry.batcher.queue_depth == 0:
                    log.info("unloading %s after %.0f s idle", key, now - entry.last_used)
                    await self.unload(key)
                    self._emit_unloaded(key, "idle")


def _batch_delay_ms(batching: BatchingSettings, signature: ModelSignature) -> float:
    """How long a forming batch may wait for company: the model's own delay, else the server's."""
    return signature.batch_delay_ms if signature.batch_delay_ms is not None else batching.max_queue_delay_ms


def _return_freed_memory() -> None:
    """Give the heap's free pages back to the OS after an unload (glibc's malloc_trim): without it the freed
    weights stay in the process's resident set, and a memory budget would bound the models but not the RSS."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _libc():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        return libc
    except (OSError, AttributeError):  # not glibc: nothing to trim with
        return None


_LIBC = _libc()
