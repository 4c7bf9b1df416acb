"""TorchServe backend: builds a .mar per registry version, registers it through the management API,
and predicts through the inference API. TorchServe batches requests server-side (batch_size,
max_batch_delay); the packed handler merges the requests of a batch into one model run.

Only .mar files this adapter built from the registry are registered (by file name inside the model
store), never URLs and never anything from a request. When TorchServe restarts and forgets a model,
the next predict re-registers it from the kept ModelVersion and retries once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from ..errors import BackendTimeout, BackendUnavailable, Conflict, DeadlineExceeded, ModelLoadError, ModelNotFound
from ..packaging.torchserve_mar import build_mar, mar_path, servable_artifact, served_model_name
from ..registry import ModelKey, ModelVersion
from ..settings import Settings
from ..types import RequestContext
from .base import AdapterHealth, LoadedModel, ServingAdapter
from .leases import BackendLeases, lease_root
from ..execution.single_flight import SingleFlight
from .recovery import while_restarting
from .torchserve_client import TorchServeClient

logger = logging.getLogger(__name__)


class TorchServeAdapter(ServingAdapter):
    name = "torchserve"

    def __init__(self, settings: Settings):
        self.settings = settings
        self.config = settings.torchserve
        self.model_store: Path = (self.config.model_store or settings.model_store / ".torchserve-store").resolve()
        self.client = TorchServeClient(self.config)
        self._loaded: dict[ModelKey, LoadedModel] = {}
        self._locks: dict[ModelKey, asyncio.Lock] = {}
        self._max_server_batch: dict[ModelKey, int] = {}
        self._reregistrations = SingleFlight("registration in TorchServe")
        self._leases = BackendLeases(lease_root(settings, "torchserve", self.model_store),
                                     settings.backend_lease_ttl_seconds)

    def _lock(self, key: ModelKey) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())

    # --- lifecycle -------------------------------------------------------------------------
    async def load(self, version: ModelVersion) -> LoadedModel:
        key = version.key
        async with self._lock(key):
            if key in self._loaded:
                return self._loaded[key]
            artifact = servable_artifact(version, self.settings.serving_precision.value)
            served = served_model_name(key)
            async with self._leases.locked(served):  # other workers may register or drop the same model
                await self._register(version)
                self._leases.acquire(served)
            model = LoadedModel(version=version, backend=self.name, artifact=artifact,
                                details={"served_name": served_model_name(key)})
            self._loaded[key] = model
            return model

    async def _register(self, version: ModelVersion) -> None:
        """Build the .mar (if missing), register it, scale workers, wait for a READY worker."""
        key, served = version.key, served_model_name(version.key)
        archive = mar_path(self.model_store, key)
        if not archive.is_file():
            await asyncio.to_thread(build_mar, version, self.model_store,
                                    precision=self.settings.serving_precision.value, warmup=self.settings.warmup)
        logger.info("registering %s in TorchServe as %s", key, served)
        params = {
            "url": archive.name, "model_name": served,
            "batch_size": self.config.batch_size, "max_batch_delay": self.config.max_batch_delay,
            "initial_workers": self.config.default_workers, "synchronous": "true",
        }
        timeout = self.config.register_timeout_seconds
        try:
            await self.client.checked("POST", "management", "/models", what=f"registering {key}",
                                      timeout=timeout, params=params)
        except Conflict:
            logger.info("%s was already registered in TorchServe; reusing it", served)
        except ModelNotFound as exc:
            raise ModelLoadError(f"TorchServe cannot find {archive.name} in its model store; TORCHSERVE_MODEL_STORE "
                                 f"must be the directory TorchServe was started with ({self.model_store})",
                                 exc.details) from exc
        logger.info("scaling %s to %d..%d workers", served, self.config.default_workers, self.config.max_workers)
        await self.client.checked(
            "PUT", "management", f"/models/{served}", what=f"scaling {key}", timeout=timeout,
            params={"min_worker": self.config.default_workers, "max_worker": self.config.max_workers,
                    "synchronous": "true"})
        await self._wait_ready(key, timeout)

    async def _wait_ready(self, key: ModelKey, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            description = await self._describe_remote(key)
            workers = description.get("workers", [])
            if any(w.get("status") == "READY" for w in workers):
                return
            if time.monotonic() > deadline:
                raise ModelLoadError(f"{key} has no READY TorchServe worker after {timeout:.0f}s",
                                     {"workers": workers})
            await asyncio.sleep(0.2)

    async def unload(self, key: ModelKey) -> None:
        async with self._lock(key):
            if self._loaded.pop(key, None) is None:
                return
            self._max_server_batch.pop(key, None)
            served = served_model_name(key)
            async with self._leases.locked(served):
                if not self._leases.release(served):
                    logger.info("released %s; TorchServe keeps it for the other workers holding it", key)
                    return
                try:
                    await self.client.checked("DELETE", "management", f"/models/{served}",
                                              what=f"unregistering {key}", timeout=self.config.register_timeout_seconds)
                except ModelNotFound:
                    pass  # TorchServe restarted and never knew it: nothing to release there
                except BackendUnavailable as exc:
                    # A TorchServe that is down holds no model (snapshots are off), so there is nothing to undo.
                    logger.warning("could not unregister %s from TorchServe (%s); removing it locally", key,
                                   exc.message)
                mar_path(self.model_store, key).unlink(missing_ok=True)
            logger.info("unloaded %s", key)

    def loaded(self) -> list[LoadedModel]:
        return list(self._loaded.values())

    async def close(self) -> None:
        self._reregistrations.cancel_all()
        try:
            await super().close()
        finally:
            self._leases.close()
            await self.client.close()

    # --- inference -------------------------------------------------------------------------
    async def predict(
        self, key: ModelKey, inputs: dict[str, np.ndarray], *, deadline: float | None = None,
        context: RequestContext | None = None,
    ) -> dict[str, np.ndarray]:
        model = self._loaded.get(key)
        if model is None:
            raise ModelNotFound(f"{key} is not loaded in the TorchServe adapter", {"model": key.name, "version": key.version})
        body = orjson.dumps({"inputs": {name: np.ascontiguousarray(array) for name, array in inputs.items()}},
                           option=orjson.OPT_SERIALIZE_NUMPY)
        try:
            answer = await self._infer(key, body, deadline)
        except ModelNotFound:
            # Loaded here but unknown to TorchServe: it restarted. Register again, retry once.
            # Shared and shielded: an expiring request deadline must not cancel the registration.
            await self._reregistrations.run(model.key, lambda: self._reregister(model))
            answer = await self._infer(key, body, deadline)
        return self._decode(model, answer)

    async def _infer(self, key: ModelKey, body: bytes, deadline: float | None) -> bytes:
        timeout = self.config.timeout_seconds
        deadline_binds = False
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DeadlineExceeded(f"deadline passed before {key} was sent to TorchServe")
            deadline_binds = remaining < timeout
            timeout = min(timeout, remaining)
        try:
            return await self.client.checked("POST", "inference", f"/predictions/{served_model_name(key)}",
                                             what=f"predict on {key}", timeout=timeout, data=body)
        except DeadlineExceeded as exc:
            if deadline_binds and exc.code == "backend_timeout":
                raise DeadlineExceeded(f"deadline passed while TorchServe ran {key}") from exc
            raise

    async def _reregister(self, model: LoadedModel) -> None:
        key = model.key
        async with self._lock(key):
            if key not in self._loaded:
                raise ModelNotFound(f"{key} was unloaded", {"model": key.name, "version": key.version})
            if await self._known_remotely(key):
                return  # another request re-registered it meanwhile
            logger.warning("TorchServe no longer knows %s (restarted?); registering it again", key)
            async with self._leases.locked(served_model_name(key)):
                await while_restarting(lambda: self._register(model.version), self.config.timeout_seconds,
                                       f"registering {key} in TorchServe again")

    async def _known_remotely(self, key: ModelKey) -> bool:
        try:
            await self._describe_remote(key)
        except ModelNotFound:
            return False
        return True

    def _decode(self, model: LoadedModel, answer: bytes) -> dict[str, np.ndarray]:
        try:
            document = orjson.loads(answer)
            outputs = document["outputs"]
            batch = document.get("batch", {})
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise BackendUnavailable(f"TorchServe returned an unreadable answer for {model.key}",
                                     {"body": answer[:200].decode("utf-8", "replace")}) from exc
        requests = int(batch.get("requests", 1))
        if requests > self._max_server_batch.get(model.key, 0):
            self._max_server_batch[model.key] = requests
        result: dict[str, np.ndarray] = {}
        for spec in model.version.signature.outputs:
            if spec.name not in outputs:
                raise BackendUnavailable(f"TorchServe's answer for {model.key} lacks output {spec.name!r}",
                                         {"outputs": sorted(outputs)})
            result[spec.name] = np.asarray(outputs[spec.name], dtype=spec.dtype)
        return result

    # --- introspection ---------------------------------------------------------------------
    async def health(self) -> AdapterHealth:
        """TorchServe answers (management API, see TorchServeClient.alive) and knows every model of this
        adapter, with a READY worker.

        A model TorchServe lost (it restarted) is registered again in the background, so readiness
        comes back without waiting for a request to find the gap.
        """
        extra = {"inference_url": self.client.inference_url, "models": len(self._loaded)}
        healthy, detail = await self.client.alive()
        if not healthy:
            return AdapterHealth(False, self.name, detail, extra)
        lost, not_ready = [], []
        try:
            for model in list(self._loaded.values()):
                try:
                    remote = await self._describe_remote(model.key, timeout=self.config.health_timeout_seconds)
                except ModelNotFound:
                    if model.key in self._loaded:  # not merely unloaded by this adapter meanwhile
                        lost.append(model)
                    continue
                if not any(w.get("status") == "READY" for w in remote.get("workers", [])):
                    not_ready.append(served_model_name(model.key))
        except (BackendUnavailable, BackendTimeout) as exc:
            return AdapterHealth(False, self.name, exc.message, extra)
        for model in lost:
            self._reregistrations.start(model.key, lambda model=model: self._reregister(model))
        if lost:
            names = ", ".join(served_model_name(m.key) for m in lost)
            return AdapterHealth(False, self.name, f"registering models TorchServe lost: {names}", extra)
        if not_ready:
            return AdapterHealth(False, self.name, f"no READY TorchServe worker for {', '.join(not_ready)}", extra)
        return AdapterHealth(True, self.name, detail, extra)

    async def _describe_remote(self, key: ModelKey, timeout: float | None = None) -> dict[str, Any]:
        body = await self.client.checked("GET", "management", f"/models/{served_model_name(key)}",
                                         what=f"describing {key}", timeout=timeout or self.config.timeout_seconds)
        document = orjson.loads(body)
        return document[0] if isinstance(document, list) and document else document

    async def describe(self, key: ModelKey) -> dict[str, Any]:
        if key not in self._loaded:
            raise ModelNotFound(f"{key} is not loaded in the TorchServe adapter", {"model": key.name, "version": key.version})
        remote = await self._describe_remote(key)
        return {
            "backend": self.name,
            "served_name": served_model_name(key),
            "status": remote.get("modelStatus") or ("READY" if any(
                w.get("status") == "READY" for w in remote.get("workers", [])) else "NOT_READY"),
            "workers": [{"id": w.get("id"), "status": w.get("status"), "pid": w.get("pid")}
                        for w in remote.get("workers", [])],
            "min_workers": remote.get("minWorkers"),
            "max_workers": remote.get("maxWorkers"),
            "batch_size": remote.get("batchSize"),
            "max_batch_delay_ms": remote.get("maxBatchDelay"),
            "max_observed_server_batch_requests": self._max_server_batch.get(key, 0),
        }
