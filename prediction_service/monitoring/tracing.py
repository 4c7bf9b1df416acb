"""Tracing: W3C Trace Context on every door, OpenTelemetry spans exported over OTLP/HTTP.

On when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set (``Tracing.from_settings``); then each worker has one
``Tracing`` (its own TracerProvider and batch exporter thread; nothing global is set) and every prediction
a ``RequestTrace`` on its context. Off, ``RequestContext.trace`` is None and every hook on the request path
(the doors, the pipeline, the batcher, the servable) is a None check: no header is read, nothing is
allocated, and the OpenTelemetry SDK is never imported.

One prediction, as exported (the caller's ``traceparent`` is the root's parent, its ``tracestate`` kept):

    predict {model}            SERVER  prediction.* attributes: protocol, request id, priority, version, status
      admission                        in-flight and queue-full checks, before the body is read
      decode                           the door's body -> tensors
      queue wait                       in-process batcher: from submit to the start of its model run
      model run                        remote backends only (Triton, TorchServe): the backend call
      encode                           the door's answer
      audit                            the A/B arm's record and the hand-off to metrics and the audit log
    model run {model}          its own trace: one span per batch the in-process batcher runs, with
                                       ``batch.size`` (rows) and ``batch.requests``, linked to the root span
                                       of every request in the batch (each request's queue wait links back)

The answer carries ``traceresponse: 00-<trace id>-<root span id>-<flags>`` (W3C Trace Context Level 2): the
caller's trace id, or the new one when it sent none. The audit record keeps the trace id.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from ..errors import PredictionServiceError

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span

    from ..settings import TracingSettings

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
TRACERESPONSE = "traceresponse"
INSTRUMENTATION = "prediction_service"
TRACES_PATH = "/v1/traces"


class Tracing:
    """A worker's tracer: its provider, the OTLP/HTTP exporter behind a batch processor, the propagator."""

    def __init__(self, endpoint: str, service_name: str = "prediction-service", *,
                 exporter: "SpanExporter | None" = None):
        """``endpoint``: the collector's base URL (spans go to ``endpoint + /v1/traces``); ``exporter``
        replaces the OTLP/HTTP one (tests)."""
        from opentelemetry import trace as api
        from opentelemetry.context import Context
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.trace import Link, SpanKind, Status, StatusCode
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.endpoint = endpoint
        self.provider: TracerProvider = TracerProvider(resource=Resource.create({"service.name": service_name}))
        if exporter is None:
            exporter = OTLPSpanExporter(endpoint=endpoint.rstrip("/") + TRACES_PATH)
        self.provider.add_span_processor(BatchSpanProcessor(exporter))
        self.tracer = self.provider.get_tracer(INSTRUMENTATION)
        self.propagator = TraceContextTextMapPropagator()
        # the API's pieces, bound once (the module imports none of it when tracing is off)
        self._api, self._context_class, self._link = api, Context, Link
        self._server, self._status, self._error = SpanKind.SERVER, Status, StatusCode.ERROR

    @classmethod
    def from_settings(cls, settings: "TracingSettings") -> "Tracing | None":
        """None (no tracing, nothing on the request path) unless an OTLP endpoint is configured."""
        endpoint = settings.exporter_otlp_endpoint.strip()
        return cls(endpoint, settings.service_name) if endpoint else None

    # ---- requests -----------------------------------------------------------------------------------

    def open(self, carrier: Mapping[str, str], protocol: str) -> "RequestTrace":
        """A request's trace, continuing the caller's ``traceparent`` / ``tracestate`` from ``carrier``
        (HTTP headers, or gRPC metadata as a dict); an absent or malformed traceparent starts a new trace.
        Its root span starts with the pipeline (``RequestTrace.begin``)."""
        return RequestTrace(self, self.propagator.extract(carrier), protocol)

    # ---- batches ------------------------------------------------------------------------------------

    def model_run(self, model: str, traces: Sequence["RequestTrace"], rows: int) -> "Span | None":
        """The span of one batch's model run, in a trace of its own, linked to the root span of every
        traced request in it; None when none of them is sampled."""
        links = [self._link(trace.root.get_span_context()) for trace in traces
                 if trace.root is not None and trace.root.is_recording()]
        if not links:
            return None
        return self.tracer.start_span(f"model run {model}", context=self._context_class(), links=links,
                                      attributes={"prediction.model": model, "batch.size": rows,
                                                  "batch.requests": len(traces)})

    def failed(self, span: "Span", error: BaseException) -> None:
        """Mark ``span`` failed: domain errors by their code, anything else with its exception event."""
        if isinstance(error, PredictionServiceError):
            span.set_attribute("error.type", error.code)
            span.set_status(self._status(self._error, error.message[:200]))
        else:
            span.set_attribute("error.type", type(error).__name__)
            if isinstance(error, Exception):  # not a cancellation: the caller going away is no fault here
                span.record_exception(error)
            span.set_status(self._status(self._error, type(error).__name__))

    # ---- lifecycle ----------------------------------------------------------------------------------

    def flush(self, timeout_ms: int = 5000) -> bool:
        """Export every ended span now."""
        return self.provider.force_flush(timeout_ms)

    def shutdown(self) -> None:
        """Export what is left and stop the exporter thread (Service.stop)."""
        self.provider.shutdown()


