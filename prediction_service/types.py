"""The typed objects every front door and observer shares: what a request asks for and what it got.

No FastAPI, no protobuf: the REST v1 codec, the Open Inference Protocol codecs (REST and gRPC), the
data plane and the observers (metrics, audit log, experiments) all import from here, so none of them
has to import another to learn a type.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import cached_property
from enum import IntEnum, StrEnum
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from .request_ids import new_request_id

if TYPE_CHECKING:
    from .signature import TensorSpec

MAX_DEADLINE_MS = 600_000
"""The longest deadline any caller may ask for (admin keys); other scopes are capped lower (serving/deadline.py)."""

MAX_PRIORITY_LEVELS = 8
"""The most priority levels a server may have (BATCH_PRIORITY_LEVELS): it bounds the ``priority`` label of the
queue metrics. As in Triton, 1 is the highest priority; a request's 0 means "the default"."""


MAX_N_STEPS = 100_000
"""The largest ``n_steps`` a door decodes; what a model accepts is its own horizon (checked when it serves)."""


class RawInput(StrEnum):
    """The inputs a door may hand over instead of the model's own tensors; the model's processing turns
    them into tensors (serving/processing.py). A model input of the same name wins: then it is a tensor."""

    TEXT = "text"
    """Strings, one per row, for text models: the server tokenizes them."""
    BARS = "bars"
    """Raw OHLCV ([batch, n_bars, 5] or one [n_bars, 5] window) for models declaring a bars step: the server
    turns them into the model's tensor (preprocessing/bars.py)."""
    UNNAMED = ""
    """A tensor the caller did not name (bare rows): it feeds a single-input model."""


class Scope(IntEnum):
    """What an API key may do; each scope includes the ones below it."""

    READ = 1
    OUTCOME = 2
    """read, and outcomes for any prediction (others post outcomes only for their own predictions)."""
    ADMIN = 3


class Predictions(Protocol):
    """A model's post-processing: raw output tensors to per-row predictions."""

    def predictions(self, outputs: dict[str, np.ndarray]) -> list[Any]: ...


@dataclass(frozen=True)
class Selector:
    """Which version serves: an exact ``version`` wins over a ``stage``; with neither, production, or the
    arm an A/B experiment on the model picks (sticky by ``routing_key`` when given)."""

    version: str | None = None
    stage: str | None = None
    routing_key: str | None = None


@dataclass(frozen=True)
class InferenceRequest:
    """A request as a door decoded it: what to run, on what, and what to send back."""

    selector: Selector
    inputs: dict[str, Any]
    outputs: tuple[str, ...] | None = None
    """Output names the caller asked for (None: all); checked against the signature before the model runs."""
    budget_ms: float | None = None
    """The deadline budget the caller asked for (header, gRPC deadline); None: the server default."""
    timeout_s: float | None = None
    """The Open Inference Protocol's ``timeout`` parameter: it can only shorten the deadline."""
    priority: int = 0
    """The priority the caller asked for (OIP ``priority`` parameter, /v1 ``priority``): 1 is the highest; 0 asks
    for the default (its API key's, else the server's). Checked against BATCH_PRIORITY_LEVELS by the pipeline."""
    n_steps: int | None = None
    """Steps ahead a forecaster's answer keeps (/v1 ``n_steps``, OIP ``n_steps`` parameter): the first ``n_steps``
    of the horizon its signature declares; more than the horizon, or a model without one, is 422. None: all."""


class Trace(Protocol):
    """A request's trace as the pipeline, the servables and the batcher use it (monitoring/tracing.py's
    RequestTrace). Only present when tracing is on."""

    @property
    def trace_id(self) -> str | None: ...

    @property
    def traceresponse(self) -> str | None: ...

    def begin(self, model: str, request_id: str, priority: int) -> None: ...

    def span(self, name: str, **attributes: Any) -> AbstractContextManager[Any]: ...

    def queued(self, started_ns: int, ended_ns: int, priority: int, run: Any) -> None: ...

    def model_run(self, model: str, traces: Sequence["Trace"], rows: int) -> Any:
        """The span of one batch's model run (``end()`` it), or None when no request in it is sampled."""

    def run_failed(self, run: Any, error: BaseException) -> None: ...

    def finish(self, status: int, error_code: str | None, version: str | None, stage: str | None,
               priority: int) -> None: ...


