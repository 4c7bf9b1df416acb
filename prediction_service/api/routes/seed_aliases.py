"""The AIPX-compatible paths as thin aliases over the same data plane: ``POST /api/v1/predict/price | sentiment |
ensemble | batch``, ``GET /api/v1/models/{name}/metadata`` and ``GET /api/v1/metrics``.

Which model each path serves comes from SEED_API_* settings. Requests and responses keep the seed's field
names (``ohlcv_data``, ``news_text``, ``model_version``, ``predicted_price``, ``confidence``...); admission,
API keys, limits, errors, metrics, audit and provenance are those of ``/v1/models/{name}/predict``.
"""

from __future__ import annotations

from datetime import datetime, timezone
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ...ensemble.combiners import OUTPUTS
from ...ensemble.runner import RAW_INPUT
from ...errors import InvalidInput
from ...types import MAX_N_STEPS, InferenceRequest, InferenceResult, RawInput, Selector
from ...oip.documents import model_metadata
from ...registry import validate_name
from ...v1.schemas import REQUEST_ID_HEADER
from ..body import read_json
from ..deadline import requested_budget_ms
from ..deps import get_service, open_context, require_predict, require_read
from ..responses import FastJSONResponse

router = APIRouter(prefix="/api/v1", tags=["AIPX-compatible aliases"])


class _SeedRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_version: str | None = Field(None, max_length=128, description="Serve this exact version.")
    stage: str | None = Field(None, max_length=32, description="production (default) or staging.")
    routing_key: str | None = Field(None, max_length=256, description="Sticky A/B routing key.")

    def selector(self) -> Selector:
        return Selector(self.model_version, self.stage, self.routing_key or getattr(self, "symbol", None))


_Body = TypeVar("_Body", bound=_SeedRequest)


class _ForecastRequest(_SeedRequest):
    n_steps: int | None = Field(None, ge=1, le=MAX_N_STEPS, strict=True,
                                description="Forecasters: the first n_steps steps of the model's horizon "
                                "(more than the horizon is 422); absent: the whole horizon.")


class PriceRequest(_ForecastRequest):
    symbol: str | None = Field(None, max_length=64)
    ohlcv_data: list[Any] = Field(description="One window of [open, high, low, close, volume] rows.")


class SentimentRequest(_SeedRequest):
    text: str


class EnsembleRequest(_SeedRequest):
    symbol: str | None = Field(None, max_length=64)
    ohlcv_data: list[Any]
    news_text: str


class BatchItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    symbol: str | None = Field(None, max_length=64)
    ohlcv_data: list[Any]


class BatchRequest(_ForecastRequest):
    items: list[BatchItem] = Field(min_length=1)


@router.post("/predict/price", summary="AIPX-compatible: next price from one OHLCV window (SEED_API_PRICE_MODEL)")
async def predict_price(request: Request, api_key=Depends(require_predict)) -> FastJSONResponse:
    return await _serve(request, api_key, get_service(request).settings.seed_api.price_model, PriceRequest,
                        lambda b: {RawInput.BARS: b.ohlcv_data}, _price_answer)


def _price_answer(body: PriceRequest, result: InferenceResult) -> FastJSONResponse:
    forecast = _first(result)
    return _answer(result, {"symbol": body.symbol, "predicted_price": _price(result, forecast, body.ohlcv_data),
                            "forecast": forecast, "confidence": None,
                            **_steps(result, result.predictions[0], body.ohlcv_data)})


@router.post("/predict/sentiment", summary="AIPX-compatible: sentiment of a text (SEED_API_SENTIMENT_MODEL)")
async def predict_sentiment(request: Request, api_key=Depends(require_predict)) -> FastJSONResponse:
    return await _serve(request, api_key, get_service(request).settings.seed_api.sentiment_model,
                        SentimentRequest, lambda b: {RawInput.TEXT: [b.text]}, _sentiment_answer)


