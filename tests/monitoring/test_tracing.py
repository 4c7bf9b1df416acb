"""Tracing end to end: real OTLP/HTTP exports (the OpenTelemetry SDK's exporter) into a receiver this test runs
on 127.0.0.1, decoded from the protobuf ExportTraceServiceRequest. Through /v1 and OIP gRPC: the caller's
traceparent continued (trace id, parent span, tracestate), the traceresponse sent back, the span tree
(admission, decode, queue wait, encode, audit under the request's root; one model run per batch linked to
the requests), and the trace id in the audit record. Off (no endpoint): nothing of it."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from tritonclient.grpc import service_pb2, service_pb2_grpc

from prediction_service.grpc.server import GrpcServer
from prediction_service.monitoring.audit import AuditReader, audit_db_path
from prediction_service.settings import AuditSettings, Settings, TracingSettings
from tests.support.asgi import served_app
from tests.support.otlp import OtlpReceiver, ReceivedSpan

ROW = [1.0, 2.0, 3.0, 4.0]
PREDICT = "/v1/models/tiny-regressor/predict"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACESTATE = "desk=live,vendor=abc"
SERVER, INTERNAL = 2, 1  # OTLP span kinds
STATUS_ERROR = 2
CHILDREN = ["admission", "decode", "queue wait", "encode", "audit"]


@pytest.fixture
def receiver():
    with OtlpReceiver() as running:
        yield running


def traced_settings(tiny_store, receiver: OtlpReceiver | None) -> Settings:
    endpoint = receiver.url if receiver is not None else ""
    return Settings(model_store=tiny_store, tracing=TracingSettings(exporter_otlp_endpoint=endpoint,
                                                                   service_name="pricing-desk"),
                    audit=AuditSettings(flush_interval_ms=10))


def traceparent(trace_id: str = TRACE_ID, flags: str = "01") -> str:
    return f"00-{trace_id}-{PARENT_ID}-{flags}"


def tree(spans: list[ReceivedSpan], trace_id: str) -> tuple[ReceivedSpan, dict[str, ReceivedSpan], ReceivedSpan]:
    """The request's root span, its children by name, and the model run linked to it."""
    roots = [s for s in spans if s.trace_id == trace_id and s.kind == SERVER]
    assert len(roots) == 1, [s.name for s in spans]
    root = roots[0]
    children = {s.name: s for s in spans if s.trace_id == trace_id and s.parent_span_id == root.span_id}
    runs = [s for s in spans if (trace_id, root.span_id) in s.links and s.name.startswith("model run")]
    assert len(runs) == 1, [s.name for s in spans]
    return root, children, runs[0]


def check_tree(spans: list[ReceivedSpan], trace_id: str, protocol: str, request_id: str,
               response_span_id: str) -> None:
    root, children, run = tree(spans, trace_id)
    assert root.name == "predict tiny-regressor"
    assert root.parent_span_id == PARENT_ID and root.trace_state == TRACESTATE
    assert root.span_id == response_span_id  # the traceresponse names the operation that answered
    assert root.attributes["prediction.protocol"] == protocol
    assert root.attributes["prediction.request_id"] == request_id
    assert root.attributes["prediction.version"] == "1.0.0" and root.attributes["prediction.status"] == 200
    assert root.resource["service.name"] == "pricing-desk"
    assert sorted(children) == sorted(CHILDREN)
    for child in children.values():  # every step inside the request's span
        assert root.start_ns <= child.start_ns <= child.end_ns <= root.end_ns, child.name
    order = [children[name].start_ns for name in CHILDREN]
    assert order == sorted(order)
    # one span per batch, in a trace of its own, linked to every request in it; the queue wait links back
    assert run.trace_id != trace_id and run.parent_span_id == ""
    assert run.name == "model run tiny-regressor:1.0.0" and run.attributes["batch.size"] >= 1
    assert run.attributes["batch.requests"] == len(run.links)
    assert children["queue wait"].links == ((run.trace_id, run.span_id),)
    assert children["queue wait"].end_ns <= run.start_ns + 1_000_000


