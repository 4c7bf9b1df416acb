"""What the data plane dispatches to by name: a model (``ModelServable``) or an ensemble (the ensemble
runner, which reaches its members through ``ModelGateway``). Both answer ``infer``, ``metadata`` and
``ready``; the version-access rule (``VersionAccess``) is the same for both and for every member version
an ensemble pins.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import AbstractAsyncContextManager, nullcontext
from typing import Any, Callable, Protocol

import numpy as np

from ..adapters.base import LoadedModel, ServingAdapter
from ..security.auth import VersionAccess
from ..ensemble import triton_path
from ..errors import DeadlineExceeded, InvalidInput, ModelNotFound, PredictionServiceError
from ..types import (ArmRun, InferenceRequest, InferenceResult, ModelMetadata, PredictionRecord, Provenance,
                     RawInput, RequestContext, Selector, TensorMetadata)
from .model_manager import ModelManager
from .processing import ModelProcessing, TokensInFlight
from .shadow import ShadowJob, ShadowRunner
from ..registry import ModelVersion, validate_name
from ..settings import Settings


class Servable(Protocol):
    async def infer(self, name: str, request: InferenceRequest, context: RequestContext,
                    record: PredictionRecord) -> InferenceResult: ...

    def metadata(self, name: str, version: str | None = None) -> ModelMetadata: ...

    def ready(self, name: str, version: str | None = None) -> bool: ...


class ExperimentRouter(Protocol):
    """experiments.ExperimentService, as serving uses it."""

    def route(self, model_name: str, routing_key: str | None = None) -> Any: ...

    def record_predictions(self, served: list[Any]) -> list[bool]: ...
    """Stores experiments.ServedPrediction records, one transaction for the lot."""


class ModelServable:
    """A registered model: resolve stage/version (with the access rule) -> A/B arm -> declared
    pre-processing and signature validation -> the adapter (batched) -> provenance."""

    def __init__(self, settings: Settings, manager: ModelManager, adapter: ServingAdapter,
                 experiments: ExperimentRouter | None):
        self.settings = settings
        self.manager = manager
        self.adapter = adapter
        self.experiments = experiments
        self.access = VersionAccess(settings.security)
        self.tokens_in_flight = TokensInFlight(settings.limits.max_tokens_in_flight)
        self.shadow: ShadowRunner | None = None
        """Runs the copies of requests a shadow experiment sends to its challenger (set by the service)."""

    async def infer(self, name: str, request: InferenceRequest, context: RequestContext,
                    record: PredictionRecord) -> InferenceResult:
        validate_name(name)
        selector = request.selector
        version, stage, assignment = selector.version, selector.stage, None
        if version is not None:
            self.check_access(name, version, context)
        if version is None and stage is None and self.experiments is not None:
            assignment = self.experiments.route(name, selector.routing_key)
            if assignment is not None:
                version = assignment.version
        target = await self.manager.resolve(name, version=version, stage=stage,
                                            caller_chose=selector.version is not None)
        # A version asked for explicitly (or by an experiment) still reports the stage it holds, if any.
        served_stage = target.stage if target.stage is not None else self.stage_of(target)
        if assignment is not None:
            record.arm, record.experiment_id = assignment.arm.value, assignment.experiment_id
        record.version, record.stage = target.version, served_stage
        if request.outputs:
            _check_outputs(name, target, request.outputs)
        processing = ModelProcessing(target, self.settings.limits)
        processing.check_steps(request.n_steps)
        arrays = await _preprocess(processing, request.inputs)
        record.inputs = arrays
        if assignment is not None:  # the arm's error rate counts backend failures too
            record.arm_run = ArmRun(assignment, target.signature.outputs[0].name)
        started = time.perf_counter()
        tokens = processing.tokens  # long texts queue model time: bounded per worker
        with self.tokens_in_flight.hold(tokens) if tokens else nullcontext():
            async with self.manager.serving(target):
                if target.signature.rollout is not None:
                    outputs = await self._roll_out(target, arrays, context, request.n_steps)
                else:
                    outputs = await self._run(target, arrays, context)
        outputs = processing.first_steps(outputs, request.n_steps)
        elapsed_ms = (time.perf_counter() - started) * 1000.0
        record.outputs = outputs
        if assignment is not None and assignment.shadow_version is not None and self.shadow is not None:
            output = target.signature.outputs[0].name
            self.shadow.submit(ShadowJob(name, assignment, context.request_id, arrays, output, outputs.get(output),
                                         request.n_steps))
        provenance = self.provenance(target)
        record.backend = provenance.backend
        return InferenceResult(
            model=name, version=target.version, stage=served_stage,
            arm=assignment.arm.value if assignment else None,
            experiment_id=assignment.experiment_id if assignment else None,
            request_id=context.request_id, inference_time_ms=round(elapsed_ms, 3), outputs=outputs,
            provenance=provenance, processing=processing,
        )

    async def run_version(self, name: str, version: str, arrays: dict[str, np.ndarray], context: RequestContext,
                          n_steps: int | None = None) -> dict[str, np.ndarray]:
        """Pre-processed ``arrays`` on ``version`` (loaded if need be), as ``infer`` runs them: a shadow copy."""
        target = await self.manager.resolve(name, version=version)
        processing = ModelProcessing(target, self.settings.limits)
        async with self.manager.serving(target):
            if target.signature.rollout is not None:
                outputs = await self._roll_out(target, arrays, context, n_steps)
            else:
                outputs = await self._run(target, arrays, context)
        return processing.first_steps(outputs, n_steps)

    async def _run(self, target: ModelVersion, arrays: dict[str, np.ndarray], context: RequestContext):
        """The adapter's run, in the request's priority lane. A traced request's queue wait and model run are
        the in-process batcher's spans; a remote backend's call is traced here as the model run."""
        if context.trace is None or self.adapter.traces_runs:
            return await self._predict(target, arrays, context)
        with context.trace.span("model run", **{"prediction.backend": self.adapter.name}):
            return await self._predict(target, arrays, context)

    async def _roll_out(self, target: ModelVersion, arrays: dict[str, np.ndarray], context: RequestContext,
                        n_steps: int | None) -> dict[str, np.ndarray]:
        """A one-step model run ``n_steps`` times (its ``max_steps`` when not asked), each prediction appended to
        the window as its newest step and the oldest dropped: ``[batch, n_steps]``. Every run is an ordinary
        batched run under the request's deadline."""
        signature = target.signature
        assert signature.rollout is not None
        name, output = signature.rollout.input, signature.outputs[0].name
        window = arrays[name]
        steps = []
        for _ in range(n_steps or signature.rollout.max_steps):
            value = (await self._run(target, {name: window}, context))[output].reshape(len(window), 1)
            steps.append(value)
            newest = value.astype(window.dtype, copy=False).reshape(len(window), 1, *window.shape[2:])
            window = np.concatenate([window[:, 1:], newest], axis=1)
        return {output: np.concatenate(steps, axis=1)}

    async def _predict(self, target: ModelVersion, arrays: dict[str, np.ndarray], context: RequestContext):
        deadline = context.deadline
        for attempt in (1, 2):
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise DeadlineExceeded("request deadline passed before the model ran")
            try:
                if remaining is None or self.adapter.enforces_deadlines:
                    return await self.adapter.predict(target.key, arrays, deadline=deadline, context=context)
                async with asyncio.timeout(remaining):
                    return await self.adapter.predict(target.key, arrays, deadline=deadline, context=context)
            except ModelNotFound:
                if attempt == 2:
                    raise
                await self.manager.ensure_loaded(target)  # evicted or unloaded between resolve and run
            except TimeoutError as exc:
                raise DeadlineExceeded("request deadline exceeded while the model ran") from exc
        raise AssertionError("unreachable")

    def check_access(self, name: str, version: str, context: RequestContext) -> None:
        if not self.access.enabled:
            return
        reader = self.manager.reader
        unstaged = (reader.get(name, version).metadata.status == "archived"
                    or version not in reader.stages(name).values())
        what = "a version no stage serves" if unstaged else "an explicit version"
        self.access.check(what, unstaged=unstaged, context=context)

    def stage_of(self, version: ModelVersion) -> str | None:
        # the stages the model manager serves first (in memory, refreshed with every stage poll): an
        # experiment's champion is production's version; the registry's links for any other version
        served = self.manager.routes(version.name)
        stage = next((stage for stage, v in served.items() if v == version.version), None)
        if stage is not None:
            return stage
        stages = self.manager.reader.stages_cached(version.name)
        return next((stage for stage, v in stages.items() if v == version.version), None)

    def provenance(self, target: ModelVersion) -> Provenance:
        loaded = self.adapter.loaded_model(target.key)
        return _provenance(self.adapter.name, loaded)

    # ---- metadata and readiness ---------------------------------------------------------------------

    def model_version(self, name: str, version: str | None = None) -> ModelVersion:
        """``version``, or what production serves, or the newest version when nothing is in production."""
        validate_name(name)
        reader = self.manager.reader
        if version is not None:
            return reader.get(name, version)
        served = self.manager.routes(name).get("production") or reader.stages(name).get("production")
        if served is not None:
            return reader.get(name, served)
        versions = reader.versions(name)
        if not versions:
            raise ModelNotFound(f"model {name!r} has no versions", {"model": name})
        return versions[-1]

    def metadata(self, name: str, version: str | None = None) -> ModelMetadata:
        target = self.model_version(name, version)
        signature = target.signature
        loaded = self.adapter.loaded_model(target.key)
        artifact = loaded.artifact if loaded is not None else _preferred_artifact(target)
        text = signature.text
        return ModelMetadata(
            name=name, version=target.version,
            versions=tuple(v.version for v in self.manager.reader.versions(name)),
            stage=self.stage_of(target), platform=artifact.format if artifact else "",
            backend=loaded.backend if loaded is not None else self.adapter.name,
            inputs=tuple(TensorMetadata.of(spec) for spec in signature.inputs),
            outputs=tuple(TensorMetadata.of(spec) for spec in signature.outputs),
            max_batch_size=signature.max_batch_size, task=signature.task,
            labels=tuple(signature.labels) if signature.labels else None,
            text_input=TensorMetadata(RawInput.TEXT, "object", (-1,)) if text is not None else None,
            loaded=loaded is not None,
            bars_input=TensorMetadata(RawInput.BARS, "float64", (-1, -1, 5)) if signature.bars is not None else None,
        )

    def ready(self, name: str, version: str | None = None) -> bool:
        """Whether a request for ``name`` (at ``version``, else production) would run without a load."""
        return self.adapter.is_loaded(self.model_version(name, version).key)


