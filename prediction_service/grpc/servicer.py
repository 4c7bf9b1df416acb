"""``inference.GRPCInferenceService`` (the Open Inference Protocol over gRPC) on top of the Service.

Thin like the REST routes: admit (API key + rate limit from the call's metadata, before the tensors are
decoded), decode, call the data plane, encode. Readiness and metadata come from the data plane.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

from ..errors import NotFound, NotReady, PredictionServiceError
from ..security.auth import presented_credential
from ..types import InferenceRequest, RequestContext, Scope
from ..log_throttle import ThrottledLog
from ..monitoring.tracing import TRACERESPONSE, grpc_carrier
from ..oip import grpc_codec as codec
from .status import status_code, trailing_metadata

if TYPE_CHECKING:
    from ..serving.service import Service

log = logging.getLogger(__name__)

API_KEY_METADATA = "x-api-key"
"""The REST door's X-API-Key header, as gRPC metadata (keys are lowercase there)."""

Response = TypeVar("Response")
Handler = Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[Response]]


_failures = ThrottledLog(log)


def _log_failure(what: str, exc: Exception) -> None:
    """One line per exception type every few seconds (with the folded count) and its traceback once in
    that interval: a request that keeps failing the same way must not write a traceback per call."""
    kind = type(exc).__name__
    if _failures.warning(kind, f"gRPC {what} failed: {kind}: {str(exc)[:200]}"):
        log.error("gRPC %s: traceback of the first %s in this interval", what, kind, exc_info=exc)