async def flush(app) -> None:
    assert await asyncio.to_thread(app.state.service.tracing.flush)


async def test_v1_continues_the_callers_trace(tiny_store, receiver):
    settings = traced_settings(tiny_store, receiver)
    async with served_app(settings, metrics_registry=CollectorRegistry()) as (app, http):
        response = await http.post(PREDICT, json={"instance": ROW},
                                   headers={"traceparent": traceparent(), "tracestate": TRACESTATE})
        assert response.status_code == 200, response.text
        version, trace_id, span_id, flags = response.headers["traceresponse"].split("-")
        assert (version, trace_id, flags) == ("00", TRACE_ID, "01") and len(span_id) == 16
        request_id = response.json()["request_id"]
        await flush(app)
        spans = receiver.wait_for(lambda spans: any(s.name.startswith("model run") for s in spans))
        check_tree(spans, TRACE_ID, "v1", request_id, span_id)
    # the audit record (flushed when the app stopped) names the trace
    assert AuditReader(audit_db_path(settings), settings.state).request(request_id).trace_id == TRACE_ID


async def test_one_model_run_span_links_every_request_of_its_batch(tiny_store, receiver, monkeypatch):
    """Requests that arrive while the only run slot is busy share the next run: its span links them all."""
    settings = traced_settings(tiny_store, receiver)
    settings.batching.concurrent_batches = 1
    async with served_app(settings, metrics_registry=CollectorRegistry()) as (app, http):
        adapter = app.state.service.dataplane.adapter
        entry = next(entry for key, entry in adapter._models.items() if key.name == "tiny-regressor")
        gate, runs = asyncio.Event(), []
        inner = entry.batcher._run_batch

        async def gated(inputs, priority):
            runs.append(next(iter(inputs.values())).shape[0])
            await gate.wait()
            return await inner(inputs, priority)

        monkeypatch.setattr(entry.batcher, "_run_batch", gated)
        ids = [f"{i:032x}" for i in range(1, 5)]
        first = asyncio.create_task(http.post(PREDICT, json={"instance": ROW},
                                              headers={"traceparent": traceparent(ids[0])}))
        async with asyncio.timeout(10):
            while not runs:
                await asyncio.sleep(0)
        rest = [asyncio.create_task(http.post(PREDICT, json={"instance": ROW},
                                              headers={"traceparent": traceparent(trace)})) for trace in ids[1:]]
        async with asyncio.timeout(10):
            while entry.batcher.queue_depth < 3:
                await asyncio.sleep(0)
        gate.set()
        assert all(r.status_code == 200 for r in await asyncio.gather(first, *rest))
        assert runs == [1, 3]
        await flush(app)
        spans = receiver.wait_for(lambda spans: sum(s.name.startswith("model run") for s in spans) == 2)
    roots = {s.trace_id: s.span_id for s in spans if s.kind == SERVER}
    shared = next(s for s in spans if s.name.startswith("model run") and s.attributes["batch.requests"] == 3)
    assert shared.attributes["batch.size"] == 3
    assert sorted(shared.links) == sorted((trace, roots[trace]) for trace in ids[1:])