Settle = Callable[[PredictionRecord], Any]
"""Records a finished prediction with the observers and its A/B arm (awaitable)."""


class ModelGateway:
    """``ensemble.gateway.MemberGateway`` over the model servable: what an ensemble may ask of its members.
    Each member request is recorded as a prediction of its own (``settle``)."""

    def __init__(self, models: ModelServable, settle: Settle):
        self.models = models
        self._settle = settle

    def declared(self, model: str, version: str | None, stage: str | None) -> ModelVersion:
        return self.models.manager.reader.resolve(model, version, stage)

    async def load(self, model: str, version: str | None, stage: str | None) -> ModelVersion:
        return await self.models.manager.resolve(model, version=version, stage=stage)

    def ready(self, model: str, version: str | None) -> bool:
        return self.models.ready(model, version)

    def check_access(self, model: str, version: str, context: RequestContext) -> None:
        self.models.check_access(model, version, context)

    async def infer(self, model: str, selector: Selector, inputs: dict[str, Any],
                    context: RequestContext) -> InferenceResult:
        record = PredictionRecord(context, model, None, selector.stage, None, None, 0.0, 200)
        started = time.perf_counter()
        try:
            return await self.models.infer(model, InferenceRequest(selector, inputs), context, record)
        except BaseException as exc:
            record.status, record.error_code = status_of(exc)
            raise
        finally:
            record.latency_ms = (time.perf_counter() - started) * 1000.0
            await self._settle(record)

    async def preprocess(self, target: ModelVersion, inputs: dict[str, Any]) -> dict[str, np.ndarray]:
        return await _preprocess(ModelProcessing(target, self.models.settings.limits), inputs)

    def serving(self, target: ModelVersion) -> AbstractAsyncContextManager[None]:
        return self.models.manager.serving(target)

    def provenance(self, target: ModelVersion) -> Provenance:
        return self.models.provenance(target)

    def stage_of(self, target: ModelVersion) -> str | None:
        return self.models.stage_of(target)

    def routes_experiment(self, model: str, routing_key: str | None) -> bool:
        router = self.models.experiments
        return router is not None and router.route(model, routing_key) is not None

    def native_backend(self) -> triton_path.EnsembleBackend | None:
        return triton_path.native(self.models.adapter)


