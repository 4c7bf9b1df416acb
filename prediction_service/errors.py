"""Domain errors. Each carries its HTTP status (http.HTTPStatus, so the core never imports FastAPI)
and a stable machine-readable code; api/errors.py turns any of them into
``{"error": {"code", "message", "details"}}``."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any


class PredictionServiceError(Exception):
    status: HTTPStatus = HTTPStatus.INTERNAL_SERVER_ERROR
    code: str = "internal_error"

    def __init__(self, message: str, details: dict[str, Any] | None = None):
        super().__init__(message)
        self.message = message
        self.details = details or {}

    def headers(self) -> dict[str, str]:
        return {}


class InvalidName(PredictionServiceError):
    status, code = HTTPStatus.BAD_REQUEST, "invalid_name"


class BadRequest(PredictionServiceError):
    status, code = HTTPStatus.BAD_REQUEST, "bad_request"


class InvalidInput(PredictionServiceError):
    status, code = HTTPStatus.UNPROCESSABLE_ENTITY, "invalid_input"


class PayloadTooLarge(PredictionServiceError):
    status, code = HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "payload_too_large"


class Unauthorized(PredictionServiceError):
    status, code = HTTPStatus.UNAUTHORIZED, "unauthorized"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": "ApiKey"}


class Forbidden(PredictionServiceError):
    status, code = HTTPStatus.FORBIDDEN, "forbidden"


class NotFound(PredictionServiceError):
    status, code = HTTPStatus.NOT_FOUND, "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class VersionNotFound(NotFound):
    code = "version_not_found"


class Conflict(PredictionServiceError):
    status, code = HTTPStatus.CONFLICT, "conflict"


class ValidationFailed(PredictionServiceError):
    """A model artifact or variant failed numeric / signature validation."""

    status, code = HTTPStatus.UNPROCESSABLE_ENTITY, "validation_failed"


class Overloaded(PredictionServiceError):
    """A bounded queue or rate limit is full: the caller should back off and retry."""

    status, code = HTTPStatus.TOO_MANY_REQUESTS, "overloaded"

    def __init__(self, message: str, details: dict[str, Any] | None = None, retry_after_s: float = 1.0):
        super().__init__(message, details)
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(max(1, int(round(self.retry_after_s))))}


class RateLimited(Overloaded):
    code = "rate_limited"


class ServiceUnavailable(PredictionServiceError):
    status, code = HTTPStatus.SERVICE_UNAVAILABLE, "unavailable"

    def headers(self) -> dict[str, str]:
        return {"Retry-After": "1"}


class NotReady(ServiceUnavailable):
    code = "not_ready"


class BackendUnavailable(ServiceUnavailable):
    """The serving backend (Triton, TorchServe, a model runtime) cannot be reached or failed."""

    code = "backend_unavailable"


class DeadlineExceeded(PredictionServiceError):
    status, code = HTTPStatus.GATEWAY_TIMEOUT, "deadline_exceeded"


class BackendTimeout(DeadlineExceeded):
    code = "backend_timeout"


class ModelLoadError(PredictionServiceError):
    status, code = HTTPStatus.SERVICE_UNAVAILABLE, "model_load_failed"
