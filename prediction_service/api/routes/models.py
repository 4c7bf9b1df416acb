"""GET /v1/models, GET /v1/models/{name}, POST /v1/models/{name}/reload."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request

from ...ensemble.metadata import EnsembleDetail, EnsembleSummary, MemberStatus
from ...types import TensorMetadata
from ...registry import validate_name
from ...v1.schemas import ModelDetail, ModelSummary
from ..deps import get_service, require_admin, require_read
from ..responses import FastJSONResponse

router = APIRouter(tags=["models"])


def _summary(request: Request, name: str) -> dict:
    service = get_service(request)
    reader, adapter = service.reader, service.adapter
    versions = [v.version for v in reader.versions(name)]
    loaded = sorted(m.key.version for m in adapter.loaded() if m.key.name == name)
    memory = adapter.memory()
    summary = {"name": name, "versions": versions, "stages": reader.stages(name), "loaded_versions": loaded}
    if memory is not None:  # measured where models run in this process
        summary["memory_bytes"] = {key.version: size for key, size in memory.by_version.items() if key.name == name}
    return summary


@router.get("/v1/models", response_model=list[ModelSummary], summary="Registered models, their stages and what is loaded",
            dependencies=[Depends(require_read)])
async def list_models(request: Request) -> FastJSONResponse:
    return FastJSONResponse(model_summaries(request))


def model_summaries(request: Request) -> list[dict[str, Any]]:
    """What ``GET /v1/models`` lists: every registered model, then every ensemble (``"kind": "ensemble"``)."""
    names = get_service(request).reader.model_names()
    ensembles = get_service(request).dataplane.ensemble_summaries()
    return [_summary(request, name) for name in names] + [_ensemble_summary(e) for e in ensembles]


@router.get("/v1/models/{name}", response_model=ModelDetail, summary="One model: versions, signature, serving state",
            dependencies=[Depends(require_read)])
async def get_model(name: str, request: Request) -> FastJSONResponse:
    validate_name(name)
    service = get_service(request)
    ensemble = service.dataplane.model_detail(name)
    if ensemble is not None:
        return FastJSONResponse(_ensemble_detail(ensemble))
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


# ---- ensembles: the data plane's typed descriptions, as JSON ----------------------------

def _ensemble_summary(summary: EnsembleSummary) -> dict[str, Any]:
    """ModelSummary's fields plus ``kind``."""
    return {"name": summary.name, "kind": summary.kind, "versions": list(summary.versions),
            "stages": dict(summary.stages), "loaded_versions": list(summary.loaded_versions)}


def _ensemble_detail(detail: EnsembleDetail) -> dict[str, Any]:
    return {
        **_ensemble_summary(detail),
        "version": detail.version, "ready": detail.ready, "members": [_member(m) for m in detail.members],
        "combiner": detail.combiner.model_dump(mode="json"),
        "inputs": [_tensor(t) for t in detail.inputs], "outputs": [_tensor(t) for t in detail.outputs],
        "versions_detail": [{"version": v.version, "status": v.status, "sha256": v.sha256,
                             "created_at": v.created_at.isoformat(), "description": v.description}
                            for v in detail.versions_detail],
    }


def _member(status: MemberStatus) -> dict[str, Any]:
    return {**status.member.model_dump(mode="json"), "serves": status.serves, "ready": status.ready,
            **({"problem": status.problem} if status.problem else {})}


def _tensor(tensor: TensorMetadata) -> dict[str, Any]:
    return {"name": tensor.name, "dtype": tensor.dtype, "shape": list(tensor.shape)}
