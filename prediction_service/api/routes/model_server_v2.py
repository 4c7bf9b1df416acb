"""The model-server-v2 paths as thin aliases over the same request pipeline and management calls:
``POST /api/ml/predict``, ``POST /api/ml/predict/batch``, ``GET /api/ml/models``, ``POST /api/ml/models/reload``,
``POST /api/ml/ab-test/create``, ``GET|POST /api/ml/ab-test/{test_id}/analyze``,
``POST /api/ml/ab-test/{test_id}/stop``, ``GET /api/ml/health`` and ``GET /health``.

Bodies use a model-server-v2 client's field names: ``model_name`` and ``features`` (one example: an object of
input name -> value, ``bars`` and ``text`` included, or a bare row for a single-input model; a list of such
examples for a batch), ``model_version``, ``stage``, ``routing_key``; an A/B test is ``model_name``, ``version_a``
(the production version, champion) and ``version_b`` (the challenger) with ``traffic_split`` (B's share).
Predictions run through ``RequestPipeline.run`` with the v1 codec, as ``/v1/models/{name}/predict`` does: the
same API keys, admission, limits, deadlines (``X-Request-Deadline-Ms``), errors, metrics, audit log and
provenance. The model's name is in the body, so the body is read (under LIMIT_MAX_REQUEST_BYTES and the
parse budget) before admission; the deadline still runs from the request's arrival, and the rest of the body is
decoded in the pipeline (a bad one is a counted, audited 422 of the model it names). A body that names no model
is refused before the pipeline: there is no model to count it under.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timezone
from collections.abc import Callable
from typing import Any, Literal, TypeVar

from fastapi import APIRouter, Depends, Request, status
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ...errors import InvalidInput
from ...experiments.models import Analysis, Arm, Decision, Experiment, ExperimentMode, ExperimentSpec
from ...registry import validate_name
from ...types import InferenceRequest, InferenceResult
from ...v1.codec import decode_predict
from ...v1.schemas import REQUEST_ID_HEADER
from ..body import parse_json, read_body, read_json, require_json
from ..deadline import requested_budget_ms
from ..deps import get_service, open_context, require_admin, require_predict, require_read
from ..model_body import json_body_openapi
from ..responses import FastJSONResponse
from .experiments import StopRequest
from .models import model_summaries

PREFIX = "/api/ml"
NAME_MAX = 128
PRIMARY_METRICS = ("accuracy", "abs_error")
"""An experiment's primary comparison (classification, regression): its p-value is the test's."""
router = APIRouter(tags=["model-server-v2 aliases"])


# ---- bodies ------------------------------------------------------------------------------------


class _Target(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model_name: str = Field(min_length=1, max_length=NAME_MAX, description="The model (or ensemble) to run.")
    model_version: str | None = Field(None, max_length=128, description="Serve this exact version.")
    stage: str | None = Field(None, max_length=32, description="production (default) or staging.")
    routing_key: str | None = Field(None, max_length=256, description="Sticky A/B routing key (a symbol, a user).")
    priority: int | None = Field(None, ge=0, strict=True, description="Queue priority as on /v1: 1 is the "
                                 "highest; 0 or absent: the API key's, else BATCH_DEFAULT_PRIORITY.")
    n_steps: int | None = Field(None, ge=1, strict=True, description="Forecasters, as on /v1: the first n_steps "
                                "steps of the model's horizon; absent: all of them.")

    def v1_body(self, payload: str, features: Any) -> dict[str, Any]:
        """The /v1 predict body this request is: ``features`` as v1's ``instance`` (or ``instances``)."""
        return {payload: features, "version": self.model_version, "stage": self.stage,
                "routing_key": self.routing_key, "priority": self.priority, "n_steps": self.n_steps}


def _example(value: Any) -> Any:
    if not isinstance(value, (dict, list)):
        raise ValueError("an example is an object of input name -> value (bars, text or a tensor row), "
                         "or a bare row for a single-input model")
    return value


class PredictRequest(_Target):
    # typed Any on purpose (as v1's tensors): pydantic would walk every number of a window
    features: Any = Field(description='One example: {"bars": [[o, h, l, c, v], ...]}, {"text": "..."}, '
                          '{"bars": ..., "text": ...} for the price + sentiment ensemble, {input: row}, '
                          "or a bare row for a single-input model.",
                          json_schema_extra={"type": ["object", "array"]})

    @field_validator("features")
    @classmethod
    def _one_example(cls, value: Any) -> Any:
        return _example(value)


