"""Reading JSON bodies safely: content type, size limit (before reading it all), parse, nesting depth."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import Request

from ..errors import BadRequest, PayloadTooLarge, PredictionServiceError
from ..settings import LimitSettings


class UnsupportedMediaType(PredictionServiceError):
    status, code = 415, "unsupported_media_type"


async def read_json(request: Request, limits: LimitSettings) -> Any:
    content_type = request.headers.get("content-type", "")
    if content_type.split(";")[0].strip().lower() not in ("application/json", ""):
        raise UnsupportedMediaType(f"content type {content_type!r} is not supported; send application/json")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limits.max_request_bytes:
        raise PayloadTooLarge(f"body of {declared} bytes exceeds the limit of {limits.max_request_bytes}",
                              {"max_bytes": limits.max_request_bytes})
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limits.max_request_bytes:  # chunked bodies carry no length: count as we read
            raise PayloadTooLarge(f"body exceeds the limit of {limits.max_request_bytes} bytes",
                                  {"max_bytes": limits.max_request_bytes})
        chunks.append(chunk)
    body = b"".join(chunks)
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