@dataclass
class RequestContext:
    request_id: str = field(default_factory=new_request_id)
    """A UUIDv7 as 32 hex digits: time-ordered, so the audit log's request-id index grows at its edge."""
    deadline: float | None = None
    """time.monotonic() instant after which the work is dropped."""
    received_at: float = field(default_factory=time.time)
    api_key_id: str | None = None
    scope: Scope | None = None
    """Scope of the caller's API key; None when the caller presented none (or keys are off)."""
    protocol: str = "v1"
    """Front door that took the request: v1, oip-rest or oip-grpc (metrics and audit label)."""
    priority: int = 1
    """The lane the request queues in (1 is the highest): the API key's default priority, else the server's,
    until the pipeline applies the one the request asked for."""
    trace: "Trace | None" = None
    """The request's trace (monitoring/tracing.py) when tracing is on; None otherwise, and then nothing on the
    request path does any tracing work (every hook is a None check)."""


@dataclass(frozen=True)
class Provenance:
    """What produced a prediction, down to the artifact's bytes."""

    backend: str
    artifact: str
    format: str
    precision: str
    sha256: str

    def as_dict(self) -> dict[str, str]:
        return {"backend": self.backend, "artifact": self.artifact, "format": self.format,
                "precision": self.precision, "sha256": self.sha256}


@dataclass
class InferenceResult:
    model: str
    version: str
    stage: str | None
    arm: str | None
    experiment_id: str | None
    request_id: str
    inference_time_ms: float
    outputs: dict[str, np.ndarray]
    provenance: Provenance
    processing: Predictions

    @cached_property
    def predictions(self) -> list[Any]:
        """Per row: the value (regression) or {label, scores} (classification); shaped on demand by the
        model's post-processing, so protocols that send raw tensors never pay for it."""
        return self.processing.predictions(self.outputs)


@dataclass(frozen=True)
class TensorMetadata:
    name: str
    dtype: str
    """numpy dtype name (float32, int64, bool, object for text)."""
    shape: tuple[int, ...]
    """Batch dimension first; -1 = dynamic."""

    @classmethod
    def of(cls, spec: "TensorSpec") -> "TensorMetadata":
        return cls(spec.name, spec.dtype, tuple(spec.shape))


@dataclass(frozen=True)
class ModelMetadata:
    """A model version as every protocol describes it."""

    name: str
    version: str
    versions: tuple[str, ...]
    stage: str | None
    platform: str
    """Artifact format that serves it (onnx, torchscript, pytorch)."""
    backend: str
    inputs: tuple[TensorMetadata, ...]
    outputs: tuple[TensorMetadata, ...]
    max_batch_size: int
    task: str
    labels: tuple[str, ...] | None
    text_input: TensorMetadata | None
    """The string input the server tokenizes, for text models (in addition to the tensor inputs)."""
    loaded: bool
    bars_input: TensorMetadata | None = None
    """The raw OHLCV input the server turns into the model's tensor, for models declaring a bars step."""


@dataclass(frozen=True)
class Readiness:
    ready: bool
    reasons: tuple[str, ...]
    backend: str
    backend_detail: str
    details: dict[str, Any] = field(default_factory=dict)


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
    shed: bool = False
    """Refused by admission (overload) before its body was read: metrics count it; the audit log, which
    records predictions, does not (under overload it would spend the CPU the shedding saves)."""
    arm_run: "ArmRun | None" = None
    """Set once an A/B arm's version is about to run: its prediction (or failure) is recorded for the arm."""


SHADOW_ARM = "shadow"
"""The arm of a shadow copy's record: the challenger's answer to a copy of a production request, stored for
its experiment (the caller got the champion's)."""


@dataclass(frozen=True)
class ArmRun:
    """An A/B experiment's assignment for a request that reached its arm's model."""

    assignment: Any
    """experiments.Assignment (experiment id, arm, version)."""
    output: str
    """The output whose first value the experiment records as the arm's prediction."""


class PredictionObserver(Protocol):
    def observe(self, record: PredictionRecord) -> None: ...


@dataclass(frozen=True)
class RegionStatus:
    """One registered system shared-memory region, as the status calls report it (Triton's fields)."""
    name: str
    key: str
    offset: int
    byte_size: int


@dataclass(frozen=True)
class RepositoryEntry:
    name: str
    version: str
    state: str
    """READY (loaded in this worker) or UNAVAILABLE, as Triton reports them."""
    reason: str
    """The stage or lifecycle status the version holds (production, staging, archived, none), and why it
    is not loaded when its last load failed."""
