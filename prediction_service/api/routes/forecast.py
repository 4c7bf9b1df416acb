"""POST /v1/forecast: a forecast from the family member for (symbol, timeframe, model type) in production,
on the same request pipeline as /v1/models/{name}/predict (admission, validation, deadlines, provenance,
audit), so a desk with hundreds of per-symbol models addresses them by what they forecast."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import APIRouter, Depends, Request

from ...errors import InvalidInput
from ...registry.families import FAMILY_TAGS, FamilyKey
from ...types import InferenceRequest, InferenceResult
from ...v1.codec import decode_predict, encode_result
from ...v1.schemas import REQUEST_ID_HEADER, PredictResponse
from ..body import read_json
from ..deadline import requested_budget_ms
from ..deps import open_context, require_predict
from ..responses import FastJSONResponse

router = APIRouter(tags=["predict"])
FIELD_MAX = 64


@router.post("/v1/forecast", response_model=PredictResponse,
             summary="Forecast with the production model of a family: {symbol, timeframe, model_type, n_steps, "
                     "bars | inputs | instances}",
             responses={404: {"description": "No production model for that family (names what the symbol has)"},
                        422: {"description": "Bad body, or more steps than the model's horizon"}})
async def forecast(request: Request, api_key=Depends(require_predict)) -> FastJSONResponse:
    received = time.monotonic()
    service, context = open_context(request, api_key, "v1")
    limits = service.settings.limits
    body = await read_json(request, limits, service.parse_budget)
    key = _family(body)
    name = service.families.member(key)
    if name is None and service.families.stale():  # registered a moment ago? look once more, off the loop
        await asyncio.to_thread(service.families.refresh)
        name = service.families.member(key)
    if name is None:
        raise service.families.not_found(key)

    async def decode() -> InferenceRequest:
        rest = {field: value for field, value in body.items() if field not in FAMILY_TAGS}
        decoded = decode_predict(rest, limits.max_batch_rows)
        return InferenceRequest(decoded.selector, decoded.inputs, budget_ms=requested_budget_ms(request.headers),
                                priority=decoded.priority, n_steps=decoded.n_steps)

    def encode(result: InferenceResult) -> FastJSONResponse:
        return FastJSONResponse(encode_result(result), headers={REQUEST_ID_HEADER: result.request_id})

    return await service.pipeline.run(name, context, decode, encode, received=received)


def _family(body: Any) -> FamilyKey:
    if not isinstance(body, dict):
        raise InvalidInput("a forecast body is a JSON object: {symbol, timeframe, model_type, n_steps, bars | inputs}")
    values = [body.get(tag) for tag in FAMILY_TAGS]
    bad = [tag for tag, value in zip(FAMILY_TAGS, values)
           if not isinstance(value, str) or not 0 < len(value) <= FIELD_MAX]
    if bad:
        raise InvalidInput(f"{', '.join(bad)}: each a string of 1 to {FIELD_MAX} characters", {"fields": bad})
    return FamilyKey(*values)
