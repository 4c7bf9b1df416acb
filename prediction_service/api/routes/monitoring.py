"""GET /metrics (Prometheus text exposition) and GET /v1/stats (the same figures as JSON).

Both are open (no API key): they carry counts and latencies, no model inputs, and scrapers rarely
hold keys. Put them behind the network boundary like the rest of the service.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from ..responses import FastJSONResponse

router = APIRouter(tags=["monitoring"])


@router.get("/metrics", summary="Prometheus metrics (all workers merged in multiprocess mode)",
            response_class=Response, responses={200: {"content": {"text/plain": {}}}})
async def metrics(request: Request) -> Response:
    await request.app.state.refresh_metrics()
    body, content_type = request.app.state.metrics.exposition()
    return Response(body, media_type=content_type)


@router.get("/v1/stats", summary="Success rate, latency percentiles, uptime, models loaded, requests by status")
async def stats(request: Request) -> FastJSONResponse:
    state = request.app.state
    await state.refresh_metrics()
    body = state.metrics.stats()
    audit = getattr(state, "audit", None)
    if audit is not None:
        body["audit"] = vars(audit.stats())
    return FastJSONResponse(body)
