"""GET /metrics (Prometheus text exposition) and GET /v1/stats (the same figures as JSON).

Both are open (no API key): they carry counts and latencies, no model inputs, and scrapers rarely
hold keys. Put them behind the network boundary like the rest of the service.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from ..deps import get_service
from ..responses import FastJSONResponse

router = APIRouter(tags=["monitoring"])


@router.get("/metrics", summary="Prometheus metrics (all workers merged in multiprocess mode)",
            response_class=Response, responses={200: {"content": {"text/plain": {}}}})
async def metrics(request: Request) -> Response:
    service = get_service(request)
    await service.refresh_metrics()
    body, content_type = service.metrics.exposition()
    return Response(body, media_type=content_type)


@router.get("/v1/stats", summary="Success rate, latency percentiles, uptime, models loaded, requests by status")
async def stats(request: Request) -> FastJSONResponse:
    service = get_service(request)
    await service.refresh_metrics()
    body = service.metrics.stats()
    memory = service.adapter.memory()
    if memory is not None:
        body["model_memory"] = {"total_bytes": memory.total_bytes, "budget_bytes": memory.budget_bytes,
                                "by_version": {str(key): size for key, size in memory.by_version.items()}}
    if service.audit is not None:
        body["audit"] = vars(service.audit.stats())
    return FastJSONResponse(body)
