"""What an ensemble may ask of the models it combines: the members' side of the serving layer, and nothing
more. The serving layer implements it (serving/servables.py); the ensemble never sees the data plane, its
admission or its observers, and copies none of their logic (stage lookup, provenance, pre-processing)."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

import numpy as np

from ..types import InferenceResult, Provenance, RequestContext, Selector
from ..registry import ModelVersion
from .triton_path import EnsembleBackend


class MemberGateway(Protocol):
    def declared(self, model: str, version: str | None, stage: str | None) -> ModelVersion:
        """The registered version a member selects (no load): NotFound when there is none."""

    async def load(self, model: str, version: str | None, stage: str | None) -> ModelVersion:
        """The version, loaded in this worker (as a member request would load it)."""

    def ready(self, model: str, version: str | None) -> bool:
        """Whether the version (else production) is loaded here."""

    def check_access(self, model: str, version: str, context: RequestContext) -> None:
        """The version-access rule for a member version the ensemble pins, with the caller's scope."""

    async def infer(self, model: str, selector: Selector, inputs: dict[str, Any],
                    context: RequestContext) -> InferenceResult:
        """One member request, recorded as a prediction of its own."""

    async def preprocess(self, target: ModelVersion, inputs: dict[str, Any]) -> dict[str, np.ndarray]:
        """The member's declared pre-processing and signature validation (heavy work off the event loop)."""

    def serving(self, target: ModelVersion) -> AbstractAsyncContextManager[None]:
        """Holds the version against an unload while a request runs on it."""

    def provenance(self, target: ModelVersion) -> Provenance:
        """What answers for the version here (backend and artifact)."""

    def stage_of(self, target: ModelVersion) -> str | None:
        """The stage the version holds, if any."""

    def routes_experiment(self, model: str, routing_key: str | None) -> bool:
        """Whether an A/B experiment would route this request for ``model``."""

    def native_backend(self) -> EnsembleBackend | None:
        """The backend's own ensemble scheduler, when the serving backend has one."""
