"""Reading request bodies safely: size limit (before reading it all), JSON content type, parse, nesting
depth. Shared by the v1 and Open Inference Protocol front doors."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import orjson
from fastapi import Request
from starlette.requests import ClientDisconnect

from ..errors import BadRequest, PayloadTooLarge, PredictionServiceError
from ..security.ratelimit import ParseBudget
from ..settings import LimitSettings

Parsed = TypeVar("Parsed")


class UnsupportedMediaType(PredictionServiceError):
    status, code = 415, "unsupported_media_type"


async def read_json(request: Request, limits: LimitSettings, budget: ParseBudget | None = None) -> Any:
    require_json(request)
    body = await read_body(request, limits)
    if len(body) <= limits.json_offload_bytes:  # the usual case, without another coroutine on the hot path
        return parse_json(body, limits)
    return await parse_json_off_loop(body, limits, budget)


async def parse_json_off_loop(body: bytes | memoryview, limits: LimitSettings,
                              budget: ParseBudget | None = None) -> Any:
    """``parse_json``, in a worker thread for a body over ``limits.json_offload_bytes``, charged to the
    worker's ``budget`` of large-document bytes first (429 when it is spent). A small body is parsed inline,
    where the hand-off would cost more than the parse."""
    return await off_loop_if_large(len(body), limits, budget, parse_json, body, limits)


async def off_loop_if_large(size: int, limits: LimitSettings, budget: ParseBudget | None,
                            parse: Callable[..., Parsed], *args: Any) -> Parsed:
    """``parse(*args)`` for a JSON document of ``size`` bytes: inline when small; else charged to ``budget``
    and run in a worker thread (the parser holds the GIL, so the budget is what bounds its share)."""
    if size <= limits.json_offload_bytes:
        return parse(*args)
    if budget is not None:
        budget.take(size)
    return await asyncio.to_thread(parse, *args)


def require_json(request: Request) -> None:
    """415 unless the body is declared JSON (or its type is not declared at all)."""
    content_type = request.headers.get("content-type", "")
    if content_type.split(";")[0].strip().lower() not in ("application/json", ""):
        raise UnsupportedMediaType(f"content type {content_type!r} is not supported; send application/json")


async def read_body(request: Request, limits: LimitSettings) -> bytes:
    """The whole body, refused with 413 as soon as it is known to exceed ``limits.max_request_bytes``.

    Reads the ASGI messages itself: on the inference hot path the two async-generator layers of
    ``stream_body`` over ``Request.stream`` cost more than parsing a small body."""
    max_bytes = limits.max_request_bytes
    _check_declared_length(request, max_bytes)
    chunks, size = [], 0
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > max_bytes:  # chunked bodies carry no length: count as we read
            raise PayloadTooLarge(f"body exceeds the limit of {max_bytes} bytes", {"max_bytes": max_bytes})
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def stream_body(request: Request, max_bytes: int) -> AsyncIterator[bytes]:
    """The body chunk by chunk as it arrives, refused with 413 as soon as it is known to exceed
    ``max_bytes``: by its declared length before a byte is read, else by counting what arrives."""
    _check_declared_length(request, max_bytes)
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:  # chunked bodies carry no length: count as we read
            raise PayloadTooLarge(f"body exceeds the limit of {max_bytes} bytes", {"max_bytes": max_bytes})
        yield chunk


def _check_declared_length(request: Request, max_bytes: int) -> None:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLarge(f"body of {declared} bytes exceeds the limit of {max_bytes}", {"max_bytes": max_bytes})


def parse_json(body: bytes | memoryview, limits: LimitSettings) -> Any:
    """Parse a JSON document, refusing empty, malformed and too deeply nested ones (400)."""
    if not body:
        raise BadRequest("request body is empty; send a JSON object")
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}", {"code": "malformed_json"}) from exc
    depth = _depth(value, limits.max_json_depth)
    if depth > limits.max_json_depth:
        raise BadRequest(f"JSON nested deeper than {limits.max_json_depth} levels",
                         {"max_depth": limits.max_json_depth})
    return value


def _depth(value: Any, limit: int) -> int:
    """Nesting depth, iterative and stopping past ``limit``.

    Lists are followed through their first and last element only: tensors are homogeneous, so this
    stays O(depth) on a 200k-number batch. A deeper branch hidden in the middle is still bounded by
    orjson's own recursion limit and then refused by numpy as a non-rectangular array (422).
    """
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if level > deepest:
            deepest = level
            if deepest > limit:
                return deepest
        if isinstance(item, dict):
            stack.extend((v, level + 1) for v in item.values() if isinstance(v, (dict, list)))
        elif isinstance(item, list) and item:
            ends = (item[0], item[-1]) if len(item) > 1 else (item[0],)
            stack.extend((v, level + 1) for v in ends if isinstance(v, (dict, list)))
    return deepest