async def test_oip_grpc_continues_the_callers_trace(tiny_store, receiver):
    settings = traced_settings(tiny_store, receiver)
    async with served_app(settings, metrics_registry=CollectorRegistry()) as (app, _):
        door = GrpcServer(app.state.service, "127.0.0.1", 0)
        await door.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{door.port}") as channel:
                stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
                request = service_pb2.ModelInferRequest(model_name="tiny-regressor", id="caller-1")
                tensor = request.inputs.add(name="x", datatype="FP32")
                tensor.shape.extend([1, 4])
                request.raw_input_contents.append(np.array([ROW], np.float32).tobytes())
                call = stub.ModelInfer(request, metadata=(("traceparent", traceparent()),
                                                          ("tracestate", TRACESTATE)))
                response = await call
                metadata = dict(await call.initial_metadata())
                _, trace_id, span_id, _ = metadata["traceresponse"].split("-")
                assert trace_id == TRACE_ID
                request_id = response.parameters["request_id"].string_param

                # a failed call carries it too, before its status
                request.parameters["priority"].uint64_param = 99
                failing = stub.ModelInfer(request, metadata=(("traceparent", traceparent("ab" * 16)),))
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await failing
                assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert dict(await failing.initial_metadata())["traceresponse"].startswith(f"00-{'ab' * 16}-")
        finally:
            await door.stop(0)
        await flush(app)
        spans = receiver.wait_for(lambda spans: any(s.trace_id == "ab" * 16 for s in spans))
        check_tree(spans, TRACE_ID, "oip-grpc", request_id, span_id)
        failed = next(s for s in spans if s.trace_id == "ab" * 16 and s.kind == SERVER)
        assert failed.attributes["prediction.status"] == 422 and failed.attributes["error.type"] == "invalid_input"
        assert failed.status_code != STATUS_ERROR  # the caller's mistake is no failure of the server
    assert AuditReader(audit_db_path(settings), settings.state).request(request_id).trace_id == TRACE_ID


async def test_a_new_trace_without_a_valid_traceparent_and_errors_carry_it(tiny_store, receiver):
    settings = traced_settings(tiny_store, receiver)
    async with served_app(settings, metrics_registry=CollectorRegistry()) as (app, http):
        fresh = await http.post(PREDICT, json={"instance": ROW})
        malformed = await http.post(PREDICT, json={"instance": ROW}, headers={"traceparent": "00-zz-11-01"})
        zero = await http.post(PREDICT, json={"instance": ROW}, headers={"traceparent": traceparent("0" * 32)})
        bad_input = await http.post(PREDICT, json={"instance": ROW, "priority": "high"},
                                    headers={"traceparent": traceparent()})
        unsampled = await http.post(PREDICT, json={"instance": ROW},
                                    headers={"traceparent": traceparent("cd" * 16, flags="00")})
        new_ids = {r.headers["traceresponse"].split("-")[1] for r in (fresh, malformed, zero)}
        assert len(new_ids) == 3 and "0" * 32 not in new_ids and TRACE_ID not in new_ids
        assert bad_input.status_code == 422 and bad_input.headers["traceresponse"].startswith(f"00-{TRACE_ID}-")
        assert unsampled.headers["traceresponse"].startswith(f"00-{'cd' * 16}-") \
            and unsampled.headers["traceresponse"].endswith("-00")
        await flush(app)
        spans = receiver.wait_for(lambda spans: {s.trace_id for s in spans if s.kind == SERVER} >= new_ids | {TRACE_ID})
    failed = next(s for s in spans if s.trace_id == TRACE_ID and s.kind == SERVER)
    assert failed.attributes["prediction.status"] == 422 and failed.attributes["error.type"] == "invalid_input"
    decode = next(s for s in spans if s.trace_id == TRACE_ID and s.name == "decode")
    assert decode.status_code == STATUS_ERROR and decode.attributes["error.type"] == "invalid_input"
    assert {s.name for s in spans if s.trace_id == TRACE_ID} == {failed.name, "admission", "decode", "audit"}
    assert not [s for s in spans if s.trace_id == "cd" * 16]  # the caller did not sample it: nothing exported
    reader = AuditReader(audit_db_path(settings), settings.state)
    assert reader.request(unsampled.json()["request_id"]).trace_id == "cd" * 16  # but the id is kept


async def test_without_an_endpoint_nothing_is_traced(tiny_store):
    settings = traced_settings(tiny_store, None)
    async with served_app(settings, metrics_registry=CollectorRegistry()) as (app, http):
        assert app.state.service.tracing is None
        response = await http.post(PREDICT, json={"instance": ROW}, headers={"traceparent": traceparent()})
        assert response.status_code == 200 and "traceresponse" not in response.headers
        request_id = response.json()["request_id"]
    assert AuditReader(audit_db_path(settings), settings.state).request(request_id).trace_id is None