def _sentiment_answer(body: SentimentRequest, result: InferenceResult) -> FastJSONResponse:
    prediction = result.predictions[0]
    scores = prediction["scores"] if isinstance(prediction, dict) else {}
    sentiment = scores.get("positive", 0.0) - scores.get("negative", 0.0)
    return _answer(result, {"sentiment": sentiment, "confidence": max(scores.values()) if scores else None,
                            "label": prediction.get("label") if isinstance(prediction, dict) else None,
                            "scores": scores})


@router.post("/predict/ensemble", summary="AIPX-compatible: price + sentiment ensemble (SEED_API_ENSEMBLE_MODEL)")
async def predict_ensemble(request: Request, api_key=Depends(require_predict)) -> FastJSONResponse:
    return await _serve(request, api_key, get_service(request).settings.seed_api.ensemble_model, EnsembleRequest,
                        lambda b: {RawInput.BARS: b.ohlcv_data, RawInput.TEXT: [b.news_text]}, _ensemble_answer)


def _ensemble_answer(body: EnsembleRequest, result: InferenceResult) -> FastJSONResponse:
    row = result.predictions[0]
    last_close = _last_close(body.ohlcv_data)
    return _answer(result, {
        "symbol": body.symbol, "final_prediction": _scaled(row["prediction"], last_close),
        "price_component": _scaled(row["price"], last_close), "sentiment_component": row["sentiment_score"],
        "confidence": row["confidence"], "forecast": row["prediction"],
    })


@router.post("/predict/batch", summary="AIPX-compatible: price predictions for several windows in one model run")
async def predict_batch(request: Request, api_key=Depends(require_predict)) -> FastJSONResponse:
    return await _serve(request, api_key, get_service(request).settings.seed_api.price_model, BatchRequest,
                        lambda b: {RawInput.BARS: [item.ohlcv_data for item in b.items]}, _batch_answer)


def _batch_answer(body: BatchRequest, result: InferenceResult) -> FastJSONResponse:
    forecasts = result.predictions
    predictions = [{"batch_index": index, "symbol": item.symbol, "model_version": result.version,
                    "predicted_price": _price(result, _step(forecast), item.ohlcv_data), "forecast": _step(forecast),
                    **_steps(result, forecast, item.ohlcv_data)}
                   for index, (item, forecast) in enumerate(zip(body.items, forecasts))]
    return _answer(result, {"predictions": predictions, "count": len(predictions)})


@router.get("/models/{name}/metadata", summary="AIPX-compatible: a model's (or an ensemble's) metadata",
            dependencies=[Depends(require_read)])
async def metadata(name: str, request: Request) -> FastJSONResponse:
    validate_name(name)
    service = get_service(request)
    ensembles = service.dataplane.ensembles
    if ensembles.is_ensemble(name):
        return FastJSONResponse(_ensemble_metadata(ensembles.registry, name))
    meta = service.dataplane.model_metadata(name)
    return FastJSONResponse({**model_metadata(meta), "max_batch_size": meta.max_batch_size, "stage": meta.stage,
                             "version": meta.version})


@router.get("/metrics", summary="AIPX-compatible: request counts and latencies as JSON (the figures of /v1/stats)")
async def metrics(request: Request) -> FastJSONResponse:
    service = get_service(request)
    await service.refresh_metrics()
    return FastJSONResponse(service.metrics.stats())


# ---- helpers ---------------------------------------------------------------------------------------


async def _serve(request: Request, api_key: Any, name: str, schema: type[_Body], tensors: Callable[[_Body], dict],
                 answer: Callable[[_Body, InferenceResult], FastJSONResponse]) -> FastJSONResponse:
    """The /v1 predict flow through the request pipeline, with the alias's body and answer."""
    service, context = open_context(request, api_key, "v1")
    limits = service.settings.limits
    body: _Body | None = None

    async def decode() -> InferenceRequest:
        nonlocal body
        budget_ms = requested_budget_ms(request.headers)
        body = _parse(schema, await read_json(request, limits, service.parse_budget))
        n_steps = body.n_steps if isinstance(body, _ForecastRequest) else None
        return InferenceRequest(body.selector(), tensors(body), budget_ms=budget_ms, n_steps=n_steps)

    return await service.pipeline.run(name, context, decode, lambda result: answer(body, result))


