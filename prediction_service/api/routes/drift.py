"""GET /v1/models/{name}/drift: how far each version's recent inputs are from its reference profile."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from ...errors import NotFound
from ...monitoring.drift import DriftReport
from ...registry import validate_name
from ..deps import get_service, require_read
from ..responses import FastJSONResponse

router = APIRouter(tags=["models"])


@router.get("/v1/models/{name}/drift", response_model=DriftReport,
            summary="Input drift per version: per-feature PSI and KS of recent requests against the reference",
            dependencies=[Depends(require_read)])
async def get_drift(name: str, request: Request) -> FastJSONResponse:
    validate_name(name)
    service = get_service(request)
    monitor = service.drift
    if monitor is None:
        raise NotFound("input drift monitoring is off (DRIFT_ENABLED=false)", {"model": name})
    service.reader.versions(name)  # 404 for a name that holds no model
    report = await monitor.report(name)
    return FastJSONResponse(report.model_dump(mode="json"))
