"""Registry management API: ``/v1/registry/...``. Reads need a read key, writes an admin key.

No route declares a body parameter (FastAPI would read it whole before checking the key): each checks
the key on the headers, then reads its body under its own limit (api/model_body.py).

Uploads travel as JSON with base64 artifacts (no server path is ever taken from a request). The body
streams into the registry's upload staging (``ModelRegistry.upload_staging``) with the limit applied to
bytes as they arrive, so an oversized upload is refused after one chunk of memory, not its whole size;
the artifacts are then decoded from there into files and handed to ``ModelRegistry.register``.
Registry work is file I/O and locking: plain ``def`` handlers run in the threadpool, the ``async`` ones
that read a body hand it to a thread.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import mmap
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, Field

from ...artifacts import DEFAULT_PRECISION, ArtifactFormat, Precision
from ...auth import ApiKey
from ...ensemble import EnsembleMember, EnsembleMetadata, EnsembleRegistry, WeightedPriceSentiment
from ...errors import InvalidInput, PayloadTooLarge
from ...registry.compare import VersionComparison
from ...registry.events import RegistryEvent
from ...registry.layout import validate_file_name
from ...registry.model_version import ModelVersion, ValidationReport, VersionMetadata
from ...registry.store import ModelRegistry
from ...registry.writer import ArtifactSource
from ...settings import LimitSettings
from ...signature import ModelSignature
from ..body import require_json, stream_body
from ..deps import get_service, get_settings, require_admin, require_read
from ..model_body import json_body_openapi, parse_model, read_model

router = APIRouter(prefix="/v1/registry", tags=["registry"])


UPLOAD_BODY_FILE = ".request.json"
"""The received upload body inside the staging dir; validate_file_name refuses the name, so no artifact
can overwrite it."""
DECODE_CHUNK_CHARS = 4 << 20
"""base64 characters decoded at a time (a multiple of 4): a large artifact never sits in memory twice."""


class ArtifactUpload(BaseModel):
    file_name: str
    format: ArtifactFormat
    precision: Precision = DEFAULT_PRECISION
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


# Named apart from schemas.ModelSummary / ModelDetail (GET /v1/models: what is served), which are other
# schemas: OpenAPI would otherwise give both pairs module-path names.
class RegistryModelSummary(BaseModel):
    name: str
    production: str | None
    staging: str | None
    versions: int


class RegistryModelDetail(BaseModel):
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
def list_models(request: Request) -> list[RegistryModelSummary]:
    registry = _registry(request)
    return [RegistryModelSummary(name=name, versions=len(registry.versions(name)), **registry.stages(name))
            for name in registry.model_names()]


@router.get("/models/{name}", dependencies=[Depends(require_read)])
def show_model(name: str, request: Request) -> RegistryModelDetail:
    registry = _registry(request)
    versions = [v.metadata for v in registry.versions(name)]
    return RegistryModelDetail(name=name, stages=registry.stages(name), versions=versions)


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


@router.post("/models/{name}/versions", status_code=201, openapi_extra=json_body_openapi(RegisterRequest),
             responses={413: {"description": "Body or decoded artifacts over the upload limit"}})
async def register_version(name: str, request: Request,
                           key: ApiKey | None = Depends(require_admin)) -> VersionMetadata:
    registry = _registry(request)
    limits = get_settings(request).limits
    require_json(request)
    with registry.upload_staging() as staging:
        body_path = staging / UPLOAD_BODY_FILE
        await _receive(request, body_path, upload_body_limit(limits))
        created = await asyncio.to_thread(_register_upload, registry, name, body_path, limits, _actor(key))
    return created.metadata


@router.post("/models/{name}/versions/{version}/promote", openapi_extra=json_body_openapi(PromoteRequest))
async def promote(name: str, version: str, request: Request,
                  key: ApiKey | None = Depends(require_admin)) -> VersionMetadata:
    body = await read_model(request, PromoteRequest, get_settings(request).limits)
    promoted = await asyncio.to_thread(_registry(request).promote, name, version, body.stage, force=body.force,
                                       actor=_actor(key))
    return promoted.metadata


@router.post("/models/{name}/versions/{version}/archive")
def archive(name: str, version: str, request: Request, key: ApiKey | None = Depends(require_admin)) -> VersionMetadata:
    return _registry(request).archive(name, version, actor=_actor(key)).metadata


@router.patch("/models/{name}/versions/{version}/metrics", openapi_extra=json_body_openapi(MetricsUpdate))
async def update_metrics(name: str, version: str, request: Request,
                         key: ApiKey | None = Depends(require_admin)) -> VersionMetadata:
    body = await read_model(request, MetricsUpdate, get_settings(request).limits)
    updated = await asyncio.to_thread(_registry(request).update_metrics, name, version, body.metrics,
                                      replace=body.replace, actor=_actor(key))
    return updated.metadata


@router.delete("/models/{name}/versions/{version}", status_code=204)
def delete_version(name: str, version: str, request: Request,
                   key: ApiKey | None = Depends(require_admin)) -> Response:
    _registry(request).delete(name, version, actor=_actor(key))
    return Response(status_code=204)


# ---- ensembles (issue 19): the same operations as for models, on EnsembleRegistry ---------------

class EnsembleRegisterRequest(BaseModel):
    version: str
    members: list[EnsembleMember] = Field(min_length=2, max_length=2)
    combiner: WeightedPriceSentiment = Field(default_factory=WeightedPriceSentiment)
    description: str = ""
    tags: dict[str, str] = Field(default_factory=dict)


class RegistryEnsembleSummary(BaseModel):
    name: str
    production: str | None
    staging: str | None
    versions: int


class RegistryEnsembleDetail(BaseModel):
    name: str
    stages: dict[str, str | None]
    versions: list[EnsembleMetadata]


def _ensembles(request: Request) -> EnsembleRegistry:
    # The one the data plane serves from: what it registers or promotes is an ensemble to requests at once
    # (its writes add the name to the data plane's set; other writers are seen at the next stage poll).
    return get_service(request).dataplane.ensembles.registry


@router.get("/ensembles", dependencies=[Depends(require_read)])
def list_ensembles(request: Request) -> list[RegistryEnsembleSummary]:
    registry = _ensembles(request)
    return [RegistryEnsembleSummary(name=name, versions=len(registry.versions(name)), **registry.stages(name))
            for name in registry.names()]


@router.get("/ensembles/{name}", dependencies=[Depends(require_read)])
def show_ensemble(name: str, request: Request) -> RegistryEnsembleDetail:
    registry = _ensembles(request)
    versions = [e.metadata for e in registry.versions(name)]
    return RegistryEnsembleDetail(name=name, stages=registry.stages(name), versions=versions)


@router.get("/ensembles/{name}/versions/{version}", dependencies=[Depends(require_read)])
def show_ensemble_version(name: str, version: str, request: Request) -> EnsembleMetadata:
    return _ensembles(request).get(name, version).metadata


@router.post("/ensembles/{name}/versions", status_code=201, openapi_extra=json_body_openapi(EnsembleRegisterRequest))
async def register_ensemble(name: str, request: Request,
                            key: ApiKey | None = Depends(require_admin)) -> EnsembleMetadata:
    body = await read_model(request, EnsembleRegisterRequest, get_settings(request).limits)
    created = await asyncio.to_thread(_ensembles(request).register, name, body.version, body.members, body.combiner,
                                      description=body.description, tags=body.tags, actor=_actor(key))
    return created.metadata


@router.post("/ensembles/{name}/versions/{version}/promote", openapi_extra=json_body_openapi(PromoteRequest))
async def promote_ensemble(name: str, version: str, request: Request,
                           key: ApiKey | None = Depends(require_admin)) -> EnsembleMetadata:
    body = await read_model(request, PromoteRequest, get_settings(request).limits)
    promoted = await asyncio.to_thread(_ensembles(request).promote, name, version, body.stage, force=body.force,
                                       actor=_actor(key))
    return promoted.metadata


@router.post("/ensembles/{name}/versions/{version}/archive")
def archive_ensemble(name: str, version: str, request: Request,
                     key: ApiKey | None = Depends(require_admin)) -> EnsembleMetadata:
    return _ensembles(request).archive(name, version, actor=_actor(key)).metadata


# ---- upload helpers ------------------------------------------------------------------------------

def upload_body_limit(limits: LimitSettings) -> int:
    """Bytes an upload body may carry: the artifacts' limit in base64 (4 characters per 3 bytes), plus
    one ordinary request's worth for the rest of the JSON (signature, metrics, ...)."""
    return -(-limits.max_artifact_upload_bytes // 3) * 4 + limits.max_request_bytes


async def _receive(request: Request, path: Path, max_bytes: int) -> None:
    """Stream the body into ``path``; one chunk at a time is in memory, and writes happen off the loop."""
    with open(path, "wb") as fh:
        async for chunk in stream_body(request, max_bytes):
            await asyncio.to_thread(fh.write, chunk)


def _register_upload(registry: ModelRegistry, name: str, body_path: Path, limits: LimitSettings,
                     actor: str) -> ModelVersion:
    body = _parse_received(body_path, limits)
    total = sum(_decoded_size(upload.content_base64) for upload in body.artifacts)
    limit = limits.max_artifact_upload_bytes
    if total > limit:
        raise PayloadTooLarge(f"artifacts total {total} bytes; the limit is {limit}", {"limit": limit})
    sources = [_decode_to(upload, body_path.parent) for upload in body.artifacts]
    return registry.register(name, body.version, sources, signature=body.signature, metrics=body.metrics,
                             tags=body.tags, description=body.description, validation=body.validation,
                             actor=actor)


def _parse_received(body_path: Path, limits: LimitSettings) -> RegisterRequest:
    if body_path.stat().st_size == 0:
        return parse_model(RegisterRequest, b"", limits)  # raises: a body is required
    # Parsed straight from the page cache: the raw body is never copied into the worker's memory.
    with open(body_path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mapped, \
            memoryview(mapped) as view:
        return parse_model(RegisterRequest, view, limits)


def _decoded_size(content: str) -> int:
    return len(content) // 4 * 3 - content[-2:].count("=")


def _decode_to(upload: ArtifactUpload, directory: Path) -> ArtifactSource:
    """Decode in slices into a file, then drop the base64 text: memory stays near the upload's size."""
    target = directory / validate_file_name(upload.file_name)
    content = upload.content_base64
    try:
        with open(target, "wb") as fh:
            for start in range(0, len(content), DECODE_CHUNK_CHARS):
                piece = content[start:start + DECODE_CHUNK_CHARS]
                if piece.endswith("=") and start + DECODE_CHUNK_CHARS < len(content):
                    raise ValueError("padding before the end")  # as decoding the whole text would refuse it
                fh.write(base64.b64decode(piece, validate=True))
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput(f"artifact {upload.file_name!r}: content_base64 is not valid base64") from exc
    upload.content_base64 = ""
    return ArtifactSource(path=target, format=upload.format, precision=upload.precision)
