"""The one request path behind every door: admit -> decode under the door's cost budget -> priority and
deadline -> data plane -> encode, observed as one span, so metrics, the audit log and A/B arm records count
what the client actually got (an answer the door fails to encode is recorded as that failure, not as a 200).

A door is a decode/encode pair around ``RequestPipeline.run``: /v1 and the aliases (api/routes), OIP REST
(api/oip_rest.py), OIP gRPC (grpc/servicer.py). Authorization happens before: the key is checked from the
headers (or gRPC metadata) before the pipeline starts, so no body is read for a caller without one.

A traced request (``context.trace``, monitoring/tracing.py) takes the same steps inside a root span with a
child for each (admission, decode, encode, audit; the batcher adds the queue wait and links the model run).
An untraced one never reaches that code: the only cost of tracing being off is one None check here.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from .dataplane import DataPlane
from ..errors import InvalidInput
from ..types import InferenceRequest, InferenceResult, PredictionRecord, RequestContext, Trace
from ..settings import LimitSettings
from .deadline import request_deadline
from .servables import status_of

Encoded = TypeVar("Encoded")
Decode = Callable[[], Awaitable[InferenceRequest]]
"""Reads and decodes the request under the door's cost limits; raises a domain error for bad input."""
Encode = Callable[[InferenceResult], Encoded]
"""Shapes the door's answer; a domain error here is what the client gets, and what is recorded."""


class RequestPipeline:
    def __init__(self, dataplane: DataPlane, limits: LimitSettings, priority_levels: int = 1):
        self.dataplane = dataplane
        self.limits = limits
        self.priority_levels = priority_levels

    async def run(self, name: str, context: RequestContext, decode: Decode, encode: Encode[Encoded], *,
                  received: float | None = None) -> Encoded:
        """``received``: the time.monotonic() of the request's arrival when the door had to read the body
        before it knew the model's name (the name is in the body): the deadline still runs from arrival."""
        if context.trace is not None:
            return await self._run_traced(name, context, decode, encode, context.trace, received)
        self.dataplane.admit(name, context)  # from the name alone, before the body is read (where it can be)
        received = time.monotonic() if received is None else received
        started = time.perf_counter()
        record = PredictionRecord(context, name, None, None, None, None, 0.0, 200)
        try:
            request = await decode()
            self._apply_request(request, context, record, received)
            result = await self.dataplane.infer(name, request, context, record)
            return encode(result)
        except BaseException as exc:
            record.status, record.error_code = status_of(exc)
            raise
        finally:
            record.latency_ms = (time.perf_counter() - started) * 1000.0
            await self.dataplane.settle(record)

    async def _run_traced(self, name: str, context: RequestContext, decode: Decode, encode: Encode[Encoded],
                          trace: Trace, received: float | None = None) -> Encoded:
        """``run``, each step in a span of the request's trace; the root span ends with what the client got."""
        trace.begin(name, context.request_id, context.priority)
        record: PredictionRecord | None = None
        status, error_code = 200, None
        try:
            with trace.span("admission"):
                self.dataplane.admit(name, context)
            received = time.monotonic() if received is None else received
            started = time.perf_counter()
            record = PredictionRecord(context, name, None, None, None, None, 0.0, 200)
            try:
                with trace.span("decode"):
                    request = await decode()
                self._apply_request(request, context, record, received)
                result = await self.dataplane.infer(name, request, context, record)
                with trace.span("encode"):
                    return encode(result)
            except BaseException as exc:
                record.status, record.error_code = status_of(exc)
                raise
            finally:
                record.latency_ms = (time.perf_counter() - started) * 1000.0
                with trace.span("audit"):
                    await self.dataplane.settle(record)
        except BaseException as exc:
            status, error_code = status_of(exc)
            raise
        finally:
            version = stage = None
            if record is not None:
                version, stage = record.version, record.stage
            trace.finish(status, error_code, version, stage, context.priority)

    def _apply_request(self, request: InferenceRequest, context: RequestContext, record: PredictionRecord,
                        received: float) -> None:
        """What the decoded request decides: its stage, its priority lane, its deadline."""
        record.stage = request.selector.stage
        if request.priority:
            context.priority = self.priority(request.priority)
        # The budget runs from arrival: reading and decoding the body spend it too.
        context.deadline = request_deadline(self.limits, context.scope, request.budget_ms, request.timeout_s,
                                            start=received)

    def priority(self, asked: int) -> int:
        """The lane of a request that named priority ``asked`` (1 is the highest); past the levels: 422."""
        if not 1 <= asked <= self.priority_levels:
            raise InvalidInput(f"priority {asked} is out of range: 1 (the highest) to {self.priority_levels}, "
                               "or 0 for the default", {"priority": asked, "priority_levels": self.priority_levels})
        return asked
