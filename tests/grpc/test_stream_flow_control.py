"""ModelStreamInfer flow control, on a grpc.aio server (port 0) over the app in process: a stream holds at
most LIMIT_GRPC_STREAM_MAX_PENDING requests, so a client that writes without reading is not read further;
a cancelled stream leaves no prediction, task or in-flight slot behind."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from prediction_service.grpc.server import GrpcServer
from prediction_service.serving.service import Service
from prediction_service.settings import LimitSettings, Settings
from tests.support.asgi import served_app

MAX_PENDING = 4
REQUESTS = 200
"""Far more than the bound; small enough (~100 bytes each) that all fit in the server's HTTP/2 window, so
the server could read every one of them at once if it wanted to."""


class GatedModel:
    """The served model behind an event: counts the predictions that reached it, holds them until ``gate``."""

    def __init__(self, predict: Callable):
        self._predict = predict
        self.started = 0
        self.cancelled = 0
        self.gate = asyncio.Event()
        self.reached: dict[int, asyncio.Event] = {}

    def when_started(self, count: int) -> asyncio.Event:
        return self.reached.setdefault(count, asyncio.Event())

    async def __call__(self, key, inputs, *, deadline=None, context=None):
        self.started += 1
        for count, event in self.reached.items():
            if self.started >= count:
                event.set()
        try:
            await self.gate.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return await self._predict(key, inputs, deadline=deadline, context=context)


@dataclass
class StreamServer:
    service: Service
    target: str
    model: GatedModel


@pytest.fixture
async def stream_server(tiny_store, monkeypatch) -> AsyncIterator[StreamServer]:
    settings = Settings(model_store=tiny_store, limits=LimitSettings(grpc_stream_max_pending=MAX_PENDING,
                                                                     default_deadline_ms=60_000))
    async with served_app(settings) as (app, _):
        service: Service = app.state.service
        model = GatedModel(service.dataplane.adapter.predict)
        monkeypatch.setattr(service.dataplane.adapter, "predict", model)
        door = GrpcServer(service, "127.0.0.1", 0)
        await door.start()
        try:
            yield StreamServer(service, f"127.0.0.1:{door.port}", model)
        finally:
            model.gate.set()
            await door.stop(0)


def infer_request(request_id: str, value: float) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name="tiny-regressor", id=request_id)
    tensor = request.inputs.add(name="x", datatype="FP32")
    tensor.shape.extend([1, 4])
    request.raw_input_contents.append(np.array([[value, 0.0, 0.0, 0.0]], np.float32).tobytes())
    return request


async def round_trips(stub: service_pb2_grpc.GRPCInferenceServiceStub, count: int = 5) -> None:
    """Unary calls through the same server: the event loop has run the stream's reader many times over."""
    for _ in range(count):
        assert (await stub.ServerReady(service_pb2.ServerReadyRequest())).ready


async def test_a_client_that_does_not_read_is_not_read_past_the_bound(stream_server):
    model, dataplane = stream_server.model, stream_server.service.dataplane
    async with grpc.aio.insecure_channel(stream_server.target) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        call = stub.ModelStreamInfer()
        ids = [f"r{i}" for i in range(REQUESTS)]

        async def write_all() -> None:
            for index, request_id in enumerate(ids):
                await call.write(infer_request(request_id, float(index)))
            await call.done_writing()

        writer = asyncio.create_task(write_all())
        await asyncio.wait_for(model.when_started(MAX_PENDING).wait(), 30)
        await round_trips(stub)
        # The stream holds as many requests as it may and reads no further until an answer is written. (Whether
        # the client's writes are done by now is the transport's business: they fit in its buffers and window.)
        assert model.started == MAX_PENDING
        assert dataplane.in_flight == MAX_PENDING

        model.gate.set()
        answers = [response async for response in call]
        await writer
        assert await call.code() == grpc.StatusCode.OK

    assert len(answers) == REQUESTS
    assert sorted(answer.infer_response.id for answer in answers) == sorted(ids)
    assert all(not answer.error_message for answer in answers), answers[0].error_message
    for answer in answers:  # tiny-regressor 1.0.0: x . [1, 2, 3, 4] + 1, with x = [i, 0, 0, 0]
        index = int(answer.infer_response.id[1:])
        y = np.frombuffer(answer.infer_response.raw_output_contents[0], np.float32)
        assert y.tolist() == [index + 1.0]
    assert model.started == REQUESTS and dataplane.in_flight == 0


async def test_a_cancelled_stream_leaves_nothing_behind(stream_server):
    model, dataplane = stream_server.model, stream_server.service.dataplane
    async with grpc.aio.insecure_channel(stream_server.target) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        await round_trips(stub, 1)
        tasks_before = len(asyncio.all_tasks())

        call = stub.ModelStreamInfer()

        async def write_all() -> None:
            for index in range(REQUESTS):
                await call.write(infer_request(f"r{index}", float(index)))

        writer = asyncio.create_task(write_all())
        await asyncio.wait_for(model.when_started(MAX_PENDING).wait(), 30)
        assert dataplane.in_flight == MAX_PENDING
        call.cancel()
        await asyncio.gather(writer, return_exceptions=True)  # its next write fails: the call is over

        # Nothing to wait on but the server's own cleanup: poll for it (the model is still gated, so
        # only cancellation can empty the in-flight slots).
        for _ in range(3000):
            if dataplane.in_flight == 0 and len(asyncio.all_tasks()) <= tasks_before:
                break
            await asyncio.sleep(0.01)
        assert dataplane.in_flight == 0
        assert model.cancelled == MAX_PENDING
        assert len(asyncio.all_tasks()) <= tasks_before
        assert model.started == MAX_PENDING  # nothing was read after the cancel either

        await round_trips(stub, 1)  # the server goes on serving
