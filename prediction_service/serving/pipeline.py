"""The one request path behind every door: admit -> decode under the door's cost budget -> deadline ->
data plane -> encode, observed as one span, so metrics, the audit log and A/B arm records count what the
client actually got (an answer the door fails to encode is recorded as that failure, not as a 200).

A door is a decode/encode pair around ``RequestPipeline.run``: /v1 and the aliases (api/routes), OIP REST
(api/oip_rest.py), OIP gRPC (grpc/servicer.py). Authorization happens before: the key is checked from the
headers (or gRPC metadata) before the pipeline starts, so no body is read for a caller without one.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from .dataplane import DataPlane
from ..types import InferenceRequest, InferenceResult, PredictionRecord, RequestContext
from ..settings import LimitSettings
from .deadline import request_deadline
from .servables import status_of

Encoded = TypeVar("Encoded")
Decode = Callable[[], Awaitable[InferenceRequest]]
"""Reads and decodes the request under the door's cost limits; raises a domain error for bad input."""
Encode = Callable[[InferenceResult], Encoded]
"""Shapes the door's answer; a domain error here is what the client gets, and what is recorded."""


class RequestPipeline:
    def __init__(self, dataplane: DataPlane, limits: LimitSettings):
        self.dataplane = dataplane
        self.limits = limits

    async def run(self, name: str, context: RequestContext, decode: Decode, encode: Encode[Encoded]) -> Encoded:
        self.dataplane.admit(name, context)  # from the name alone, before the body is read
        received = time.monotonic()
        started = time.perf_counter()
        record = PredictionRecord(context, name, None, None, None, None, 0.0, 200)
        try:
            request = await decode()
            record.stage = request.selector.stage
            # The budget runs from arrival: reading and decoding the body spend it too.
            context.deadline = request_deadline(self.limits, context.scope, request.budget_ms, request.timeout_s,
                                                start=received)
            result = await self.dataplane.infer(name, request, context, record)
            return encode(result)
        except BaseException as exc:
            record.status, record.error_code = status_of(exc)
            raise
        finally:
            record.latency_ms = (time.perf_counter() - started) * 1000.0
            if record.arm_run is not None:  # before the answer leaves: an outcome posted next finds it
                await self.dataplane.record_arm(record)
            self.dataplane.observe(record)
