"""POST /v1/models/{name}/predict."""

from __future__ import annotations

import time

from fastapi import APIRouter, Depends, Request
from pydantic import ValidationError

from ...dataplane import RequestContext
from ...errors import InvalidInput
from ...schemas import DEADLINE_HEADER, MAX_DEADLINE_MS, REQUEST_ID_HEADER, PredictRequest, PredictResponse
from ..body import read_json
from ..direct_route import DirectRoute
from ..deps import get_settings, require_predict
from ..responses import FastJSONResponse

router = APIRouter(tags=["predict"], route_class=DirectRoute)  # the hot path: see direct_route.py


@router.post(
    "/v1/models/{name}/predict",
    response_model=PredictResponse,
    summary="Predict with a model (production by default; a stage or an exact version on request)",
    openapi_extra={"requestBody": {"required": True, "content": {
        "application/json": {"schema": PredictRequest.model_json_schema(ref_template="#/components/schemas/{model}")}}}},
    responses={400: {"description": "Malformed JSON or name"}, 404: {"description": "Unknown model or version"},
               413: {"description": "Body too large"}, 422: {"description": "Input does not match the signature"},
               429: {"description": "Queue full or rate limited"}, 503: {"description": "Overloaded or backend down"},
               504: {"description": "Deadline exceeded"}},
)
async def predict(name: str, request: Request, api_key=Depends(require_predict)) -> FastJSONResponse:
    settings = get_settings(request)
    body = await read_json(request, settings.limits)
    try:
        payload = PredictRequest.model_validate(body)
    except ValidationError as exc:
        raise InvalidInput("request does not match the predict schema",
                           {"errors": [{"loc": list(e["loc"]), "msg": e["msg"]} for e in exc.errors()[:10]]}) from exc
    context = RequestContext(deadline=_deadline(request, settings.limits.default_deadline_ms),
                             api_key_id=api_key.key_id if api_key else None)
    request.state.request_id = context.request_id
    result = await request.app.state.dataplane.predict(name, payload, context)
    return FastJSONResponse(result.as_dict(), headers={REQUEST_ID_HEADER: result.request_id})


def _deadline(request: Request, default_ms: float) -> float:
    raw = request.headers.get(DEADLINE_HEADER)
    try:
        budget_ms = float(raw) if raw is not None else default_ms
    except ValueError:
        raise InvalidInput(f"{DEADLINE_HEADER} must be a number of milliseconds") from None
    if not 0 < budget_ms <= MAX_DEADLINE_MS:
        raise InvalidInput(f"{DEADLINE_HEADER} must be in (0, {MAX_DEADLINE_MS}]")
    return time.monotonic() + budget_ms / 1000.0
