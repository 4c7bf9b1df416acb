"""POST /v1/models/{name}/predict: parse (v1 codec) -> data plane -> encode."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from ...types import InferenceRequest, InferenceResult
from ...v1.schemas import REQUEST_ID_HEADER, PredictRequest, PredictResponse
from ..body import read_json
from ..deadline import requested_budget_ms
from ..deps import open_context, require_predict
from ..direct_route import DirectRoute
from ..responses import FastJSONResponse
from ...v1.codec import decode_predict, encode_result

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
    service, context = open_context(request, api_key, "v1")
    limits = service.settings.limits

    async def decode() -> InferenceRequest:
        budget_ms = requested_budget_ms(request.headers)
        decoded = decode_predict(await read_json(request, limits, service.parse_budget), limits.max_batch_rows)
        return InferenceRequest(decoded.selector, decoded.inputs, budget_ms=budget_ms, priority=decoded.priority,
                                n_steps=decoded.n_steps)

    def encode(result: InferenceResult) -> FastJSONResponse:
        return FastJSONResponse(encode_result(result), headers={REQUEST_ID_HEADER: result.request_id})

    return await service.pipeline.run(name, context, decode, encode)
