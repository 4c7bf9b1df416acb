"""Registry management API: ``/v1/registry/...``. Reads need a read key, writes an admin key.

No route declares a body parameter (FastAPI would read it whole before checking the key): each checks
the key on the headers, then reads its body under its own limit (api/model_body.py).

Uploads travel as JSON with base64 artifacts (no server path is ever taken from a request). The body
streams into the registry's upload staging (``ModelRegistry.upload_staging``) with the limit applied to
bytes as they arrive, so an oversized upload is refused after one chunk of memory, not its whole size.
As it arrives, each artifact's ``content_base64`` goes to a file of its own and the rest of the document
(at most LIMIT_MAX_REQUEST_BYTES) is kept with a placeholder in its place; that small document is parsed,
each artifact is decoded from its file into the artifact file in slices, and the files are handed to
``ModelRegistry.register``: the worker never holds an artifact's text, encoded or decoded, in memory.
Registry work is file I/O and locking: plain ``def`` handlers run in the threadpool, the ``async`` ones
that read a body hand it to a thread.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import BinaryIO, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, Field

from ...artifacts import DEFAULT_PRECISION, ArtifactFormat, Precision
from ...security.auth import ApiKey
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


DECODE_CHUNK_CHARS = 4 << 20
"""base64 characters decoded at a time (a multiple of 4): a large artifact never sits in memory whole."""

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
    allow_contract_change: bool = False
    """Register even though production declares a pre-processing step (bars, text) this version does not
    (a bare artifact): refused otherwise with 409 ``contract_changed`` naming the step."""


class PromoteRequest(BaseModel):
    stage: Literal["production", "staging"] = "production"
    force: bool = False


class ModelPromoteRequest(PromoteRequest):
    allow_contract_change: bool = False
    """Promote into production although the version's serving contract (tensors, pre-processing, labels,
    task) differs from production's: refused otherwise with 409 ``contract_changed`` listing each
    difference. The event log records the override (a ``contract_change`` event)."""


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
        with _UploadSplitter(staging, limits.max_request_bytes) as splitter:
            async for chunk in stream_body(request, upload_body_limit(limits)):
                await asyncio.to_thread(splitter.feed, chunk)
        created = await asyncio.to_thread(_register_upload, registry, name, splitter, limits, _actor(key))
    return created.metadata


@router.post("/models/{name}/versions/{version}/promote", openapi_extra=json_body_openapi(ModelPromoteRequest),
             responses={409: {"description": "promotion_refused (validation), contract_changed (the serving "
                                             "contract differs from production's; error.details.differences "
                                             "lists each), invalid_transition"}})
async def promote(name: str, version: str, request: Request,
                  key: ApiKey | None = Depends(require_admin)) -> VersionMetadata:
    body = await read_model(request, ModelPromoteRequest, get_settings(request).limits)
    promoted = await asyncio.to_thread(_registry(request).promote, name, version, body.stage, force=body.force,
                                       allow_contract_change=body.allow_contract_change, actor=_actor(key))
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


# ---- ensembles: the same operations as for models, on EnsembleRegistry ---------------

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


class _UploadSplitter:
    """Splits an upload body as it arrives: the value of every ``content_base64`` key is written, as its raw
    JSON text, to a file in ``staging`` and replaced in the document by a placeholder no client can guess;
    the rest of the document (names, signature, metrics) is kept in memory, up to ``max_document_bytes``
    (beyond that the rest of the body is only counted, and ``check`` refuses it)."""

    def __init__(self, staging: Path, max_document_bytes: int):
        self.staging = staging
        self.max_document_bytes = max_document_bytes
        self.token = secrets.token_hex(16)
        self.document = bytearray()
        self.blobs: list[_Blob] = []
        self.overflow = False
        self._in_string = False
        self._escaped = False  # the string's last byte so far is a backslash whose character is still to come
        self._current = bytearray()
        self._last_string: bytes | None = None  # the last inline string, when short: the key of what follows
        self._gap = bytearray()  # what lies between that string and the next one (": " for a key)
        self._blob: _Blob | None = None
        self._out: BinaryIO | None = None

    def __enter__(self) -> "_UploadSplitter":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def feed(self, chunk: bytes) -> None:
        position, size = 0, len(chunk)
        while position < size:
            if not self._in_string:
                quote = chunk.find(b'"', position)
                outside = chunk[position:] if quote < 0 else chunk[position:quote]
                self._keep(outside)
                if len(self._gap) < 64:  # enough to tell ": " from anything else
                    self._gap += outside[:64]
                if quote < 0:
                    return
                self._start_string()
                position = quote + 1
                continue
            if self._escaped:  # the escaped character, whatever it is, belongs to the string
                self._take(chunk[position:position + 1], escape=True)
                self._escaped, position = False, position + 1
                continue
            special = _STRING_SPECIAL.search(chunk, position)
            if special is None:
                self._take(chunk[position:])
                return
            self._take(chunk[position:special.start()])
            position = special.start() + 1
            if chunk[special.start()] == ord("\\"):
                self._take(b"\\", escape=True)
                self._escaped = True
            else:
                self._end_string()

    def close(self) -> None:
        """After the last chunk: an unterminated string stays in the document (which then fails to parse)."""
        if self._in_string and self._blob is None:
            self._keep(self._current)
        self._current = bytearray()
        if self._out is not None:
            self._out.close()
        self._blob, self._out = None, None

    def check(self) -> None:
        if self.overflow:
            raise PayloadTooLarge(f"an upload's JSON besides its artifact contents is limited to "
                                  f"{self.max_document_bytes} bytes", {"max_bytes": self.max_document_bytes})

    def placeholder(self, index: int) -> str:
        return f"{self.token}:{index}"

    def blob_of(self, value: str) -> "_Blob | None":
        """The blob a field's value stands for, when it is a placeholder."""
        prefix = f"{self.token}:"
        return self.blobs[int(value[len(prefix):])] if value.startswith(prefix) else None

    def restore(self, index: int) -> None:
        """Put a blob's text back in the document (a ``content_base64`` key that is not an artifact's)."""
        blob = self.blobs[index]
        self.document = self.document.replace(f'"{self.placeholder(index)}"'.encode(),
                                              b'"' + blob.path.read_bytes() + b'"')
        blob.path.unlink()
        if len(self.document) > self.max_document_bytes:
            self.overflow = True
            self.check()

    def _keep(self, data: bytes) -> None:
        if self.overflow or not data:
            return
        if len(self.document) + len(data) > self.max_document_bytes:
            self.overflow, self.document = True, bytearray()
            return
        self.document += data

    def _start_string(self) -> None:
        self._in_string = True
        if self._last_string == b"content_base64" and bytes(self._gap).strip() == b":":
            self._blob = _Blob(self.staging / f".blob-{len(self.blobs)}")
            self._out = open(self._blob.path, "wb")
            self.blobs.append(self._blob)
            self._keep(f'"{self.placeholder(len(self.blobs) - 1)}'.encode())
        else:
            self._keep(b'"')

    def _take(self, data: bytes, *, escape: bool = False) -> None:
        if not data:
            return
        if self._blob is None:
            self._keep(data)
            if len(self._current) <= 32:  # a key is short; longer strings are only ever values
                self._current += data[:33]
        else:
            self._blob.escaped |= escape
            self._out.write(data)

    def _end_string(self) -> None:
        self._keep(b'"')
        self._last_string = bytes(self._current) if self._blob is None and len(self._current) <= 32 else None
        if self._out is not None:
            self._out.close()
        self._blob, self._out = None, None
        self._current, self._gap = bytearray(), bytearray()
        self._in_string = False


