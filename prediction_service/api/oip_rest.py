"""The Open Inference Protocol (KServe v2 / Triton) over REST, beside /v1 on the same port.

Thin routes: admission (API key + rate limit, from the headers, before the body is read) -> codec
(oip/rest_codec.py) -> ``service.dataplane`` -> codec. Unchanged ``tritonclient.http`` code works against it.
Model routes are admitted like predictions (open unless PREDICT_REQUIRES_KEY): a client that may infer
may read what it infers with. Server metadata and health are open, like /health.
"""

from __future__ import annotations

from typing import TypeVar

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, ValidationError

from ..errors import InvalidInput

from ..security.auth import ApiKey
from ..v1.schemas import REQUEST_ID_HEADER
from .body import off_loop_if_large, read_body
from .deadline import requested_budget_ms
from ..types import InferenceRequest, InferenceResult
from .deps import get_service, open_context, require_admin, require_predict
from .direct_route import DirectRoute
from ..oip.documents import (RepositoryIndexRequest, RepositoryModelRequest, model_config, model_metadata,
                             repository_index, server_metadata)
from ..oip.rest_codec import (EXTENSIONS, HEADER_LENGTH, InferRequest, decode_infer_request, decompress,
                              encode_infer_response)
from ..oip.shared_memory import RegisterRegionRequest, status_document
from .responses import FastJSONResponse

# DirectRoute (see direct_route.py): infer is the hot path, and every route here fits its limits
router = APIRouter(tags=["open inference protocol"], route_class=DirectRoute)
M = TypeVar("M", bound=BaseModel)
_ERRORS = {400: {"description": "Malformed body or framing"}, 404: {"description": "Unknown model or version"},
           413: {"description": "Body too large"}, 422: {"description": "Tensors do not match the model"},
           429: {"description": "Rate limited"}, 503: {"description": "Overloaded or backend down"},
           504: {"description": "Deadline exceeded"}}
_INFER_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"type": "object", "description": "OIP inference request (inputs, outputs, "
                                     "parameters: stage, routing_key, priority, timeout, binary_data_output)"}},
    "application/octet-stream": {"schema": {"type": "string", "format": "binary", "description":
                                            "JSON header of Inference-Header-Content-Length bytes, then the "
                                            "binary input tensors"}}}}}


@router.get("/v2", summary="Server metadata: name, version, protocol extensions")
async def server(request: Request) -> FastJSONResponse:
    return FastJSONResponse(server_metadata(EXTENSIONS))


@router.get("/v2/health/live", summary="The process is up")
async def live(request: Request) -> FastJSONResponse:
    alive = get_service(request).dataplane.server_live()
    return FastJSONResponse({"live": alive}, status_code=200 if alive else 503)


@router.get("/v2/health/ready", summary="Ready when the backend is healthy and production models are loaded",
            responses={503: {"description": "Not ready"}})
async def ready(request: Request) -> FastJSONResponse:
    readiness = await get_service(request).dataplane.server_ready()
    return FastJSONResponse({"ready": readiness.ready}, status_code=200 if readiness.ready else 503)


@router.get("/v2/models/{name}", summary="Model metadata (the production version, else the newest)",
            responses=_ERRORS)
async def metadata(name: str, request: Request, api_key=Depends(require_predict)) -> FastJSONResponse:
    return FastJSONResponse(model_metadata(get_service(request).dataplane.model_metadata(name)))


@router.get("/v2/models/{name}/versions/{version}", summary="Model metadata of one version", responses=_ERRORS)
async def version_metadata(name: str, version: str, request: Request,
                           api_key=Depends(require_predict)) -> FastJSONResponse:
    return FastJSONResponse(model_metadata(get_service(request).dataplane.model_metadata(name, version)))


@router.get("/v2/models/{name}/ready", summary="200 when the production version is loaded, else 503",
            responses=_ERRORS)
async def model_ready(name: str, request: Request, api_key=Depends(require_predict)) -> FastJSONResponse:
    return _ready(request, name, None)


@router.get("/v2/models/{name}/versions/{version}/ready", summary="200 when this version is loaded, else 503",
            responses=_ERRORS)
async def version_ready(name: str, version: str, request: Request,
                        api_key=Depends(require_predict)) -> FastJSONResponse:
    return _ready(request, name, version)


def _ready(request: Request, name: str, version: str | None) -> FastJSONResponse:
    ready = get_service(request).dataplane.model_ready(name, version)  # unknown name/version: 404
    return FastJSONResponse({"name": name, "ready": ready}, status_code=200 if ready else 503)


@router.get("/v2/models/{name}/config", summary="Triton-style model configuration", responses=_ERRORS)
async def config(name: str, request: Request, api_key=Depends(require_predict)) -> FastJSONResponse:
    return FastJSONResponse(model_config(get_service(request).dataplane.model_metadata(name)))


@router.get("/v2/models/{name}/versions/{version}/config", summary="Triton-style configuration of one version",
            responses=_ERRORS)
async def version_config(name: str, version: str, request: Request,
                         api_key=Depends(require_predict)) -> FastJSONResponse:
    return FastJSONResponse(model_config(get_service(request).dataplane.model_metadata(name, version)))


@router.post("/v2/models/{name}/infer", summary="Infer (parameters: stage, routing_key, priority, timeout)",
             responses=_ERRORS,
             openapi_extra=_INFER_BODY)
async def infer(name: str, request: Request, api_key=Depends(require_predict)) -> Response:
    return await _infer(request, name, None, api_key)


