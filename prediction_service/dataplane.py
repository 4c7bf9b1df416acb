"""The protocol-agnostic request flow: resolve -> route (A/B) -> validate -> run -> shape the result.

REST routes call ``DataPlane.predict``; a second protocol would be a second thin router over it.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .adapters.base import ServingAdapter
from .errors import (DeadlineExceeded, InvalidInput, ModelNotFound, PredictionServiceError,
                     ServiceUnavailable)
from .model_manager import ModelManager
from .registry import ModelVersion, validate_name
from .schemas import PredictRequest
from .settings import Settings
from .signature import ModelSignature

log = logging.getLogger(__name__)


@dataclass
class RequestContext:
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    deadline: float | None = None
    """time.monotonic() instant after which the work is dropped."""
    received_at: float = field(default_factory=time.time)
    api_key_id: str | None = None


@dataclass
class PredictionRecord:
    """What observers (metrics, audit log, experiments) learn about each prediction, after it is answered."""

    context: RequestContext
    model: str
    version: str | None
    stage: str | None
    arm: str | None
    experiment_id: str | None
    latency_ms: float
    status: int
    error_code: str | None = None
    inputs: dict[str, np.ndarray] | None = None
    outputs: dict[str, np.ndarray] | None = None
    backend: str | None = None


class PredictionObserver(Protocol):
    def observe(self, record: PredictionRecord) -> None: ...


class ExperimentRouter(Protocol):
    """experiments.ExperimentService, as the data plane uses it."""

    def route(self, model_name: str, routing_key: str | None = None) -> Any: ...

    def record_prediction(self, request_id: str, assignment: Any, latency_ms: float, error: bool,
                          prediction: np.ndarray | None = None) -> None: ...


@dataclass
class PredictionResult:
    model: str
    version: str
    stage: str | None
    arm: str | None
    experiment_id: str | None
    request_id: str
    inference_time_ms: float
    outputs: dict[str, np.ndarray]
    predictions: list[Any]
    provenance: dict[str, str]

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model, "version": self.version, "stage": self.stage, "arm": self.arm,
            "experiment_id": self.experiment_id, "request_id": self.request_id,
            "inference_time_ms": self.inference_time_ms, "outputs": self.outputs,
            "predictions": self.predictions, "provenance": self.provenance,
        }


class DataPlane:
    def __init__(self, settings: Settings, manager: ModelManager, adapter: ServingAdapter,
                 experiments: ExperimentRouter | None = None,
                 observers: list[PredictionObserver] | None = None):
        self.settings = settings
        self.manager = manager
        self.adapter = adapter
        self.experiments = experiments
        self.observers: list[PredictionObserver] = list(observers or [])
        self.in_flight = 0

    async def predict(self, name: str, request: PredictRequest, context: RequestContext) -> PredictionResult:
        if self.in_flight >= self.settings.limits.max_in_flight:
            busy = ServiceUnavailable(f"server busy: {self.in_flight} predictions in flight",
                                      {"max_in_flight": self.settings.limits.max_in_flight})
            self._notify(PredictionRecord(context, name, None, request.stage, None, None, 0.0,
                                          int(busy.status), busy.code))
            raise busy
        self.in_flight += 1
        started = time.perf_counter()
        record = PredictionRecord(context, name, None, request.stage, None, None, 0.0, 200)
        try:
            return await self._predict(name, request, context, record, started)
        except PredictionServiceError as exc:
            record.status, record.error_code = int(exc.status), exc.code
            raise
        except Exception:
            record.status, record.error_code = 500, "internal_error"
            raise
        finally:
            self.in_flight -= 1
            record.latency_ms = (time.perf_counter() - started) * 1000.0
            self._notify(record)

    def _notify(self, record: PredictionRecord) -> None:
        for observer in self.observers:
            try:
                observer.observe(record)
            except Exception:  # noqa: BLE001 - observers never fail a prediction
                log.exception("prediction observer failed")

    async def _predict(self, name: str, request: PredictRequest, context: RequestContext,
                       record: PredictionRecord, received: float) -> PredictionResult:
        validate_name(name)
        version, stage, assignment = request.version, request.stage, None
        if version is None and stage is None and self.experiments is not None:
            assignment = self.experiments.route(name, request.routing_key)
            if assignment is not None:
                version = assignment.version
        target = await self.manager.resolve(name, version=version, stage=stage)
        # A version asked for explicitly (or by an experiment) still reports the stage it holds, if any.
        served_stage = target.stage if target.stage is not None else self._stage_of(target)
        if assignment is not None:
            record.arm, record.experiment_id = assignment.arm.value, assignment.experiment_id
        record.version, record.stage = target.version, served_stage
        arrays = self._inputs(target, request)
        record.inputs = arrays
        started = time.perf_counter()
        try:
            async with self.manager.serving(target):
                outputs = await self._run(target, arrays, context.deadline)
        except PredictionServiceError:
            if assignment is not None:  # the arm's error rate counts backend failures too
                await self._record_arm(context, assignment, received, error=True, outputs=None, target=target)
            raise
        elapsed_ms = (time.perf_counter() - started) * 1000.0
        if assignment is not None:
            await self._record_arm(context, assignment, received, error=False, outputs=outputs, target=target)
        record.outputs = outputs
        loaded = self.adapter.loaded_model(target.key)
        provenance = _provenance(self.adapter.name, target, loaded)
        record.backend = provenance["backend"]
        return PredictionResult(
            model=name, version=target.version, stage=served_stage,
            arm=assignment.arm.value if assignment else None,
            experiment_id=assignment.experiment_id if assignment else None,
            request_id=context.request_id, inference_time_ms=round(elapsed_ms, 3), outputs=outputs,
            predictions=_predictions(target.signature, outputs), provenance=provenance,
        )

    async def _run(self, target: ModelVersion, arrays: dict[str, np.ndarray], deadline: float | None):
        for attempt in (1, 2):
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise DeadlineExceeded("request deadline passed before the model ran")
            try:
                async with asyncio.timeout(remaining):
                    return await self.adapter.predict(target.key, arrays, deadline=deadline)
            except ModelNotFound:
                if attempt == 2:
                    raise
                await self.manager.ensure_loaded(target)  # evicted or unloaded between resolve and run
            except TimeoutError as exc:
                raise DeadlineExceeded("request deadline exceeded while the model ran") from exc
        raise AssertionError("unreachable")

    async def _record_arm(self, context: RequestContext, assignment: Any, received: float, *, error: bool,
                          outputs: dict[str, np.ndarray] | None, target: ModelVersion) -> None:
        # Written before the response leaves, so an outcome posted right after always finds its prediction.
        prediction = outputs[target.signature.outputs[0].name] if outputs is not None else None
        latency_ms = (time.perf_counter() - received) * 1000.0
        await asyncio.to_thread(self.experiments.record_prediction, context.request_id, assignment, latency_ms,
                                error, prediction)

    def _stage_of(self, version: ModelVersion) -> str | None:
        stages = self.manager.reader.stages(version.name)
        return next((stage for stage, v in stages.items() if v == version.version), None)

    def _inputs(self, target: ModelVersion, request: PredictRequest) -> dict[str, np.ndarray]:
        signature = target.signature
        max_rows = self.settings.limits.max_batch_rows
        if request.text is not None:
            return signature.validate_inputs(_tokenize(target, request.text, max_rows), max_rows)
        if request.inputs is not None:
            raw = request.inputs
        else:
            rows = [request.instance] if request.instance is not None else request.instances
            if not rows:
                raise InvalidInput("empty batch: instances is empty")
            if len(rows) > max_rows:
                raise InvalidInput(f"{len(rows)} instances exceed the limit of {max_rows}",
                                   {"rows": len(rows), "max_rows": max_rows})
            raw = _stack_instances(signature, rows)
        return signature.validate_inputs(raw, max_rows)


def _stack_instances(signature: ModelSignature, rows: list[Any]) -> dict[str, Any]:
    names = [spec.name for spec in signature.inputs]
    if all(isinstance(row, dict) for row in rows):
        for row in rows:
            if set(row) != set(names):
                raise InvalidInput("instance keys do not match the model's inputs",
                                   {"expected": names, "got": sorted(row)})
        return {name: [row[name] for row in rows] for name in names}
    if any(isinstance(row, dict) for row in rows):
        raise InvalidInput("mix of keyed and bare instances")
    if len(names) != 1:
        raise InvalidInput(f"this model has {len(names)} inputs: give instances as {{name: row}} objects",
                           {"expected": names})
    return {names[0]: rows}


def _tokenize(target: ModelVersion, text: list[str] | str, max_rows: int) -> dict[str, np.ndarray]:
    spec = target.signature.text
    if spec is None:
        raise InvalidInput(f"model {target.name} does not take text; send inputs/instances",
                           {"inputs": [s.name for s in target.signature.inputs]})
    texts = [text] if isinstance(text, str) else text
    if not texts:
        raise InvalidInput("empty batch: text is empty")
    if len(texts) > max_rows:
        raise InvalidInput(f"{len(texts)} texts exceed the limit of {max_rows}", {"rows": len(texts)})
    tokenizer = _tokenizer(target.path / spec.tokenizer)
    ids, mask = tokenizer.encode_batch(texts, spec.max_length, truncate=False)
    arrays = {spec.input_ids: ids}
    if spec.attention_mask:
        arrays[spec.attention_mask] = mask
    return arrays


@lru_cache(maxsize=32)
def _tokenizer(path: Path):
    from .modelzoo.tokenizer import Tokenizer

    return Tokenizer.from_file(path)


def _provenance(backend: str, target: ModelVersion, loaded) -> dict[str, str]:
    artifact = loaded.artifact if loaded is not None else None
    return {
        "backend": loaded.backend if loaded is not None else backend,
        "artifact": artifact.file if artifact else "",
        "format": artifact.format if artifact else "",
        "precision": artifact.precision if artifact else "",
        "sha256": artifact.sha256 if artifact else "",
    }


def _predictions(signature: ModelSignature, outputs: dict[str, np.ndarray]) -> list[Any]:
    first = outputs[signature.outputs[0].name]
    if signature.task == "classification" and signature.labels and first.ndim == 2 \
            and first.shape[1] == len(signature.labels):
        labels = signature.labels
        return [{"label": labels[int(np.argmax(row))],
                 "scores": {label: float(score) for label, score in zip(labels, row)}} for row in first]
    rows = first.reshape(first.shape[0], -1)
    return [float(row[0]) if row.size == 1 else row.tolist() for row in rows]
