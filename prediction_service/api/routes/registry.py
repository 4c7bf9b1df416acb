"""Registry management API: ``/v1/registry/...``. Reads need a read key, writes an admin key.

Uploads travel as JSON with base64 artifacts (no server path is ever taken from a request); they are
decoded into a private temp dir under ``<store>/.state/uploads`` and handed to ``ModelRegistry.register``.
Handlers are plain ``def``: registry work is file I/O and locking, so it runs in the threadpool.
"""

from __future__ import annotations

import base64
import binascii
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, Field

from ...errors import InvalidInput, PayloadTooLarge
from ...registry.compare import VersionComparison
from ...registry.events import RegistryEvent
from ...registry.layout import validate_file_name
from ...registry.model_version import ValidationReport, VersionMetadata
from ...registry.store import STATE_DIR, ModelRegistry
from ...registry.writer import ArtifactSource
from ...signature import ModelSignature
from ...auth import ApiKey
from ..deps import get_service, get_settings, require_admin, require_read

router = APIRouter(prefix="/v1/registry", tags=["registry"])


class ArtifactUpload(BaseModel):
    file_name: str
    format: Literal["onnx", "torchscript", "state_dict"]
    precision: Literal["fp32", "fp16", "int8"] = "fp32"
    content_base64: str


class RegisterRequest(BaseModel):
    version: str
    artifacts: list[ArtifactUpload] = Field(min_length=1)
    signature: ModelSignature | None = None
    """Default: inferred from the ONNX artifact."""
    metrics: dict[str, float] = Field(default_factory=dict)
    tags: dict[str, str] = Field(default_factory=dict)
    description: str = ""
    validation: ValidationReport | None = None


class PromoteRequest(BaseModel):
    stage: Literal["production", "staging"] = "production"
    force: bool = False


class MetricsUpdate(BaseModel):
    metrics: dict[str, float]
    replace: bool = False


class ModelSummary(BaseModel):
    name: str
    production: str | None
    staging: str | None
    versions: int


class ModelDetail(BaseModel):
    name: str
    stages: dict[str, str | None]
    versions: list[VersionMetadata]


class ProductionAt(BaseModel):
    model: str
    time: datetime
    version: str | None


def _registry(request: Request) -> ModelRegistry:
    return get_service(request).registry


def _actor(key: ApiKey | None) -> str:
    return f"api-key:{key.key_id}" if key else "api"


@router.get("/models", dependencies=[Depends(require_read)])
def list_models(request: Request) -> list[ModelSummary]:
    registry = _registry(request)
    return [ModelSummary(name=name, versions=len(registry.versions(name)), **registry.stages(name))
            for name in registry.model_names()]


@router.get("/models/{name}", dependencies=[Depends(require_read)])
def show_model(name: str, request: Request) -> ModelDetail:
    registry = _registry(request)
    versions = [v.metadata for v in registry.versions(name)]
    return ModelDetail(name=name, stages=registry.stages(name), versions=versions)


@router.get("/models/{name}/versions/{version}", dependencies=[Depends(require_read)])
def show_version(name: str, version: str, request: Request) -> VersionMetadata:
    return _registry(request).get(name, version).metadata


@router.get("/models/{name}/compare", dependencies=[Depends(require_read)])
def compare_versions(name: str, request: Request, a: str = Query(...), b: str = Query(...)) -> VersionComparison:
    return _registry(request).compare(name, a, b)


@router.get("/models/{name}/events", dependencies=[Depends(require_read)])
def model_events(name: str, request: Request, limit: int = Query(100, ge=1, le=10_000)) -> list[RegistryEvent]:
    return _registry(request).model_events(name, limit=limit)


@router.get("/models/{name}/production-at", dependencies=[Depends(require_read)])
def production_at(name: str, request: Request, time: datetime = Query(...)) -> ProductionAt:
    moment = time if time.tzinfo else time.replace(tzinfo=timezone.utc)
    return ProductionAt(model=name, time=moment, version=_registry(request).production_at(name, moment))


@router.post("/models/{name}/versions", status_code=201)
def register_version(name: str, body: RegisterRequest, request: Request,
                     key: ApiKey | None = Depends(require_admin)) -> VersionMetadata:
    registry = _registry(request)
    limit = get_settings(request).limits.max_artifact_upload_bytes
    decoded = [(upload, _decode(upload)) for upload in body.artifacts]
    total = sum(len(data) for _, data in decoded)
    if total > limit:
        raise PayloadTooLarge(f"artifacts total {total} bytes; the limit is {limit}", {"limit": limit})
    uploads_dir = registry.root / STATE_DIR / "uploads"
    uploads_dir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(dir=uploads_dir))
    try:
        sources = []
        for upload, data in decoded:
            target = workdir / validate_file_name(upload.file_name)
            target.write_bytes(data)
            sources.append(ArtifactSource(path=target, format=upload.format, precision=upload.precision))
        created = registry.register(name, body.version, sources, signature=body.signature, metrics=body.metrics,
                                    tags=body.tags, description=body.description, validation=body.validation,
                                    actor=_actor(key))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return created.metadata


@router.post("/models/{name}/versions/{version}/promote")
def promote(name: str, version: str, body: PromoteRequest, request: Request,
            key: ApiKey | None = Depends(require_admin)) -> VersionMetadata:
    return _registry(request).promote(name, version, body.stage, force=body.force, actor=_actor(key)).metadata


@router.post("/models/{name}/versions/{version}/archive")
def archive(name: str, version: str, request: Request, key: ApiKey | None = Depends(require_admin)) -> VersionMetadata:
    return _registry(request).archive(name, version, actor=_actor(key)).metadata


@router.patch("/models/{name}/versions/{version}/metrics")
def update_metrics(name: str, version: str, body: MetricsUpdate, request: Request,
                   key: ApiKey | None = Depends(require_admin)) -> VersionMetadata:
    return _registry(request).update_metrics(name, version, body.metrics, replace=body.replace,
                                             actor=_actor(key)).metadata


@router.delete("/models/{name}/versions/{version}", status_code=204)
def delete_version(name: str, version: str, request: Request,
                   key: ApiKey | None = Depends(require_admin)) -> Response:
    _registry(request).delete(name, version, actor=_actor(key))
    return Response(status_code=204)


def _decode(upload: ArtifactUpload) -> bytes:
    try:
        return base64.b64decode(upload.content_base64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput(f"artifact {upload.file_name!r}: content_base64 is not valid base64") from exc
