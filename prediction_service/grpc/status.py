"""The one table from domain errors to gRPC status codes (the gRPC twin of api/errors.py).

Errors carry an HTTPStatus; the code follows from it, so a new error class needs no entry here.
"""

from __future__ import annotations

from http import HTTPStatus

import grpc

from ..errors import PredictionServiceError

STATUS_CODES: dict[HTTPStatus, grpc.StatusCode] = {
    HTTPStatus.BAD_REQUEST: grpc.StatusCode.INVALID_ARGUMENT,
    HTTPStatus.UNPROCESSABLE_ENTITY: grpc.StatusCode.INVALID_ARGUMENT,
    HTTPStatus.UNAUTHORIZED: grpc.StatusCode.UNAUTHENTICATED,
    HTTPStatus.FORBIDDEN: grpc.StatusCode.PERMISSION_DENIED,
    HTTPStatus.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    HTTPStatus.CONFLICT: grpc.StatusCode.FAILED_PRECONDITION,
    # gRPC itself answers an over-size message with RESOURCE_EXHAUSTED: a too-large tensor says the same.
    HTTPStatus.REQUEST_ENTITY_TOO_LARGE: grpc.StatusCode.RESOURCE_EXHAUSTED,
    HTTPStatus.TOO_MANY_REQUESTS: grpc.StatusCode.RESOURCE_EXHAUSTED,
    HTTPStatus.SERVICE_UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    HTTPStatus.GATEWAY_TIMEOUT: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def status_code(error: PredictionServiceError) -> grpc.StatusCode:
    return STATUS_CODES.get(error.status, grpc.StatusCode.INTERNAL)


def trailing_metadata(error: PredictionServiceError) -> tuple[tuple[str, str], ...]:
    """The error's machine-readable code, and Retry-After for 429/503 (gRPC metadata keys are lowercase)."""
    pairs = [("error-code", error.code)]
    retry_after = error.headers().get("Retry-After")
    if retry_after is not None:
        pairs.append(("retry-after", retry_after))
    return tuple(pairs)