def _rpc(method: Handler) -> Handler:
    """Domain errors become the status from status.py; anything else is INTERNAL, logged throttled."""

    @functools.wraps(method)
    async def call(self: "InferenceServicer", request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await method(self, request, context)
        except PredictionServiceError as error:
            await context.abort(status_code(error), error.message, trailing_metadata(error))
        except (grpc.aio.AbortError, asyncio.CancelledError):
            raise
        except Exception as exc:  # noqa: BLE001 - the client gets a status, the log a throttled line
            _log_failure(method.__name__, exc)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error")

    return call


class InferenceServicer(service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, service: "Service"):
        self.service = service
        self.dataplane = service.dataplane
        self.limits = service.settings.limits
        self.draining = False
        """Set once SIGTERM's drain begins: new calls get UNAVAILABLE, calls in progress finish."""

    # ---- health and metadata -------------------------------------------------------------------------

    @_rpc
    async def ServerLive(self, request, context) -> service_pb2.ServerLiveResponse:
        return service_pb2.ServerLiveResponse(live=self.dataplane.server_live())

    @_rpc
    async def ServerReady(self, request, context) -> service_pb2.ServerReadyResponse:
        return service_pb2.ServerReadyResponse(ready=(await self.dataplane.server_ready()).ready)

    @_rpc
    async def ModelReady(self, request, context) -> service_pb2.ModelReadyResponse:
        try:
            ready = self.dataplane.model_ready(request.name, request.version or None)
        except NotFound:  # Triton answers "not ready" for a model it does not know
            ready = False
        return service_pb2.ModelReadyResponse(ready=ready)

    @_rpc
    async def ServerMetadata(self, request, context) -> service_pb2.ServerMetadataResponse:
        return codec.server_metadata_response()  # open, like GET /v2 and the health RPCs

    @_rpc
    async def ModelMetadata(self, request, context) -> service_pb2.ModelMetadataResponse:
        self._admit_read(context)
        return codec.model_metadata_response(self.dataplane.model_metadata(request.name, request.version or None))

    @_rpc
    async def ModelConfig(self, request, context) -> service_pb2.ModelConfigResponse:
        self._admit_read(context)
        return codec.model_config_response(self.dataplane.model_metadata(request.name, request.version or None))

    # ---- the model-repository extension (admin) ------------------------------------------------------

    @_rpc
    async def RepositoryIndex(self, request, context) -> service_pb2.RepositoryIndexResponse:
        self._admit_admin(context)
        return codec.repository_index_response(self.service.repository.index(request.ready))

    @_rpc
    async def RepositoryModelLoad(self, request, context) -> service_pb2.RepositoryModelLoadResponse:
        self._admit_admin(context)
        await self.service.repository.load(request.model_name, codec.repository_model_request(request).version())
        return service_pb2.RepositoryModelLoadResponse()

    @_rpc
    async def RepositoryModelUnload(self, request, context) -> service_pb2.RepositoryModelUnloadResponse:
        self._admit_admin(context)
        await self.service.repository.unload(request.model_name, codec.repository_model_request(request).version())
        return service_pb2.RepositoryModelUnloadResponse()

    # ---- the system shared-memory extension (admin) --------------------------------------------------

    @_rpc
    async def SystemSharedMemoryStatus(self, request, context) -> service_pb2.SystemSharedMemoryStatusResponse:
        self._admit_admin(context)
        return codec.shared_memory_status_response(self.service.shared_memory.status(request.name or None))

    @_rpc
    async def SystemSharedMemoryRegister(self, request, context) -> service_pb2.SystemSharedMemoryRegisterResponse:
        self._admit_admin(context)
        self.service.shared_memory.register(request.name, request.key, request.offset, request.byte_size)
        return service_pb2.SystemSharedMemoryRegisterResponse()

    @_rpc
    async def SystemSharedMemoryUnregister(self, request, context) -> service_pb2.SystemSharedMemoryUnregisterResponse:
        self._admit_admin(context)
        self.service.shared_memory.unregister(request.name or None)  # no name: every region, as Triton
        return service_pb2.SystemSharedMemoryUnregisterResponse()

    # ---- inference -----------------------------------------------------------------------------------

    @_rpc
    async def ModelInfer(self, request, context) -> service_pb2.ModelInferResponse:
        self._refuse_if_draining()
        return await self._infer(request, _api_key(context), _caller(context), context.time_remaining(),
                                 context if self.service.tracing is not None else None)

    async def ModelStreamInfer(self, request_iterator: AsyncIterator[service_pb2.ModelInferRequest],
                               context: grpc.aio.ServicerContext) -> AsyncIterator[service_pb2.ModelStreamInferResponse]:
        """Requests on one stream run concurrently; each answer goes back as it completes, matched by id. A
        failed request is answered in ``error_message`` and the stream goes on, as Triton does; a refused API
        key ends the stream. Once draining, requests still arriving on an open stream are answered "shutting
        down".

        A stream holds at most LIMIT_GRPC_STREAM_MAX_PENDING requests (running, or answered and not yet
        written): at the bound the next request is not read until an answer has been written, so a client
        that writes without reading is held back by HTTP/2 flow control instead of filling memory. When the
        stream ends or is cancelled, the request reader and every prediction still running are cancelled and
        awaited."""
        if self.draining:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "server is shutting down")
        key, caller = _api_key(context), _caller(context)
        stream = _Stream(min(self.limits.grpc_stream_max_pending, self.limits.max_in_flight))
        # traced: each request's span continues the stream's traceparent (no traceresponse: one stream, many answers)
        carrier = grpc_carrier(context.invocation_metadata()) if self.service.tracing is not None else None

        async def answer(request: service_pb2.ModelInferRequest) -> None:
            stream.answers.put_nowait(await self._stream_answer(request, key, caller, context.time_remaining(),
                                                                carrier))

        reader = asyncio.create_task(stream.read(request_iterator, answer))
        try:
            while (item := await stream.answers.get()) is not None:
                if isinstance(item, PredictionServiceError):  # authentication: the whole stream is refused
                    await context.abort(status_code(item), item.message, trailing_metadata(item))
                yield item  # resumes once gRPC has written it
                stream.held.release()
        finally:
            reader.cancel()
            await asyncio.wait([reader])  # its task group cancels and awaits every answer still running

    async def _stream_answer(self, request: service_pb2.ModelInferRequest, key: str | None, caller: str,
                             time_remaining: float | None, carrier: dict[str, str] | None = None
                             ) -> service_pb2.ModelStreamInferResponse | PredictionServiceError:
        try:
            self._refuse_if_draining()  # an open stream is no way around the drain: the client goes elsewhere
            response = await self._infer(request, key, caller, time_remaining, carrier=carrier)
            return service_pb2.ModelStreamInferResponse(infer_response=response)
        except PredictionServiceError as error:
            if error.status in (401, 403):
                return error
            message = error.message
        except Exception as exc:  # noqa: BLE001 - one failed request never ends the stream
            _log_failure("stream request", exc)
            message = "internal error"
        return service_pb2.ModelStreamInferResponse(
            error_message=message,
            infer_response=service_pb2.ModelInferResponse(model_name=request.model_name, id=request.id))

    async def _infer(self, request: service_pb2.ModelInferRequest, key: str | None, caller: str,
                     time_remaining: float | None, call: grpc.aio.ServicerContext | None = None, *,
                     carrier: dict[str, str] | None = None) -> service_pb2.ModelInferResponse:
        """``call``: a traced unary call, whose traceparent the request continues and whose initial metadata
        carries the traceresponse; ``carrier``: a traced stream's trace context. Neither: not traced."""
        api_key = self.service.authorize_predict(key, caller)  # before the tensors are decoded
        context = self.service.request_context(api_key, None, "oip-grpc")
        if call is not None:
            carrier = grpc_carrier(call.invocation_metadata())
        if carrier is not None:
            self.service.open_trace(context, carrier)
        requested: tuple[str, ...] = ()
        places: dict[str, codec.TensorLocation] | None = None
        regions = self.service.shared_memory

        async def decode() -> InferenceRequest:
            nonlocal requested, places
            decoded = codec.decode_request(request, self.limits, regions)
            requested, places = decoded.outputs, decoded.output_places
            # The call's gRPC deadline is the caller's budget (else the server default).
            budget_ms = None if time_remaining is None else time_remaining * 1000.0
            return InferenceRequest(decoded.selector, decoded.inputs, decoded.outputs or None, budget_ms,
                                    decoded.timeout_s, decoded.priority, decoded.n_steps)

        try:
            response = await self.service.pipeline.run(
                request.model_name, context, decode,
                lambda result: codec.encode_response(result, request.id, requested, places, regions))
        except PredictionServiceError:
            await _send_traceresponse(call, context)
            raise
        await _send_traceresponse(call, context)
        return response

    # ---- admission -----------------------------------------------------------------------------------

    def _admit_read(self, context: grpc.aio.ServicerContext) -> None:
        """Model metadata and config are admitted like predictions, as on the REST door: a caller who may
        infer may read what it infers with."""
        self._refuse_if_draining()
        self.service.authorize_predict(_api_key(context), _caller(context))

    def _admit_admin(self, context: grpc.aio.ServicerContext) -> None:
        self._refuse_if_draining()
        self.service.authorize(_api_key(context), _caller(context), Scope.ADMIN, "management")

    def _refuse_if_draining(self) -> None:
        if self.draining:
            raise NotReady("server is shutting down")