@dataclass
class _Blob:
    path: Path
    escaped: bool = False
    """It holds a JSON escape (``\\/`` for instance): decode the JSON string before the base64."""


_STRING_SPECIAL = re.compile(rb'["\\]')


def _register_upload(registry: ModelRegistry, name: str, splitter: _UploadSplitter, limits: LimitSettings,
                     actor: str) -> ModelVersion:
    splitter.check()
    body = parse_model(RegisterRequest, bytes(splitter.document), limits)
    stray = _stray_placeholders(body, splitter)
    if stray:  # a content_base64 key elsewhere (in tags, say): its text goes back where it was
        for index in stray:
            splitter.restore(index)
        body = parse_model(RegisterRequest, bytes(splitter.document), limits)
    splitter.document = bytearray()
    limit = limits.max_artifact_upload_bytes
    sources, total = [], 0
    for upload in body.artifacts:
        source, size = _decode_to(upload, splitter, limit - total, limit)
        sources.append(source)
        total += size
    return registry.register(name, body.version, sources, signature=body.signature, metrics=body.metrics,
                             tags=body.tags, description=body.description, validation=body.validation,
                             actor=actor, allow_contract_change=body.allow_contract_change)


def _stray_placeholders(body: RegisterRequest, splitter: _UploadSplitter) -> list[int]:
    """Blobs whose placeholder stands anywhere but in an artifact's content."""
    rest = body.model_dump_json(exclude={"artifacts": {"__all__": {"content_base64"}}})
    return [index for index in range(len(splitter.blobs)) if f'"{splitter.placeholder(index)}"' in rest]


