"""WebSocket predictions (``/v1/models/{name}/stream``): one /v1 predict body per message in, one answer per
message out, for a strategy that keeps one connection open instead of paying a request per prediction.

The key is checked at connect, from the handshake's headers, before the socket is accepted: a refused caller
gets the REST door's answer to the handshake (401 / 403 / 429 with the error body). Each message is a request of its own on the one pipeline: its own
request id, deadline, admission, validation, metrics and audit record. Like the gRPC stream, at most
``LIMIT_GRPC_STREAM_MAX_PENDING`` messages are in progress per connection; past that the server stops reading
and TCP pushes back on the client. Answers leave in completion order; a message may carry an ``id`` that
its answer echoes, to match them up.

A message whose answer is an error gets ``{"id", "request_id", "error": {code, message, details}}`` with the
status the REST door would have answered, and the connection stays open.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from ...errors import InvalidInput, PayloadTooLarge, PredictionServiceError
from ...serving.service import Service
from ...types import InferenceRequest, InferenceResult
from ...v1.codec import decode_predict, encode_result
from ...security.auth import presented_credential
from ...v1.schemas import API_KEY_HEADER
from ..body import parse_json_off_loop
from ..errors import error_body
from ..responses import FastJSONResponse

router = APIRouter(tags=["predict"])

POLICY_VIOLATION = 1008
"""WebSocket close code for a caller the server refuses (RFC 6455)."""


@router.websocket("/v1/models/{name}/stream")
async def stream(websocket: WebSocket, name: str) -> None:
    service: Service = websocket.app.state.service
    caller = websocket.client.host if websocket.client else "-"
    try:
        credential = presented_credential(websocket.headers.get(API_KEY_HEADER), websocket.headers.get("authorization"))
        key = service.authorize_predict(credential, caller)
    except PredictionServiceError as exc:
        await _refuse(websocket, exc)
        return
    await websocket.accept()
    pending = asyncio.Semaphore(service.settings.limits.grpc_stream_max_pending)
    answering: set[asyncio.Task] = set()

    async def answer(message: str | bytes) -> None:
        try:
            reply = await _answer(service, name, key, message)
            await websocket.send_bytes(reply)
        except (WebSocketDisconnect, RuntimeError):  # the client left: nobody to answer
            pass
        finally:
            pending.release()

    try:
        while True:
            await pending.acquire()  # at the bound: stop reading until an answer has left
            received = await websocket.receive()
            if received["type"] == "websocket.disconnect":
                break
            message = received.get("text") if received.get("text") is not None else received.get("bytes", b"")
            task = asyncio.create_task(answer(message))
            answering.add(task)
            task.add_done_callback(answering.discard)
    except WebSocketDisconnect:
        pass
    finally:
        for task in answering:
            task.cancel()


async def _refuse(websocket: WebSocket, exc: PredictionServiceError) -> None:
    """Refuse the handshake: with the HTTP status and error body the REST door would send (401 / 403 / 429)
    where the server can answer a handshake with a response, else close code 1008 with the reason."""
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(FastJSONResponse(error_body(exc.code, exc.message, exc.details),
                                                              status_code=int(exc.status), headers=exc.headers()))
    else:
        await websocket.close(code=POLICY_VIOLATION, reason=exc.message[:120])


async def _answer(service: Service, name: str, key, message: str | bytes) -> bytes:
    context = service.request_context(key, None, "v1-ws")
    limits = service.settings.limits
    message_id: Any = None

    async def decode() -> InferenceRequest:
        nonlocal message_id
        raw = message.encode() if isinstance(message, str) else message
        if len(raw) > limits.max_request_bytes:
            raise PayloadTooLarge(f"message of {len(raw)} bytes is over LIMIT_MAX_REQUEST_BYTES "
                                  f"({limits.max_request_bytes})", {"bytes": len(raw)})
        document = await parse_json_off_loop(raw, limits, service.parse_budget)
        if not isinstance(document, dict):
            raise InvalidInput("a message is one JSON object: a /v1 predict body, with an optional 'id'")
        message_id = document.pop("id", None)
        if message_id is not None and not isinstance(message_id, (str, int)):
            raise InvalidInput("'id' must be a string or an integer")
        decoded = decode_predict(document, limits.max_batch_rows)
        return InferenceRequest(decoded.selector, decoded.inputs, priority=decoded.priority,
                                n_steps=decoded.n_steps)

    def encode(result: InferenceResult) -> bytes:
        body = encode_result(result)
        if message_id is not None:
            body = {"id": message_id, **body}
        return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)

    try:
        return await service.pipeline.run(name, context, decode, encode)
    except PredictionServiceError as exc:
        error = error_body(exc.code, exc.message, exc.details)
        return orjson.dumps({"id": message_id, "request_id": context.request_id, "status": int(exc.status),
                             **error}, option=orjson.OPT_SERIALIZE_NUMPY)
