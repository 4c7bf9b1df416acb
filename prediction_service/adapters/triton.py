"""Serving through a real NVIDIA Triton Inference Server.

``load`` writes a repository entry (config.pbtxt generated from the signature, the artifact, and
for the python backend the ONNX Runtime ``model.py``) and loads it with explicit model control;
``predict`` infers over HTTP or gRPC with one reused asyncio client. When Triton restarts (explicit
model control starts empty) the adapter notices the missing model and loads it again: no restart of
the service is needed.

Caveat: Triton's model namespace is shared, so several service workers pointed at one Triton share
entries: one worker's ``unload`` unloads the entry for all.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import BackendTimeout, BackendUnavailable, DeadlineExceeded, ModelLoadError, ModelNotFound
from ..packaging.triton_config import (TritonConfigOptions, TritonPlatform, choose_platform, render_config,
                                       warmup_files)
from ..packaging.triton_repository import entry_name, remove_entry, write_entry, write_generated_entry
from ..packaging.triton_ensemble import (COMBINER_MODEL_PATH, ENSEMBLE_OUTPUTS, TritonMember,
                                         ensemble_max_batch_size, render_combiner_config, render_ensemble_config)
from ..registry import ModelKey, ModelVersion
from ..settings import Settings
from ..types import RequestContext
from .base import AdapterHealth, LoadedModel, ServingAdapter
from .leases import BackendLeases, lease_root
from ..execution.single_flight import SingleFlight
from .recovery import while_restarting
from .triton_client import TritonConnection, TritonModelMissing, TritonRequestFailed

if TYPE_CHECKING:  # the type only: adapters stay below the ensemble's registry
    from ..ensemble.combiners import Combiner

log = logging.getLogger(__name__)

HEALTH_TIMEOUT_SECONDS = 1.0


@dataclass(frozen=True)
class _TritonModel:
    loaded: LoadedModel
    triton_name: str
    platform: TritonPlatform
    output_names: list[str]


class TritonAdapter(ServingAdapter):
    name = "triton"

    def __init__(self, settings: Settings):
        self._settings = settings
        self._triton = settings.triton
        self.repository = (self._triton.model_repository or settings.model_store / ".triton-repo").resolve()
        self._connection = TritonConnection(self._triton)
        self._models: dict[ModelKey, _TritonModel] = {}
        self._locks: dict[ModelKey, asyncio.Lock] = {}
        self._reloads = SingleFlight("reload into Triton")
        self._leases = BackendLeases(lease_root(settings, "triton", self.repository),
                                     settings.backend_lease_ttl_seconds)

    # --- lifecycle ----------------------------------------------------------------------------

    async def load(self, version: ModelVersion) -> LoadedModel:
        key = version.key
        async with self._lock(key):
            if key in self._models:
                return self._models[key].loaded
            name = entry_name(key)
            async with self._leases.locked(name):  # other workers may load or unload the same entry
                model = await self._prepare_entry(version)
                try:
                    await self._load_into_triton(model.triton_name)
                except BaseException:
                    if not self._leases.holders(name):
                        await asyncio.to_thread(remove_entry, self.repository, model.triton_name)
                    raise
                self._leases.acquire(name)
            self._models[key] = model
            log.info("loaded %s into Triton as %s (%s)", key, model.triton_name, model.platform.value)
            return model.loaded

    async def unload(self, key: ModelKey) -> None:
        async with self._lock(key):
            model = self._models.pop(key, None)
            if model is None:
                return
            async with self._leases.locked(model.triton_name):
                if not self._leases.release(model.triton_name):
                    log.info("released %s; Triton keeps it for the other workers holding it", key)
                    return
                try:
                    await self._connection.unload_model(model.triton_name, self._triton.timeout_seconds)
                except (BackendUnavailable, BackendTimeout) as exc:
                    # A Triton that is down has nothing loaded once it restarts; the entry goes either way.
                    log.warning("could not unload %s from Triton: %s", model.triton_name, exc.message)
                await asyncio.to_thread(remove_entry, self.repository, model.triton_name)
            log.info("unloaded %s from Triton", key)

    def loaded(self) -> list[LoadedModel]:
        return [model.loaded for model in self._models.values()]

    async def close(self) -> None:
        self._reloads.cancel_all()
        try:
            await super().close()
        finally:
            self._leases.close()
            await self._connection.close()

    # --- serving ------------------------------------------------------------------------------

    async def predict(
        self, key: ModelKey, inputs: dict[str, np.ndarray], *, deadline: float | None = None,
        context: RequestContext | None = None,
    ) -> dict[str, np.ndarray]:
        model = self._require(key)
        try:
            return await self._connection.infer(model.triton_name, inputs, model.output_names, self._timeout(deadline))
        except TritonModelMissing:
            log.warning("Triton lost %s (restarted?); loading it again", model.triton_name)
            # Shielded and shared: a caller whose deadline expires must not cancel the reload for everyone.
            await self._reloads.run(model.triton_name, lambda: self._reload(model))
            return await self._connection.infer(model.triton_name, inputs, model.output_names, self._timeout(deadline))

    async def health(self) -> AdapterHealth:
        """Triton live and every model of this adapter ready in it.

        Triton's own server readiness is reported but not required: with strict readiness one
        model of someone else's (or one being unloaded) makes the whole server "not ready".
        """
        url = self._connection.url
        extra: dict[str, Any] = {"url": url, "protocol": self._connection.protocol, "models": len(self._models)}
        missing = []
        try:
            if not await self._connection.server_live(HEALTH_TIMEOUT_SECONDS):
                return AdapterHealth(False, self.name, f"Triton at {url} is not live", extra)
            extra["server_ready"] = await self._connection.server_ready(HEALTH_TIMEOUT_SECONDS)
            for model in list(self._models.values()):
                if not await self._connection.is_model_ready(model.triton_name, HEALTH_TIMEOUT_SECONDS):
                    missing.append(model)
        except (BackendUnavailable, BackendTimeout) as exc:
            return AdapterHealth(False, self.name, exc.message, extra)
        if missing:
            for model in missing:  # the same task a request that finds the model missing would join
                self._reloads.start(model.triton_name, lambda model=model: self._reload(model))
            names = [m.triton_name for m in missing]
            return AdapterHealth(False, self.name, f"reloading models Triton lost: {', '.join(names)}", extra)
        return AdapterHealth(True, self.name, f"Triton at {url} ready", extra)

    async def describe(self, key: ModelKey) -> dict[str, Any]:
        model = self._require(key)
        timeout = self._triton.timeout_seconds
        return {
            "backend": self.name,
            "triton_model": model.triton_name,
            "platform": model.platform.value,
            "url": self._connection.url,
            "protocol": self._connection.protocol,
            "metadata": await self._connection.model_metadata(model.triton_name, timeout),
            "statistics": await self._connection.inference_statistics(model.triton_name, timeout),
        }

    # --- ensembles ------------------------------------------------------------------

    async def load_ensemble(self, name: str, version: str, combiner: "Combiner",
                            members: dict[str, ModelVersion]) -> str:
        """Serve a registered ensemble as Triton's own: the members loaded as any model, the combiner as a
        generated python-backend step, and an ``ensemble_scheduling`` entry over the three. ``members``:
        role (price, sentiment) -> resolved version. Returns the ensemble's Triton entry name."""
        for member in members.values():
            await self.load(member)
        price, sentiment = (TritonMember(entry_name(members[role].key), members[role].signature)
                            for role in ("price", "sentiment"))
        try:
            max_batch = ensemble_max_batch_size([price, sentiment], self._config_options(TritonPlatform.PYTHON_ONNX))
            positive, negative = combiner.label_indices(sentiment.signature.labels or [])
        except ValueError as exc:
            raise ModelLoadError(str(exc), {"ensemble": name, "version": version}) from exc
        entry = entry_name(ModelKey(name, version))
        step = f"{entry}__combiner"
        model_py = COMBINER_MODEL_PATH.read_bytes()
        configs = {
            step: (render_combiner_config(step, price, sentiment, combiner.model_dump_json(), positive, negative,
                                          max_batch), {"model.py": model_py}),
            entry: (render_ensemble_config(entry, price, sentiment, step, max_batch), {}),
        }
        for triton_name, (config, files) in configs.items():  # the step first: the ensemble needs it
            await asyncio.to_thread(write_generated_entry, self.repository, triton_name,
                                    self._triton.default_model_version, config, files)
            await self._load_into_triton(triton_name)
        log.info("loaded ensemble %s %s into Triton as %s", name, version, entry)
        return entry

    async def predict_ensemble(self, entry: str, inputs: dict[str, np.ndarray], *,
                               deadline: float | None = None) -> dict[str, np.ndarray]:
        """Run a loaded Triton ensemble on the members' model tensors."""
        return await self._connection.infer(entry, inputs, list(ENSEMBLE_OUTPUTS), self._timeout(deadline))

    async def unload_ensemble(self, entry: str) -> None:
        """Unload and remove the ensemble and its combiner step (the members stay, as models of their own)."""
        for triton_name in (entry, f"{entry}__combiner"):
            await self._connection.unload_model(triton_name, self._triton.timeout_seconds)
            await asyncio.to_thread(remove_entry, self.repository, triton_name)

    # --- internals ----------------------------------------------------------------------------

    def _require(self, key: ModelKey) -> _TritonModel:
        model = self._models.get(key)
        if model is None:
            raise ModelNotFound(f"model {key} is not loaded in Triton", {"model": key.name, "version": key.version})
        return model

    def _lock(self, key: ModelKey) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())

    def _timeout(self, deadline: float | None) -> float:
        timeout = self._triton.timeout_seconds
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DeadlineExceeded("the request deadline passed before Triton was called")
            timeout = min(timeout, remaining)
        return timeout

    def _config_options(self, platform: TritonPlatform) -> TritonConfigOptions:
        warmup = self._settings.warmup
        return TritonConfigOptions(
            platform=platform,
            max_batch_size=self._triton.max_batch_size,
            # adaptive batching: Triton runs whatever is queued as soon as an instance is free
            max_queue_delay_microseconds=(0 if self._settings.batching.adaptive
                                          else self._triton.max_queue_delay_microseconds),
            instance_count=self._triton.instance_count,
            intra_op_threads=self._settings.simple.intra_op_threads,
            warmup_batch_sizes=tuple(warmup.batch_size_list) if warmup.enabled else (),
            warmup_iterations=warmup.iterations,
        )

    async def _prepare_entry(self, version: ModelVersion) -> _TritonModel:
        formats = {artifact.format for artifact in version.metadata.artifacts}
        try:
            platform = choose_platform(self._triton.backend_directory, formats)
        except ValueError as exc:
            raise ModelLoadError(str(exc), {"model": version.name, "version": version.version}) from exc
        artifact = version.artifact((platform.artifact_format,), self._settings.serving_precision.value)
        if artifact is None:  # choose_platform saw the format, so only a precision mismatch gets here
            raise ModelLoadError(f"{version.key} has no {platform.artifact_format} artifact to serve")
        name = entry_name(version.key)
        options = self._config_options(platform)
        config = render_config(name, version.signature, options)
        await asyncio.to_thread(
            write_entry, self.repository, name, self._triton.default_model_version,
            version.artifact_path(artifact), config, platform,
            warmup_files(version.signature) if options.warmup_batch_sizes else None,
        )
        loaded = LoadedModel(
            version=version, backend=self.name, artifact=artifact,
            details={"triton_model": name, "platform": platform.value, "sha256": artifact.sha256},
        )
        return _TritonModel(loaded, name, platform, [spec.name for spec in version.signature.outputs])

    async def _load_into_triton(self, name: str) -> None:
        timeout = self._triton.load_timeout_seconds
        try:
            await self._connection.load_model(name, timeout)
            ready = await self._connection.is_model_ready(name, self._triton.timeout_seconds)
        except TritonRequestFailed as exc:  # Triton answered: the entry is bad (unreachable Triton propagates)
            raise ModelLoadError(f"Triton could not load {name}: {exc.message}", exc.details) from exc
        if not ready:
            raise ModelLoadError(f"Triton loaded {name} but reports it not ready")

    async def _reload(self, model: _TritonModel) -> None:
        """Load ``model`` into Triton again unless a concurrent caller already did."""
        async with self._lock(model.loaded.key):
            if self._models.get(model.loaded.key) is not model:
                raise ModelNotFound(f"model {model.loaded.key} was unloaded")
            try:
                if await self._connection.is_model_ready(model.triton_name, self._triton.timeout_seconds):
                    return
            except TritonModelMissing:
                pass
            async with self._leases.locked(model.triton_name):
                if not (self.repository / model.triton_name).is_dir():  # the repository was wiped too
                    await self._prepare_entry(model.loaded.version)
                await while_restarting(lambda: self._load_into_triton(model.triton_name),
                                       self._triton.timeout_seconds, f"reloading {model.triton_name} into Triton")
            log.info("reloaded %s into Triton", model.triton_name)