def _decode_to(upload: ArtifactUpload, splitter: _UploadSplitter, room: int,
               limit: int) -> tuple[ArtifactSource, int]:
    """Decode the artifact's base64 in slices into its file in the staging dir (from the blob it streamed to,
    or the short inline text); PayloadTooLarge once it passes ``room``, what is left of the artifacts'
    ``limit``. Returns the source and its size."""
    target = splitter.staging / validate_file_name(upload.file_name)
    blob = splitter.blob_of(upload.content_base64)
    decoder = _Base64Writer(upload.file_name, room, limit)
    with open(target, "wb") as fh:
        if blob is None:
            content = upload.content_base64
            for start in range(0, len(content), DECODE_CHUNK_CHARS):
                decoder.write(fh, content[start:start + DECODE_CHUNK_CHARS])
        else:
            with open(blob.path, "rb") as raw:
                carry = b""
                while piece := raw.read(DECODE_CHUNK_CHARS):
                    piece, carry = _json_text(carry + piece, blob.escaped, upload.file_name)
                    decoder.write(fh, piece)
                if carry:
                    decoder.write(fh, _json_text(carry, blob.escaped, upload.file_name, final=True)[0])
            blob.path.unlink()
        decoder.finish(fh)
    upload.content_base64 = ""
    return ArtifactSource(path=target, format=upload.format, precision=upload.precision), decoder.size


def _json_text(raw: bytes, escaped: bool, file_name: str, final: bool = False) -> tuple[str, bytes]:
    """The text of a slice of a JSON string's raw bytes, and the tail kept for the next slice (an escape
    sequence is never cut)."""
    if not escaped:
        try:
            return raw.decode("ascii"), b""
        except UnicodeDecodeError as exc:
            raise _not_base64(file_name) from exc
    cut = -1 if final else raw.rfind(b"\\", max(0, len(raw) - 6))  # \uXXXX is the longest escape
    head, tail = (raw, b"") if cut < 0 else (raw[:cut], raw[cut:])
    try:
        return json.loads(b'"' + head + b'"'), tail
    except ValueError as exc:
        raise _not_base64(file_name) from exc


class _Base64Writer:
    """base64 text in, bytes out to a file: 4-character groups decoded as they complete; padding only at the
    very end; the total held to the room left under the upload limit."""

    def __init__(self, file_name: str, room: int, limit: int):
        self.file_name, self.room, self.limit, self.size = file_name, room, limit, 0
        self._carry = ""
        self._padded = False

    def write(self, fh, text: str) -> None:
        if not text:
            return
        if self._padded:
            raise _not_base64(self.file_name)  # data after the padding
        text = self._carry + text
        whole = len(text) // 4 * 4
        text, self._carry = text[:whole], text[whole:]
        if not text:
            return
        self._padded = text.endswith("=")
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise _not_base64(self.file_name) from exc
        self.size += len(data)
        if self.size > self.room:
            raise PayloadTooLarge(f"the decoded artifacts pass the upload limit of {self.limit} bytes",
                                  {"limit": self.limit})
        fh.write(data)

    def finish(self, fh) -> None:
        if self._carry:
            raise _not_base64(self.file_name)


def _not_base64(file_name: str) -> InvalidInput:
    return InvalidInput(f"artifact {file_name!r}: content_base64 is not valid base64")