@router.post("/v2/models/{name}/versions/{version}/infer", summary="Infer with one version", responses=_ERRORS,
             openapi_extra=_INFER_BODY)
async def infer_version(name: str, version: str, request: Request, api_key=Depends(require_predict)) -> Response:
    return await _infer(request, name, version, api_key)


@router.post("/v2/repository/index", summary="Every registered version: READY when loaded, and its stage (admin)",
             responses={401: {"description": "Missing key"}, 403: {"description": "Needs admin scope"}})
async def repository_index_route(request: Request, api_key=Depends(require_admin)) -> FastJSONResponse:
    body = await _small_document(request, RepositoryIndexRequest)
    return FastJSONResponse(repository_index(get_service(request).repository.index(body.ready)))


@router.post("/v2/repository/models/{name}/load", summary="Load a registered version (parameters.version; "
             "default production) beside what the stages serve (admin)", responses=_ERRORS)
async def repository_load(name: str, request: Request, api_key=Depends(require_admin)) -> FastJSONResponse:
    body = await _small_document(request, RepositoryModelRequest)
    await get_service(request).repository.load(name, body.version())
    return FastJSONResponse({})


@router.post("/v2/repository/models/{name}/unload", summary="Unload a version no stage serves "
             "(parameters.version; default every such version); a stage's version is 409 (admin)",
             responses={**_ERRORS, 409: {"description": "The version serves a stage"}})
async def repository_unload(name: str, request: Request, api_key=Depends(require_admin)) -> FastJSONResponse:
    body = await _small_document(request, RepositoryModelRequest)
    await get_service(request).repository.unload(name, body.version())
    return FastJSONResponse({})


_SHM_ERRORS = {400: {"description": "Bad name, key, offset or size; unknown region"},
               401: {"description": "Missing key"}, 403: {"description": "Needs admin scope"},
               409: {"description": "The name is already registered"}}


@router.get("/v2/systemsharedmemory/status", summary="Every registered system shared-memory region (admin)",
            responses=_SHM_ERRORS)
async def shm_status(request: Request, api_key=Depends(require_admin)) -> FastJSONResponse:
    return FastJSONResponse(status_document(get_service(request).shared_memory.status()))


@router.get("/v2/systemsharedmemory/region/{name}/status", summary="One system shared-memory region (admin)",
            responses=_SHM_ERRORS)
async def shm_region_status(name: str, request: Request, api_key=Depends(require_admin)) -> FastJSONResponse:
    return FastJSONResponse(status_document(get_service(request).shared_memory.status(name)))


@router.post("/v2/systemsharedmemory/region/{name}/register", summary="Register a span of a /dev/shm object "
             "(key, offset, byte_size) as a region inputs are read from and outputs written to (admin)",
             responses=_SHM_ERRORS)
async def shm_register(name: str, request: Request, api_key=Depends(require_admin)) -> FastJSONResponse:
    body = await _small_document(request, RegisterRegionRequest)
    get_service(request).shared_memory.register(name, body.key, body.offset, body.byte_size)
    return FastJSONResponse({})


@router.post("/v2/systemsharedmemory/region/{name}/unregister", summary="Unregister one region (admin)",
             responses=_SHM_ERRORS)
async def shm_unregister(name: str, request: Request, api_key=Depends(require_admin)) -> FastJSONResponse:
    get_service(request).shared_memory.unregister(name)
    return FastJSONResponse({})


@router.post("/v2/systemsharedmemory/unregister", summary="Unregister every region (admin)",
             responses=_SHM_ERRORS)
async def shm_unregister_all(request: Request, api_key=Depends(require_admin)) -> FastJSONResponse:
    get_service(request).shared_memory.unregister()
    return FastJSONResponse({})


async def _small_document(request: Request, model: type[M]) -> M:
    """A repository request's JSON body (empty: the defaults), under the server's body limits."""
    raw = await read_body(request, get_service(request).settings.limits)
    try:
        return model.model_validate_json(raw) if raw.strip() else model.model_validate({})
    except ValidationError as exc:
        errors = [{"loc": list(e["loc"]), "msg": e["msg"]} for e in exc.errors()[:10]]
        raise InvalidInput(f"invalid {model.__name__} body", {"errors": errors}) from exc


async def _infer(request: Request, name: str, version: str | None, api_key: ApiKey | None) -> Response:
    service, context = open_context(request, api_key, "oip-rest")
    limits = service.settings.limits
    parsed: InferRequest | None = None

    async def decode() -> InferenceRequest:
        nonlocal parsed
        budget_ms = requested_budget_ms(request.headers)
        body = decompress(await read_body(request, limits), request.headers.get("content-encoding"),
                          limits.max_request_bytes)
        header_length = request.headers.get(HEADER_LENGTH)
        json_size = int(header_length) if header_length and header_length.isdigit() else len(body)
        parsed = await off_loop_if_large(min(json_size, len(body)), limits, service.parse_budget,
                                         decode_infer_request, body, header_length, limits, version,
                                         service.shared_memory)
        outputs = None if parsed.outputs is None else tuple(output.name for output in parsed.outputs)
        return InferenceRequest(parsed.selector, parsed.inputs, outputs, budget_ms, parsed.timeout_s, parsed.priority,
                                parsed.n_steps)

    def encode(result: InferenceResult) -> Response:
        assert parsed is not None  # decoded before the data plane ran
        encoded = encode_infer_response(result, parsed, service.shared_memory)
        return Response(encoded.body, media_type=encoded.media_type,
                        headers={**encoded.headers, REQUEST_ID_HEADER: context.request_id})

    return await service.pipeline.run(name, context, decode, encode)