def _parse(schema: type[_SeedRequest], raw: Any) -> Any:
    try:
        return schema.model_validate(raw)
    except ValidationError as exc:
        raise InvalidInput(f"request does not match the {schema.__name__} schema",
                           {"errors": [{"loc": list(e["loc"]), "msg": e["msg"]} for e in exc.errors()[:10]]}) from exc


def _answer(result: InferenceResult, fields: dict[str, Any]) -> FastJSONResponse:
    return FastJSONResponse({
        **fields, "model_name": result.model, "model_version": result.version, "stage": result.stage,
        "arm": result.arm, "inference_time_ms": result.inference_time_ms, "request_id": result.request_id,
        "timestamp": datetime.now(timezone.utc).isoformat(), "provenance": result.provenance.as_dict(),
    }, headers={REQUEST_ID_HEADER: result.request_id})


def _first(result: InferenceResult) -> float:
    value = result.predictions[0]
    return value if isinstance(value, float) else float(np.asarray(value).reshape(-1)[0])


def _step(prediction: Any) -> float:
    """A row's first value: the next step of a multi-step forecast."""
    return prediction if isinstance(prediction, float) else float(np.asarray(prediction).reshape(-1)[0])


def _steps(result: InferenceResult, prediction: Any, window: list[Any]) -> dict[str, Any]:
    """For a model with a horizon, every step kept (``n_steps``) as the model forecast it and in price units;
    ``predicted_price`` and ``forecast`` stay the next step's."""
    signature = getattr(result.processing, "signature", None)
    if getattr(signature, "horizon", None) is None or not isinstance(prediction, list):
        return {}
    return {"forecast_steps": prediction, "predicted_prices": [_price(result, float(v), window) for v in prediction]}


def _price(result: InferenceResult, forecast: float, window: list[Any]) -> float:
    """The forecast in price units: a model whose bars step divides prices by the window's last close
    forecasts relative to it, so the price is forecast x last close; otherwise the forecast as is."""
    bars = getattr(getattr(result.processing, "signature", None), "bars", None)
    if bars is not None and bars.kind == "ohlcv_window" and bars.normalization == "last_close_mean_volume":
        return _scaled(forecast, _last_close(window))
    return forecast


def _last_close(window: list[Any]) -> float | None:
    try:
        return float(window[-1][3])
    except (IndexError, TypeError, ValueError):
        return None


def _scaled(forecast: float, last_close: float | None) -> float:
    return forecast * last_close if last_close is not None else forecast


def _ensemble_metadata(registry: Any, name: str) -> dict[str, Any]:
    stages = registry.stages(name)
    versions = registry.versions(name)
    current = registry.get(name, stages["production"]) if stages["production"] else versions[-1]
    meta = current.metadata
    return {
        "name": name, "versions": [v.version for v in versions], "version": meta.version, "platform": "ensemble",
        "stage": next((stage for stage, v in stages.items() if v == meta.version), None),
        "inputs": [{"name": RAW_INPUT["price"], "datatype": "FP64", "shape": [-1, -1, 5]},
                   {"name": RAW_INPUT["sentiment"], "datatype": "BYTES", "shape": [-1]}],
        "outputs": [{"name": output, "datatype": "FP64", "shape": [-1, 1]} for output in OUTPUTS],
        "members": [m.model_dump(mode="json", exclude_none=True) for m in meta.members],
        "combiner": meta.combiner.model_dump(mode="json"),
    }


__all__ = ["router"]
