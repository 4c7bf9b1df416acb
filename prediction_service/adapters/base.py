"""The serving adapter contract. Every backend implements it and passes tests/contract/.

Numpy arrays in and out, keyed by the signature's tensor names. Adapters receive resolved
``ModelVersion`` objects and never touch the registry's internals.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..registry import ArtifactInfo, ModelKey, ModelVersion
from ..types import RequestContext


@dataclass(frozen=True)
class LoadedModel:
    """A version loaded in a backend, with the provenance every response reports."""

    version: ModelVersion
    backend: str
    artifact: ArtifactInfo
    loaded_at: float = field(default_factory=time.time)
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> ModelKey:
        return self.version.key

    @property
    def precision(self) -> str:
        return self.artifact.precision


@dataclass(frozen=True)
class QueueStats:
    """A loaded model's batching queue, as the adapter counts it locally (cumulative counters)."""

    queue_depth: int
    batches: int
    requests: int
    mean_batch_rows: float
    shed: int
    """Requests refused because the queue was full."""
    expired: int
    """Requests dropped because their deadline passed while queued."""
    depth_by_priority: tuple[int, ...] = ()
    """Requests waiting per priority lane, priority 1 first (``queue_depth`` is their sum)."""
    shed_by_priority: tuple[int, ...] = ()
    """Requests shed per priority lane, priority 1 first (``shed`` is their sum)."""


BatchObserver = Callable[[str, int], None]
"""Called with (model name, rows) for every batch a model runs."""
UnloadObserver = Callable[[ModelKey, str], None]
"""Called with (key, reason) when the adapter unloads a version on its own (cache bound, idle timeout)."""


@dataclass(frozen=True)
class AdapterHealth:
    healthy: bool
    backend: str
    detail: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


class ServingAdapter(ABC):
    """Loads registry versions into a backend and runs predictions on them."""

    name: str = "abstract"
    batch_observer: BatchObserver | None = None
    """Set by the service to feed the batch-size histogram; adapters that batch locally call it."""
    unload_observer: UnloadObserver | None = None
    """Set by the service so unloads the adapter decides itself reach the registry's event log."""

    @abstractmethod
    async def load(self, version: ModelVersion) -> LoadedModel:
        """Make ``version`` servable. Idempotent: loading a loaded key returns the existing handle."""

    @abstractmethod
    async def unload(self, key: ModelKey) -> None:
        """Release ``key``. Unloading an unknown key is a no-op."""

    traces_runs: bool = False
    """The adapter records the queue wait and model run of traced requests itself (the in-process batcher);
    for others the servable traces the backend call as the model run."""

    enforces_deadlines: bool = False
    """The adapter fails a request at its deadline itself (the in-process batcher, one timer for all its
    requests); for others the servable holds a timer per request."""

    @abstractmethod
    async def predict(
        self, key: ModelKey, inputs: dict[str, np.ndarray], *, deadline: float | None = None,
        context: RequestContext | None = None,
    ) -> dict[str, np.ndarray]:
        """Run the model. ``deadline`` is a ``time.monotonic()`` instant after which the work is dropped.
        ``context``: the request's, for its priority lane and trace (adapters that queue locally use them).

        Raises ModelNotFound when ``key`` is not loaded, BackendUnavailable / BackendTimeout /
        Overloaded / DeadlineExceeded for backend trouble.
        """

    @abstractmethod
    async def health(self) -> AdapterHealth:
        """Whether the backend can serve right now."""

    @abstractmethod
    def loaded(self) -> list[LoadedModel]:
        """Versions currently loaded."""

    def loaded_model(self, key: ModelKey) -> LoadedModel | None:
        return next((model for model in self.loaded() if model.key == key), None)

    def is_loaded(self, key: ModelKey) -> bool:
        return self.loaded_model(key) is not None

    def memory(self) -> "MemoryUse | None":
        """Memory held per loaded version, where the adapter measures it (in-process adapters); None elsewhere."""
        return None

    def pin(self, keys: frozenset[ModelKey]) -> None:
        """The versions a stage serves: no cache bound or idle timeout may unload them. Adapters that
        never unload on their own (remote backends) ignore it."""

    def queue_full(self, key: ModelKey) -> bool:
        """Whether a request for ``key`` would be shed by a full local queue whatever its priority (admission
        asks before it reads a body, and so before it knows the priority). Cheap and local; remote backends
        answer False and shed remotely."""
        return False

    def queue_stats(self) -> dict[ModelKey, QueueStats]:
        """Batching statistics of the models this adapter queues locally. Cheap and local: called on every
        metrics scrape, so it never calls a remote backend (whose queues it does not own)."""
        return {}

    async def describe(self, key: ModelKey) -> dict[str, Any]:
        """Backend-side metadata and statistics for a loaded model (shown in GET /v1/models/{name})."""
        return {}

    async def close(self) -> None:
        """Release everything (called at shutdown)."""
        for model in list(self.loaded()):
            await self.unload(model.key)


@dataclass(frozen=True)
class MemoryUse:
    """What the loaded versions hold in memory, measured at load (resident memory the load added, at least
    the artifact's size), against the budget (SIMPLE_CACHE_SIZE_MB; 0: none)."""

    by_version: dict[ModelKey, int]
    budget_bytes: int

    @property
    def total_bytes(self) -> int:
        return sum(self.by_version.values())