class RequestTrace:
    """One prediction's trace: the caller's context, then the root span and its children."""

    __slots__ = ("tracing", "protocol", "root", "_parent", "_context")

    def __init__(self, tracing: Tracing, parent: "Context", protocol: str):
        self.tracing = tracing
        self.protocol = protocol
        self.root: Span | None = None
        self._parent = parent
        self._context: Context | None = None

    def begin(self, model: str, request_id: str, priority: int) -> None:
        """Start the root span (the pipeline, before admission)."""
        tracing = self.tracing
        self.root = tracing.tracer.start_span(
            f"predict {model}", context=self._parent, kind=tracing._server,
            attributes={"prediction.model": model, "prediction.protocol": self.protocol,
                        "prediction.request_id": request_id, "prediction.priority": priority})
        self._context = tracing._api.set_span_in_context(self.root, self._parent)

    @property
    def trace_id(self) -> str | None:
        """32 hex digits: the caller's trace id (or the new one); None before ``begin``."""
        return None if self.root is None else format(self.root.get_span_context().trace_id, "032x")

    @property
    def traceresponse(self) -> str | None:
        """The ``traceresponse`` value (W3C Trace Context Level 2): version, trace id, the root span's id
        (the operation that answered), flags. None before ``begin``."""
        if self.root is None:
            return None
        context = self.root.get_span_context()
        return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"

    @property
    def recording(self) -> bool:
        """Whether the root span is sampled (a caller that did not sample gets no spans, only its ids kept)."""
        return self.root is not None and self.root.is_recording()

    @contextmanager
    def span(self, name: str, **attributes: Any) -> Iterator["Span | None"]:
        """A child of the root span around a block; an exception marks it failed and goes on. Unsampled:
        nothing (no child of an unsampled span is ever exported)."""
        if not self.recording:
            yield None
            return
        span = self.tracing.tracer.start_span(name, context=self._context, attributes=attributes or None)
        try:
            yield span
        except BaseException as exc:
            self.tracing.failed(span, exc)
            raise
        finally:
            span.end()

    def queued(self, started_ns: int, ended_ns: int, priority: int, run: "Span | None") -> None:
        """The time the request waited in the batcher's queue (in its lane), linked to the run it joined."""
        if not self.recording:
            return
        links = None if run is None else [self.tracing._link(run.get_span_context())]
        span = self.tracing.tracer.start_span("queue wait", context=self._context, links=links,
                                              start_time=started_ns, attributes={"prediction.priority": priority})
        span.end(end_time=ended_ns)

    def model_run(self, model: str, traces: Sequence["RequestTrace"], rows: int) -> "Span | None":
        return self.tracing.model_run(model, traces, rows)

    def run_failed(self, run: "Span", error: BaseException) -> None:
        self.tracing.failed(run, error)

    def finish(self, status: int, error_code: str | None, version: str | None, stage: str | None,
               priority: int) -> None:
        """End the root span with what the client got."""
        root = self.root
        if root is None:
            return
        root.set_attribute("prediction.status", status)
        root.set_attribute("prediction.priority", priority)
        if version is not None:
            root.set_attribute("prediction.version", version)
        if stage is not None:
            root.set_attribute("prediction.stage", stage)
        if error_code is not None:
            root.set_attribute("error.type", error_code)
            if status >= 500:  # a server span's 4xx is the caller's mistake, not a failure of this service
                root.set_status(self.tracing._status(self.tracing._error, error_code))
        root.end()


def grpc_carrier(metadata: Sequence[tuple[str, str | bytes]] | None) -> dict[str, str]:
    """The trace context entries of a gRPC call's invocation metadata (keys are lower case there)."""
    carrier: dict[str, str] = {}
    for key, value in metadata or ():
        if key == TRACEPARENT or key == TRACESTATE:
            carrier[key] = value if isinstance(value, str) else value.decode("latin-1")
    return carrier
