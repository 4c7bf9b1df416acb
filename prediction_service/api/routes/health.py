"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter, Request

from ..responses import FastJSONResponse

router = APIRouter(tags=["health"])


@router.get("/health/live", summary="The process is up")
async def live() -> FastJSONResponse:
    return FastJSONResponse({"status": "alive"})


@router.get("/health/ready", summary="Ready when the backend is healthy and every production model is loaded",
            responses={503: {"description": "Not ready; details say why"}})
async def ready(request: Request) -> FastJSONResponse:
    state = request.app.state
    if getattr(state, "shutting_down", False):
        return FastJSONResponse({"status": "not_ready", "reasons": ["shutting down"]}, status_code=503)
    health = await state.adapter.health()
    models_ready, problems = state.manager.ready()
    reasons = ([] if health.healthy else [f"backend {health.backend}: {health.detail}"]) + problems
    for check in getattr(state, "readiness_checks", []):
        reasons.extend(check())
    body = {"status": "ready" if not reasons else "not_ready", "backend": health.backend,
            "backend_detail": health.detail, "reasons": reasons}
    for detail in getattr(state, "readiness_details", []):  # reported, never flips readiness
        body.update(detail())
    return FastJSONResponse(body, status_code=200 if not reasons else 503)
