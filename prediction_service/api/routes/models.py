"""GET /v1/models, GET /v1/models/{name}, POST /v1/models/{name}/reload."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from ...registry import validate_name
from ...schemas import ModelDetail, ModelSummary
from ..deps import get_service, require_admin, require_read
from ..responses import FastJSONResponse

router = APIRouter(tags=["models"])


def _summary(request: Request, name: str) -> dict:
    service = get_service(request)
    reader, adapter = service.reader, service.adapter
    versions = [v.version for v in reader.versions(name)]
    loaded = sorted(m.key.version for m in adapter.loaded() if m.key.name == name)
    return {"name": name, "versions": versions, "stages": reader.stages(name), "loaded_versions": loaded}


@router.get("/v1/models", response_model=list[ModelSummary], summary="Registered models, their stages and what is loaded",
            dependencies=[Depends(require_read)])
async def list_models(request: Request) -> FastJSONResponse:
    names = get_service(request).reader.model_names()
    ensembles = get_service(request).dataplane.ensemble_summaries()
    return FastJSONResponse([_summary(request, name) for name in names] + ensembles)


@router.get("/v1/models/{name}", response_model=ModelDetail, summary="One model: versions, signature, serving state",
            dependencies=[Depends(require_read)])
async def get_model(name: str, request: Request) -> FastJSONResponse:
    validate_name(name)
    service = get_service(request)
    ensemble = service.dataplane.model_detail(name)
    if ensemble is not None:
        return FastJSONResponse(ensemble)
    reader, adapter, manager = service.reader, service.adapter, service.manager
    summary = _summary(request, name)
    versions = reader.versions(name)
    served = manager.routes(name)
    current = service.dataplane.model_version(name)
    backend = {}
    for model in adapter.loaded():
        if model.key.name == name:
            backend[model.key.version] = {"backend": model.backend, "artifact": model.artifact.file,
                                          "precision": model.precision, **(await adapter.describe(model.key))}
    detail = {
        **summary,
        "signature": current.signature.model_dump(mode="json"),
        "serving": served,
        "load_failures": manager.failures(name),
        "backend": backend,
        "versions_detail": [{"version": v.version, "status": v.metadata.status,
                             "created_at": v.metadata.created_at.isoformat(), "metrics": v.metadata.metrics,
                             "artifacts": [a.model_dump() for a in v.metadata.artifacts],
                             "validation_passed": v.metadata.validation.passed if v.metadata.validation else None}
                            for v in versions],
    }
    return FastJSONResponse(detail)


@router.post("/v1/models/{name}/reload", summary="Re-read stage links now; load new targets beside the old, then switch",
             dependencies=[Depends(require_admin)])
async def reload_model(name: str, request: Request) -> FastJSONResponse:
    validate_name(name)
    manager = get_service(request).manager
    serving = await manager.reload(name)
    return FastJSONResponse({"model": name, "serving": serving, "load_failures": manager.failures(name)})
