"""The one place domain errors become HTTP responses: ``{"error": {"code", "message", "details"}}``.

Under /v2 (the Open Inference Protocol) the status is the same but the body is OIP's ``{"error": "message"}``,
which tritonclient turns into its InferenceServerException.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Scope

from ..errors import PredictionServiceError
from ..log_throttle import ThrottledLog
from ..v1.schemas import REQUEST_ID_HEADER
from .responses import FastJSONResponse as ORJSONResponse

log = logging.getLogger(__name__)
_server_errors = ThrottledLog(log)  # overload refusals come by the thousand: a summary, not a line each


def error_body(code: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details or {}}}


def error_response(exc: PredictionServiceError) -> ORJSONResponse:
    return ORJSONResponse(error_body(exc.code, exc.message, exc.details), status_code=int(exc.status),
                          headers=exc.headers())


OIP_PREFIX = "/v2"


def is_oip(scope: Scope) -> bool:
    path, root = scope["path"], scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root):]
    return path == OIP_PREFIX or path.startswith(OIP_PREFIX + "/")


def _body_for(scope: Scope, code: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"error": message} if is_oip(scope) else error_body(code, message, details)


def domain_error_response(scope: Scope, exc: PredictionServiceError, request_id: str | None) -> ORJSONResponse:
    """A domain error as the door at ``scope``'s path answers it: the exception handler and the ASGI
    edge's overload refusals (early_refusal.py) both answer through here."""
    if int(exc.status) >= 500:
        _server_errors.warning(exc.code, f"{exc.code}: {exc.message}")
    body = _body_for(scope, exc.code, exc.message, exc.details)
    headers = exc.headers()
    if request_id is not None:  # a failed prediction is in the audit log under this id: the caller quotes it
        headers[REQUEST_ID_HEADER] = request_id
    return ORJSONResponse(body, status_code=int(exc.status), headers=headers)


def _jsonable_errors(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # pydantic may put exceptions or bytes in "ctx"/"input"; keep what is safe to echo.
    return [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
            for e in errors[:20]]


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(PredictionServiceError)
    async def _domain(request: Request, exc: PredictionServiceError) -> ORJSONResponse:
        return domain_error_response(request.scope, exc, getattr(request.state, "request_id", None))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> ORJSONResponse:
        errors = exc.errors()
        malformed = any(e.get("type") == "json_invalid" for e in errors)
        code, status = ("malformed_json", 400) if malformed else ("invalid_request", 422)
        message = "request body is not valid JSON" if malformed else "request does not match the schema"
        return ORJSONResponse(_body_for(request.scope, code, message, {"errors": _jsonable_errors(errors)}),
                              status_code=status)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> ORJSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return ORJSONResponse(_body_for(request.scope, code, str(exc.detail)), status_code=exc.status_code,
                              headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> ORJSONResponse:
        # one line per exception type every few seconds (with how many were folded into it), and the
        # traceback of the first in that interval: a request that keeps failing must not flood the log
        kind = type(exc).__name__
        if _server_errors.warning(f"unhandled:{kind}", f"unhandled error on {request.method} {request.url.path}: "
                                                       f"{kind}: {str(exc)[:200]}"):
            log.error("traceback of the first unhandled %s in this interval", kind, exc_info=exc)
        return ORJSONResponse(_body_for(request.scope, "internal_error", "internal server error"), status_code=500)
