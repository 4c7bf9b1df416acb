"""Overload refusals at the ASGI edge: a request the data plane would shed is answered before a Request
object, the route, the dependency checks or the exception handlers exist for it.

Under overload the refusals outnumber the predictions (64 closed-loop connections against a queue of 8:
~7k refusals/s beside ~200 predictions/s) and their cost is what the predictions lose. Through the route
a refusal cost ~140 us of the event loop; uvicorn alone answers a fixed 503 in ~45 us (wrk, 1 worker).
This answers the same status, body, Retry-After and X-Request-Id, counts it in the same metrics (not in
the audit log, as before), and leaves every other request to the route, which admits it again.

A caller that must present a key is authenticated first: without a valid key it gets its 401/403 from
the route, as when the server is not overloaded. Rate limits stay in the route (a token is taken once).
"""

from __future__ import annotations

from starlette.responses import Response
from starlette.types import Scope

from ..security.auth import API_KEY_HEADER, presented_credential
from ..errors import PredictionServiceError
from ..serving.service import Service
from .errors import domain_error_response, is_oip

_KEY_HEADER = API_KEY_HEADER.lower().encode("latin-1")


class EarlyRefusal:
    def __init__(self, service: Service):
        self.service = service

    def __call__(self, scope: Scope, name: str) -> Response | None:
        """The refusal for a predict/infer request on model ``name``, or None to let the route serve it."""
        service = self.service
        refusal = service.dataplane.refusal(name)
        if refusal is None:
            return None
        try:
            key = service.authenticate_predict(_presented_key(scope))
        except PredictionServiceError:
            return None  # the route answers 401/403
        context = service.request_context(key, None, "oip-rest" if is_oip(scope) else "v1")
        service.dataplane.count_shed(name, context, refusal)
        return domain_error_response(scope, refusal, context.request_id)


def _presented_key(scope: Scope) -> str | None:
    key = authorization = None
    for header, value in scope["headers"]:
        if header == _KEY_HEADER:
            key = value.decode("latin-1")
        elif header == b"authorization":
            authorization = value.decode("latin-1")
    return presented_credential(key, authorization)
