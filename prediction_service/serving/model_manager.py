"""Which versions are loaded, and hot reload.

Requests resolve ``name`` + stage through the registry's stage links (a readlink per request, or none while
the registry watch saw no change), so a response always names the version the link pointed to when the
request arrived. A watcher polls the
links (changes by CLI, REST or another worker process) and a per-model reload generation file, loads a
new target beside the old one, switches, then drains and unloads versions that left every stage.
If a new target fails to load, stage requests keep going to the last version that served.

Other registry views that requests read (the names that are ensembles) are refreshed with the same
poll: ``add_refresher`` hands the manager a blocking callable, run in a worker thread once before the
manager reports started and after every poll pass, so no request pays the scan.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from ..adapters.base import LoadedModel, ServingAdapter
from ..execution.single_flight import SingleFlight
from ..errors import ModelLoadError, Overloaded, PredictionServiceError, RateLimited
from ..registry import ModelKey, ModelVersion, RegistryReader
from ..registry.families import family_of
from ..registry import watch as registry_watch
from ..security.ratelimit import RateLimiter
from ..settings import Settings

log = logging.getLogger(__name__)

LOAD_RETRY_SECONDS = 5.0
"""Backoff after a failed load; doubles with each failure in a row, up to LOAD_RETRY_MAX_SECONDS."""
LOAD_RETRY_MAX_SECONDS = 300.0
DRAIN_TIMEOUT_SECONDS = 30.0

ModelEventHook = Callable[[str, ModelKey, dict], None]
Refresher = Callable[[], object]
"""A blocking re-read of something requests look up (a directory scan); run off the event loop."""


@dataclass(frozen=True)
class LoadFailure:
    error: str
    at: float
    attempts: int = 1

    @property
    def retry_after(self) -> float:
        """Seconds after ``at`` before the next attempt."""
        return min(LOAD_RETRY_MAX_SECONDS, LOAD_RETRY_SECONDS * 2 ** (self.attempts - 1))


class ModelManager:
    def __init__(self, settings: Settings, reader: RegistryReader, adapter: ServingAdapter,
                 on_event: ModelEventHook | None = None):
        self.settings = settings
        self.reader = reader
        self.adapter = adapter
        self._on_event = on_event
        self._routes: dict[tuple[str, str], ModelVersion] = {}
        self._failures: dict[ModelKey, LoadFailure] = {}
        self._loading = SingleFlight("load", log_failures=False)  # _load logs and records its failures
        self._inflight: Counter[ModelKey] = Counter()
        self._generations: dict[str, bytes] = {}
        self._watcher: asyncio.Task | None = None
        self._registry_watch: registry_watch.RegistryWatch | None = None
        self._retiring: set[asyncio.Task] = set()
        self._refreshers: list[Refresher] = []
        per_minute = settings.limits.version_loads_per_minute
        self._version_loads = RateLimiter(per_minute / 60.0, burst=max(1.0, per_minute))
        self.started = False
        adapter.unload_observer = self._unloaded_by_adapter

    # ---- lifecycle --------------------------------------------------------------------------------

    def add_refresher(self, refresher: Refresher) -> None:
        """Run ``refresher`` in a thread in ``start`` (before anything is served) and after every poll."""
        self._refreshers.append(refresher)

    async def start(self) -> None:
        """Run the refreshers; load every version a preload stage points to; then watch links for changes."""
        await self._refresh()
        for name in self.reader.model_names():
            self._generations[name] = self.reader.reload_generation(name)
            for stage in self._preload_stages(name):
                try:
                    await self.resolve(name, stage=stage)
                except PredictionServiceError as exc:
                    log.warning("preload of %s/%s failed: %s", name, stage, exc.message)
        self.started = True
        if self.settings.registry_watch:
            self._registry_watch = registry_watch.attach(self.reader.root, asyncio.get_running_loop())
        self._watcher = asyncio.get_running_loop().create_task(self._watch(), name="stage-watcher")

    async def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)
        if self._registry_watch is not None:
            registry_watch.detach(self._registry_watch)
            self._registry_watch = None
        await asyncio.gather(*self._retiring, return_exceptions=True)

    def ready(self) -> tuple[bool, list[str]]:
        """Ready when every preload stage of every model is served by a loaded version."""
        if not self.started:
            return False, ["starting"]
        problems = []
        for name in self.reader.model_names():
            for stage in self._preload_stages(name):
                target = self.reader.model_stage(name, stage)  # an ensemble version is no model to load
                if target is None:
                    continue
                route = self._routes.get((name, stage))
                if route is None or not self.adapter.is_loaded(route.key):
                    problems.append(f"{name}/{stage} ({target}) not loaded")
        memory = self.adapter.memory()
        if memory is not None and memory.budget_bytes:
            staged = self._pinned_keys()
            held = sum(size for key, size in memory.by_version.items() if key in staged)
            if held > memory.budget_bytes:  # they stay loaded (a stage's version never leaves): say so
                problems.append(f"the staged versions hold {held / 2**20:.1f} MB, over the "
                                f"{memory.budget_bytes / 2**20:g} MB budget (SIMPLE_CACHE_SIZE_MB)")
        return not problems, problems

    # ---- request path -------------------------------------------------------------------------------

    async def resolve(self, name: str, version: str | None = None, stage: str | None = None,
                      caller_chose: bool = False) -> ModelVersion:
        """The version to serve, loaded. An explicit version wins over a stage. ``caller_chose``: the
        version came from the request (not an experiment arm): its load counts against the budget."""
        if version is not None:
            target = self.reader.get(name, version)
            # Loads of versions no stage serves are bounded: they must not thrash memory or CPU.
            await self.ensure_loaded(target, budgeted=caller_chose and not self._pinned(target.key))
            return target
        stage = stage or "production"
        target = self.reader.resolve(name, stage=stage)
        try:
            await self.ensure_loaded(target)
        except ModelLoadError:
            previous = self._routes.get((name, stage))
            if previous is not None and previous.key != target.key and self.adapter.is_loaded(previous.key):
                log.warning("%s/%s -> %s failed to load; still serving %s", name, stage, target.version,
                            previous.version)
                return previous
            raise
        self._set_route(name, stage, target)
        return target

    def _set_route(self, name: str, stage: str, version: ModelVersion) -> None:
        old = self._routes.get((name, stage))
        self._routes[(name, stage)] = version  # the newest metadata object, even for the same key
        if old is not None and old.key == version.key:
            return  # the common case, once per request: the route did not move
        self._pin()
        if old is not None:
            self._retire_if_unused(old.key)

    def _pin(self) -> None:
        """What a preload stage serves is pinned: no cache bound or idle timeout unloads it."""
        self.adapter.pin(self._pinned_keys())

    def _pinned_keys(self) -> frozenset[ModelKey]:
        return frozenset(v.key for (name, stage), v in self._routes.items()
                         if stage in self.settings.preload_stage_list and not self._family_member(name))

    def _preload_stages(self, name: str) -> list[str]:
        """The stages loaded before traffic: none for a family member, which loads on first use and may
        leave under the memory budget like a version outside a stage (a desk has hundreds)."""
        return [] if self._family_member(name) else self.settings.preload_stage_list

    def _family_member(self, name: str) -> bool:
        try:
            target = self.reader.model_stage(name, "production")
            return target is not None and family_of(self.reader.get(name, target).metadata) is not None
        except PredictionServiceError:
            return False

    def _take_load_token(self, key: ModelKey) -> None:
        try:
            self._version_loads.check("loads", "version_load")
        except RateLimited as exc:
            raise Overloaded(f"too many loads of versions outside a stage in this worker (limit "
                             f"{self.settings.limits.version_loads_per_minute:g}/min); ask for a stage or retry "
                             "later", {"model": key.name, "version": key.version},
                             retry_after_s=exc.retry_after_s) from None

    def production_key(self, name: str) -> ModelKey | None:
        """The version this worker serves as ``name``'s production, if it has resolved it yet."""
        route = self._routes.get((name, "production"))
        return route.key if route is not None else None

    def _pinned(self, key: ModelKey) -> bool:
        return any(v.key == key for v in self._routes.values())

    @asynccontextmanager
    async def serving(self, version: ModelVersion) -> AsyncIterator[None]:
        """Counts in-flight requests so a retiring version drains before it unloads."""
        self._inflight[version.key] += 1
        try:
            yield
        finally:
            self._inflight[version.key] -= 1

    async def ensure_loaded(self, version: ModelVersion, budgeted: bool = False) -> LoadedModel | None:
        """Load ``version`` unless loaded (one load per key however many wait). ``budgeted``: a new load
        takes a token from the per-worker budget for versions outside a stage (429 when empty)."""
        key = version.key
        if self.adapter.is_loaded(key):
            return None
        failure = self._failures.get(key)
        if failure is not None and time.monotonic() - failure.at < failure.retry_after:
            raise ModelLoadError(f"{key} failed to load: {failure.error}",
                                 {"model": key.name, "version": key.version,
                                  "retry_in_s": round(failure.at + failure.retry_after - time.monotonic(), 1)})
        if budgeted and not self._loading.in_flight(key):  # one token per load, not per waiter
            self._take_load_token(key)
        return await self._loading.run(key, lambda: self._load(version))

    async def _load(self, version: ModelVersion) -> LoadedModel:
        started = time.perf_counter()
        try:
            loaded = await self.adapter.load(version)
        except Exception as exc:  # noqa: BLE001 - any load failure is a failed load, with backoff
            message = exc.message if isinstance(exc, PredictionServiceError) else f"{type(exc).__name__}: {exc}"
            if not isinstance(exc, PredictionServiceError):
                log.exception("loading %s failed", version.key)
            previous = self._failures.get(version.key)
            self._failures[version.key] = LoadFailure(message, time.monotonic(),
                                                      previous.attempts + 1 if previous else 1)
            self._emit("load_failed", version.key, {"error": message})
            details = exc.details if isinstance(exc, PredictionServiceError) else {}
            raise ModelLoadError(f"{version.key} failed to load: {message}", details) from exc
        self._failures.pop(version.key, None)
        self._emit("load", version.key, {"seconds": round(time.perf_counter() - started, 4),
                                         "backend": loaded.backend, "artifact": loaded.artifact.file})
        return loaded

    # ---- hot reload -----------------------------------------------------------------------------------

    async def reload(self, name: str) -> dict[str, str | None]:
        """Re-read ``name``'s stage links now and tell other workers (generation file)."""
        generation = self.reader.request_reload(name)
        self._generations[name] = generation
        self._failures = {k: v for k, v in self._failures.items() if k.name != name}
        return await self._sync_model(name)

    def failures(self, name: str) -> dict[str, str]:
        return {key.version: failure.error for key, failure in self._failures.items() if key.name == name}

    def routes(self, name: str) -> dict[str, str]:
        return {stage: version.version for (model, stage), version in self._routes.items() if model == name}

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.settings.stage_poll_interval_seconds)
            await self.poll()

    async def poll(self) -> None:
        """One pass of the stage watcher (it runs one every STAGE_POLL_INTERVAL_SECONDS): follow moved stage
        links and reload generations, bring back lost pinned versions, then run the refreshers."""
        if self._registry_watch is not None:
            self._registry_watch.changed()  # what no inotify event reports (another host's write) waits one pass
        try:
            for name in self.reader.model_names():
                generation = self.reader.reload_generation(name)
                if generation != self._generations.get(name):
                    self._generations[name] = generation
                    self._failures = {k: v for k, v in self._failures.items() if k.name != name}
                await self._sync_model(name)
            await self._reload_missing()
        except Exception:  # noqa: BLE001 - the watcher must outlive any one bad model
            log.exception("stage watcher pass failed")
        await self._refresh()

    async def _refresh(self) -> None:
        for refresher in self._refreshers:
            try:
                await asyncio.to_thread(refresher)
            except Exception:  # noqa: BLE001 - a refresher keeps what it had; the next poll tries again
                log.exception("refresh %r failed", refresher)

    async def _reload_missing(self) -> None:
        """A pinned version the backend lost (restart, crash) comes back without waiting for traffic;
        readiness reports it until then. ensure_loaded applies the failure backoff."""
        for (name, stage), version in list(self._routes.items()):
            if stage in self._preload_stages(name) and not self.adapter.is_loaded(version.key):
                try:
                    await self.ensure_loaded(version)
                    log.info("reloaded %s/%s (%s): it was no longer loaded", name, stage, version.version)
                except PredictionServiceError as exc:
                    log.debug("reload of %s/%s deferred: %s", name, stage, exc.message)

    async def _sync_model(self, name: str) -> dict[str, str | None]:
        stages = set(self._preload_stages(name)) | {s for (m, s) in self._routes if m == name}
        result: dict[str, str | None] = {}
        for stage in sorted(stages):
            old = self._routes.get((name, stage))
            target = self.reader.model_stage(name, stage)
            if target is None:
                self._routes.pop((name, stage), None)
                result[stage] = None
                if old is not None:
                    self._retire_if_unused(old.key)
            elif old is None or old.version != target:
                try:
                    result[stage] = (await self.resolve(name, stage=stage)).version
                except PredictionServiceError as exc:
                    result[stage] = old.version if old else None
                    log.warning("reload of %s/%s failed: %s", name, stage, exc.message)
            else:
                result[stage] = old.version
        return result

    def served_stage(self, key: ModelKey) -> str | None:
        """The stage this worker serves ``key`` as, if any."""
        return next((stage for (_, stage), version in self._routes.items() if version.key == key), None)

    async def unload(self, key: ModelKey, reason: str) -> None:
        """Unload a version no stage serves, once its requests in flight have finished."""
        if self.served_stage(key) is not None:
            raise ValueError(f"{key} serves a stage")
        await self._drain_and_unload(key, reason)

    def _retire_if_unused(self, key: ModelKey) -> None:
        if any(version.key == key for version in self._routes.values()):
            return
        task = asyncio.get_running_loop().create_task(self._drain_and_unload(key, "left its stage"))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _drain_and_unload(self, key: ModelKey, reason: str) -> None:
        deadline = time.monotonic() + DRAIN_TIMEOUT_SECONDS
        while self._inflight[key] > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if any(version.key == key for version in self._routes.values()):
            return  # came back into a stage while draining
        started = time.perf_counter()
        await self.adapter.unload(key)
        self._emit("unload", key, {"reason": reason, "seconds": round(time.perf_counter() - started, 4)})

    def _unloaded_by_adapter(self, key: ModelKey, reason: str) -> None:
        self._emit("unload", key, {"reason": reason})

    def _emit(self, event: str, key: ModelKey, details: dict) -> None:
        log.info("model %s %s %s", event, key, details)
        if self._on_event is not None:
            try:
                self._on_event(event, key, details)
            except Exception:  # noqa: BLE001 - an event sink must never break serving
                log.exception("model event hook failed")
