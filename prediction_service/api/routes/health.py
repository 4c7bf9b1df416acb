"""Liveness and readiness (the data plane decides; this shapes the v1 JSON)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from ..deps import get_service
from ..responses import FastJSONResponse

router = APIRouter(tags=["health"])


@router.get("/health/live", summary="The process is up")
async def live() -> FastJSONResponse:
    return FastJSONResponse({"status": "alive"})


@router.get("/health/ready", summary="Ready when the backend is healthy and every production model is loaded",
            responses={503: {"description": "Not ready; details say why"}})
async def ready(request: Request) -> FastJSONResponse:
    readiness = await get_service(request).dataplane.server_ready()
    body = {"status": "ready" if readiness.ready else "not_ready", "backend": readiness.backend,
            "backend_detail": readiness.backend_detail, "reasons": list(readiness.reasons), **readiness.details}
    return FastJSONResponse(body, status_code=200 if readiness.ready else 503)