class _Stream:
    """One ModelStreamInfer call: its answers in completion order, and the permits that bound what it holds."""

    def __init__(self, max_pending: int):
        self.held = asyncio.Semaphore(max_pending)
        """One permit per request read and not yet written back; taken before a request is read."""
        self.answers: asyncio.Queue[service_pb2.ModelStreamInferResponse | PredictionServiceError | None] = \
            asyncio.Queue()
        """Never longer than ``max_pending`` (each answer holds a permit); None ends the stream."""

    async def read(self, requests: AsyncIterator[service_pb2.ModelInferRequest],
                   answer: Callable[[service_pb2.ModelInferRequest], Awaitable[None]]) -> None:
        """Read requests while permits last, answering each in its own task."""
        try:
            async with asyncio.TaskGroup() as group:
                iterator = aiter(requests)
                while True:
                    await self.held.acquire()  # flow control: no permit, no read
                    try:
                        request = await anext(iterator)
                    except StopAsyncIteration:
                        break
                    group.create_task(answer(request))
        except Exception as exc:  # noqa: BLE001 - the client went away mid-stream; its call is over
            log.debug("gRPC stream ended: %r", exc)
        finally:
            self.answers.put_nowait(None)


async def _send_traceresponse(call: grpc.aio.ServicerContext | None, context: RequestContext) -> None:
    """A traced unary call's traceresponse, in its initial metadata (the gRPC form of a response header),
    before the answer or the error status."""
    value = None if call is None or context.trace is None else context.trace.traceresponse
    if value is not None:
        await call.send_initial_metadata(((TRACERESPONSE, value),))  # type: ignore[union-attr]


def _api_key(context: grpc.aio.ServicerContext) -> str | None:
    """The caller's API key (x-api-key metadata), else its authorization: Bearer token."""
    key = authorization = None
    for name, value in context.invocation_metadata() or ():
        if name == API_KEY_METADATA:
            key = value if isinstance(value, str) else value.decode()
        elif name == "authorization":
            authorization = value if isinstance(value, str) else value.decode()
    return presented_credential(key, authorization)


def _caller(context: grpc.aio.ServicerContext) -> str:
    """The client's address without its port ("ipv4:127.0.0.1:5123" -> "127.0.0.1"): rate limits by host."""
    peer = context.peer() or "-"
    kind, _, address = peer.partition(":")
    if kind in ("ipv4", "ipv6"):
        host, _, _port = address.rpartition(":")
        return host.strip("[]") or address
    return peer


async def _unimplemented(self: InferenceServicer, request: Any, context: grpc.aio.ServicerContext) -> None:
    await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not supported by this server")


# The base class's defaults are synchronous, which grpc.aio cannot run without a thread pool: answer
# every RPC this server does not offer (repository control, shared memory, statistics, ...) here.
_SERVICE = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
for _method in _SERVICE.methods:
    if _method.name not in vars(InferenceServicer):
        setattr(InferenceServicer, _method.name, _unimplemented)
