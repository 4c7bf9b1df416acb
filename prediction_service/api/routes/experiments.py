"""A/B experiment management and outcome reporting.

Scopes: creating and stopping experiments changes what production serves, so it needs an admin key;
listing and analysing needs any key. Reporting an outcome (``POST /v1/predictions/{id}/outcome``) needs a
key (401 without one). In an experiment with ``auto_apply`` an outcome is a vote on production, so only a
key of ``outcome`` scope (``API_KEYS="k:outcome"``: the system that reports fills and P&L) or an admin key
may post it: a read key gets 403 even for its own predictions, unless EXPERIMENT_ANONYMOUS_OUTCOMES_AUTO_APPLY
puts such experiments back on the per-prediction rules. Those rules hold in every other experiment: the key
that made the prediction or an outcome key; a prediction made without a key, any read key. Otherwise 403.
An outcome annotates a prediction that was actually served, once (409 after). With no API keys configured
every endpoint is open, this one included.

An experiment created with ``auto_apply`` has its PROMOTE / ROLLBACK decision applied by every worker's
background schedule (EXPERIMENT_AUTO_APPLY_INTERVAL_SECONDS). ``GET /v1/experiments/{id}/analyze`` is
read-scoped and applies such a decision too when it reaches one first: the admin who set auto_apply
authorised exactly that, and whoever analyses first applies it the same way (compare-and-set, once).
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, Request, status
from pydantic import BaseModel, ConfigDict, Field

from ...experiments.models import (Analysis, Experiment, ExperimentSpec, ExperimentStatus, OutcomeRecord,
                                   ShadowRecord)
from ...security.auth import ApiKey, Scope
from ...experiments.service import ExperimentService, OutcomeReporter
from ..body import read_body
from ..deps import get_service, get_settings, require_admin, require_read
from ..model_body import json_body_openapi, parse_model, read_model

router = APIRouter(tags=["experiments"])


class OutcomeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    actual: float = Field(allow_inf_nan=False)
    """The true class index (classification) or value (regression)."""
    pnl: float | None = Field(None, allow_inf_nan=False)
    """Profit and loss of acting on the prediction, when known."""


class StopRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field("stopped by operator", max_length=500)


def _service(request: Request) -> ExperimentService:
    return get_service(request).experiments


# Bodies are read after the key check (model_body.py): a route that declared one would read it first.
@router.post("/v1/experiments", status_code=status.HTTP_201_CREATED, response_model=Experiment,
             dependencies=[Depends(require_admin)], openapi_extra=json_body_openapi(ExperimentSpec))
async def create_experiment(request: Request) -> Experiment:
    spec = await read_model(request, ExperimentSpec, get_settings(request).limits)
    return await asyncio.to_thread(_service(request).create, spec)


@router.get("/v1/experiments", response_model=list[Experiment], dependencies=[Depends(require_read)])
def list_experiments(request: Request, model_name: str | None = None,
                     status: ExperimentStatus | None = None) -> list[Experiment]:
    return _service(request).list(model_name, status)


@router.get("/v1/experiments/{experiment_id}", response_model=Experiment, dependencies=[Depends(require_read)])
def get_experiment(experiment_id: str, request: Request) -> Experiment:
    return _service(request).get(experiment_id)


@router.get("/v1/experiments/{experiment_id}/analyze", response_model=Analysis,
            dependencies=[Depends(require_read)])
async def analyze_experiment(experiment_id: str, request: Request) -> Analysis:
    """Analysis with decision; with auto_apply this may promote or roll back (as any analysis would)."""
    return await _service(request).analyze_answered(experiment_id)


@router.get("/v1/experiments/{experiment_id}/shadow/{request_id}", response_model=ShadowRecord,
            dependencies=[Depends(require_read)])
def shadow_prediction(experiment_id: str, request_id: str, request: Request) -> ShadowRecord:
    """A shadow experiment's challenger answer to the copy of one production request (404 until it has run,
    and for a request that was not copied)."""
    return _service(request).shadow_prediction(experiment_id, request_id)


@router.post("/v1/experiments/{experiment_id}/stop", response_model=Experiment,
             dependencies=[Depends(require_admin)], openapi_extra=json_body_openapi(StopRequest))
async def stop_experiment(experiment_id: str, request: Request) -> Experiment:
    limits = get_settings(request).limits
    raw = await read_body(request, limits)  # the body is optional here
    body = parse_model(StopRequest, raw, limits) if raw else StopRequest()
    return await asyncio.to_thread(_service(request).stop, experiment_id, body.reason)


@router.post("/v1/predictions/{request_id}/outcome", status_code=status.HTTP_201_CREATED,
             response_model=OutcomeRecord, openapi_extra=json_body_openapi(OutcomeRequest))
async def record_outcome(request_id: str, request: Request,
                         key: ApiKey | None = Depends(require_read)) -> OutcomeRecord:
    body = await read_model(request, OutcomeRequest, get_settings(request).limits)
    reporter = None if key is None else OutcomeReporter(key.key_id, any_prediction=key.scope >= Scope.OUTCOME)
    return await _service(request).record_outcome_when_served(request_id, body.actual, body.pnl, reporter)