class BatchPredictRequest(_Target):
    features: list[Any] = Field(min_length=1, description="Examples, each what /api/ml/predict takes as "
                                "features; they run as one batch (same keys in every example).")

    @field_validator("features")
    @classmethod
    def _examples(cls, value: list[Any]) -> list[Any]:
        for item in value:
            _example(item)
        return value


class ReloadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model_name: str | None = Field(None, min_length=1, max_length=128,
                                   description="The model to reload; none: every registered model.")


class ABTestCreate(BaseModel):
    """An A/B test: ``version_a`` is the production version (champion), ``version_b`` the challenger that gets
    ``traffic_split`` of the traffic. The other fields are ExperimentSpec's (/v1/experiments)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model_name: str = Field(min_length=1, max_length=128)
    version_a: str = Field(min_length=1, max_length=64, description="Champion: the version in production.")
    version_b: str = Field(min_length=1, max_length=64, description="Challenger.")
    traffic_split: float = Field(0.10, gt=0, lt=1, description="Share of traffic routed to version_b.")
    task: Literal["classification", "regression"] = "classification"
    mode: ExperimentMode = ExperimentMode.SEQUENTIAL
    auto_apply: bool = False
    planned_outcomes: int | None = Field(None, ge=4)
    min_samples_per_arm: int | None = Field(None, ge=2)

    def spec(self) -> ExperimentSpec:
        fields = {"model_name": self.model_name, "champion_version": self.version_a,
                  "challenger_version": self.version_b, "traffic_split": self.traffic_split, "task": self.task,
                  "mode": self.mode, "auto_apply": self.auto_apply, "planned_outcomes": self.planned_outcomes,
                  "min_samples_per_arm": self.min_samples_per_arm}
        return _parse(ExperimentSpec, fields)


_Body = TypeVar("_Body", bound=BaseModel)


# ---- predictions -------------------------------------------------------------------------------


@router.post(f"{PREFIX}/predict", summary="model-server-v2: one prediction ({model_name, features})",
             openapi_extra=json_body_openapi(PredictRequest))
async def predict(request: Request, api_key=Depends(require_predict)) -> FastJSONResponse:
    return await _serve(request, api_key, PredictRequest, lambda body: body.v1_body("instance", body.features),
                        _predict_answer)


def _predict_answer(body: PredictRequest, result: InferenceResult) -> FastJSONResponse:
    return _answer(result, _row(result.predictions[0]))


@router.post(f"{PREFIX}/predict/batch", summary="model-server-v2: several examples in one model run "
                                                "({model_name, features: [...]})",
             openapi_extra=json_body_openapi(BatchPredictRequest))
async def predict_batch(request: Request, api_key=Depends(require_predict)) -> FastJSONResponse:
    return await _serve(request, api_key, BatchPredictRequest,
                        lambda body: body.v1_body("instances", body.features), _batch_answer)


def _batch_answer(body: BatchPredictRequest, result: InferenceResult) -> FastJSONResponse:
    predictions = [{"index": index, **_row(prediction)} for index, prediction in enumerate(result.predictions)]
    return _answer(result, {"predictions": predictions, "count": len(predictions)})


async def _serve(request: Request, api_key: Any, schema: type[_Body], v1_body: Callable[[_Body], dict],
                 answer: Callable[[_Body, InferenceResult], FastJSONResponse]) -> FastJSONResponse:
    """Read the JSON body for the model's name, then the /v1 predict flow through the request pipeline: the
    rest of the body is decoded there, so a bad one is counted and audited under the model as on /v1. Only a
    body that names no model (unreadable, not JSON, no ``model_name``) is refused before the pipeline."""
    received = time.monotonic()
    service, context = open_context(request, api_key, "v1")
    limits = service.settings.limits
    raw = await read_json(request, limits, service.parse_budget)
    body: _Body | None = None

    async def decode() -> InferenceRequest:
        nonlocal body
        body = _parse(schema, raw)
        decoded = decode_predict(v1_body(body), limits.max_batch_rows)
        return InferenceRequest(decoded.selector, decoded.inputs, budget_ms=requested_budget_ms(request.headers),
                                priority=decoded.priority, n_steps=decoded.n_steps)

    return await service.pipeline.run(_model_name(schema, raw), context, decode,
                                      lambda result: answer(body, result), received=received)


def _model_name(schema: type[_Body], raw: Any) -> str:
    """The body's ``model_name``; a body without a usable one is refused with the schema's own 422."""
    name = raw.get("model_name") if isinstance(raw, dict) else None
    if isinstance(name, str) and 0 < len(name) <= NAME_MAX:
        return name
    _parse(schema, raw)  # raises the validation error that names model_name
    raise InvalidInput("model_name is required", {"errors": [{"loc": ["model_name"], "msg": "Field required"}]})


def _row(prediction: Any) -> dict[str, Any]:
    """One prediction as model-server-v2 answers it: ``prediction`` and ``confidence`` (None for a regression)."""
    if isinstance(prediction, dict) and "label" in prediction:  # a classifier: the label and its scores
        scores = prediction.get("scores") or {}
        return {"prediction": prediction["label"], "confidence": max(scores.values()) if scores else None,
                "scores": scores}
    if isinstance(prediction, dict) and "prediction" in prediction:  # an ensemble's combined row
        return {"prediction": prediction["prediction"], "confidence": prediction.get("confidence"),
                "components": {k: v for k, v in prediction.items() if k not in ("prediction", "confidence")}}
    return {"prediction": prediction, "confidence": None}


def _answer(result: InferenceResult, fields: dict[str, Any]) -> FastJSONResponse:
    return FastJSONResponse({
        **fields, "model_name": result.model, "model_version": result.version, "stage": result.stage,
        "arm": result.arm, "experiment_id": result.experiment_id, "request_id": result.request_id,
        "inference_time_ms": result.inference_time_ms, "timestamp": datetime.now(timezone.utc).isoformat(),
        "provenance": result.provenance.as_dict(),
    }, headers={REQUEST_ID_HEADER: result.request_id})


# ---- models ------------------------------------------------------------------------------------


@router.get(f"{PREFIX}/models", summary="model-server-v2: registered models and ensembles (as GET /v1/models)",
            dependencies=[Depends(require_read)])
async def models(request: Request) -> FastJSONResponse:
    listed = [{"model_name": summary["name"], "kind": summary.get("kind", "model"), "versions": summary["versions"],
               "stages": summary["stages"], "loaded_versions": summary["loaded_versions"]}
              for summary in model_summaries(request)]
    return FastJSONResponse({"models": listed, "count": len(listed)})


@router.post(f"{PREFIX}/models/reload", summary="model-server-v2: re-read stage links now (one model or all; "
                                                "as POST /v1/models/{name}/reload)",
             dependencies=[Depends(require_admin)], openapi_extra=json_body_openapi(ReloadRequest))
async def reload_models(request: Request) -> FastJSONResponse:
    service = get_service(request)
    body = await _optional_body(request, ReloadRequest)
    if body.model_name is not None:
        validate_name(body.model_name)
    names = [body.model_name] if body.model_name is not None else service.reader.model_names()
    reloaded = []
    for name in names:
        serving = await service.manager.reload(name)
        reloaded.append({"model_name": name, "serving": serving, "load_failures": service.manager.failures(name)})
    return FastJSONResponse({"reloaded": reloaded, "count": len(reloaded)})


# ---- A/B tests ---------------------------------------------------------------------------------


@router.post(f"{PREFIX}/ab-test/create", status_code=status.HTTP_201_CREATED,
             summary="model-server-v2: start an A/B test (as POST /v1/experiments)",
             dependencies=[Depends(require_admin)], openapi_extra=json_body_openapi(ABTestCreate))
async def create_ab_test(request: Request) -> FastJSONResponse:
    limits = get_service(request).settings.limits
    body = _parse(ABTestCreate, await read_json(request, limits))
    experiment = await asyncio.to_thread(get_service(request).experiments.create, body.spec())
    return FastJSONResponse(_test(experiment), status_code=status.HTTP_201_CREATED)


@router.get(f"{PREFIX}/ab-test/{{test_id}}/analyze",
            summary="model-server-v2: analyse an A/B test (as GET /v1/experiments/{id}/analyze)",
            dependencies=[Depends(require_read)])
async def analyze_ab_test(test_id: str, request: Request) -> FastJSONResponse:
    return await _analysis(request, test_id)


@router.post(f"{PREFIX}/ab-test/{{test_id}}/analyze", summary="model-server-v2: the same analysis, as a POST",
             dependencies=[Depends(require_read)])
async def analyze_ab_test_post(test_id: str, request: Request) -> FastJSONResponse:
    return await _analysis(request, test_id)


async def _analysis(request: Request, test_id: str) -> FastJSONResponse:
    analysis: Analysis = await get_service(request).experiments.analyze_answered(test_id)
    primary = next((c for c in analysis.comparisons if c.metric in PRIMARY_METRICS), None)
    winner = {Decision.PROMOTE: "b", Decision.ROLLBACK: "a"}.get(analysis.decision)
    arms = {"a": analysis.arms.get(Arm.CHAMPION), "b": analysis.arms.get(Arm.CHALLENGER)}
    return FastJSONResponse({
        **_test(analysis.experiment), "decision": analysis.decision.value, "winner": winner,
        "applied": analysis.applied, "reasons": analysis.reasons,
        "p_value": primary.p_value if primary is not None else None,
        "arms": {side: arm.model_dump(mode="json") if arm is not None else None for side, arm in arms.items()},
        "comparisons": [c.model_dump(mode="json") for c in analysis.comparisons],
    })


@router.post(f"{PREFIX}/ab-test/{{test_id}}/stop", summary="model-server-v2: stop an A/B test; production keeps "
                                                         "version_a (as POST /v1/experiments/{id}/stop)",
             dependencies=[Depends(require_admin)], openapi_extra=json_body_openapi(StopRequest))
async def stop_ab_test(test_id: str, request: Request) -> FastJSONResponse:
    body = await _optional_body(request, StopRequest)
    experiment = await asyncio.to_thread(get_service(request).experiments.stop, test_id, body.reason)
    return FastJSONResponse(_test(experiment))


def _test(experiment: Experiment) -> dict[str, Any]:
    return {"test_id": experiment.id, "model_name": experiment.model_name, "version_a": experiment.champion_version,
            "version_b": experiment.challenger_version, "traffic_split": experiment.traffic_split,
            "task": experiment.task, "mode": experiment.mode.value, "auto_apply": experiment.auto_apply,
            "status": experiment.status.value, "created_at": experiment.created_at.isoformat(),
            "ended_at": experiment.ended_at.isoformat() if experiment.ended_at else None,
            "end_reason": experiment.end_reason}


# ---- health ------------------------------------------------------------------------------------


@router.get(f"{PREFIX}/health", summary="model-server-v2: healthy when ready (as GET /health/ready)",
            responses={503: {"description": "Not ready; reasons say why"}})
async def ml_health(request: Request) -> FastJSONResponse:
    return await _health(request)


@router.get("/health", summary="Healthy when ready (as GET /health/ready); /health/live is liveness",
            responses={503: {"description": "Not ready; reasons say why"}})
async def health(request: Request) -> FastJSONResponse:
    return await _health(request)


async def _health(request: Request) -> FastJSONResponse:
    service = get_service(request)
    readiness = await service.dataplane.server_ready()
    loaded = sorted({m.key.name for m in service.adapter.loaded()})
    return FastJSONResponse({"status": "healthy" if readiness.ready else "unhealthy", "ready": readiness.ready,
                             "backend": readiness.backend, "reasons": list(readiness.reasons),
                             "models_loaded": loaded, "timestamp": datetime.now(timezone.utc).isoformat()},
                            status_code=200 if readiness.ready else 503)


# ---- helpers -----------------------------------------------------------------------------------


def _parse(schema: type[_Body], raw: Any) -> _Body:
    try:
        return schema.model_validate(raw)
    except ValidationError as exc:
        raise InvalidInput(f"request does not match the {schema.__name__} schema",
                           {"errors": [{"loc": list(e["loc"]), "msg": e["msg"]} for e in exc.errors()[:10]]}) from exc


async def _optional_body(request: Request, schema: type[_Body]) -> _Body:
    """An optional JSON body (none, or an empty one, is the schema's defaults)."""
    limits = get_service(request).settings.limits
    require_json(request)
    raw = await read_body(request, limits)
    return _parse(schema, parse_json(raw, limits)) if raw.strip() else schema()


__all__ = ["router"]