CLIENT_CLOSED_REQUEST = 499
"""Status recorded for a request its caller cancelled (nginx's convention; never sent)."""


def status_of(error: BaseException) -> tuple[int, str]:
    """The status and error code a failed request is recorded with."""
    if isinstance(error, PredictionServiceError):
        return int(error.status), error.code
    if isinstance(error, asyncio.CancelledError):  # the caller went away (disconnect, gRPC cancellation)
        return CLIENT_CLOSED_REQUEST, "cancelled"
    return 500, "internal_error"


async def _preprocess(processing: ModelProcessing, inputs: dict[str, Any]) -> dict[str, np.ndarray]:
    if processing.runs_off_loop(inputs):  # tokenizing texts, bar features: CPU work, off the event loop
        return await asyncio.to_thread(processing.preprocess, inputs)
    return processing.preprocess(inputs)


def _check_outputs(name: str, target: ModelVersion, requested: tuple[str, ...]) -> None:
    """Outputs the caller asked for exist, before the model runs for nothing."""
    names = [spec.name for spec in target.signature.outputs]
    unknown = [output for output in requested if output not in names]
    if unknown:
        raise InvalidInput(f"unknown output(s) {unknown} for model {name!r}; it has {sorted(names)}",
                           {"unknown": unknown, "outputs": sorted(names)})


def _preferred_artifact(version: ModelVersion):
    artifacts = version.metadata.artifacts
    return artifacts[0] if artifacts else None


def _provenance(backend: str, loaded: LoadedModel | None) -> Provenance:
    if loaded is None:
        return Provenance(backend, "", "", "", "")
    artifact = loaded.artifact
    return Provenance(loaded.backend, artifact.file, artifact.format, artifact.precision, artifact.sha256)
