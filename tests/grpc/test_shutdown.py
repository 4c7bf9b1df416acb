"""SIGTERM with gRPC calls in flight (real ``serve`` subprocess): health turns NOT_SERVING, new calls get
UNAVAILABLE (new requests on an open stream an in-stream error), the calls in flight finish with their
answers, and the process exits 0."""

from __future__ import annotations

import asyncio
import queue
import re
import signal
import time

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests.grpc.conftest import serve_grpc

CALLS = 6
ROWS = 8
BLOCKER_ROWS = 64
"""The first call's run (64 rows of the slow model, ~30 ms a row, one run at a time) holds the only run
slot for seconds; the other calls are sent once it is in flight, so they queue behind it and are all still
in flight when SIGTERM arrives, however slowly a busy machine lets the test send them."""


def slow_input(rows: int = ROWS) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput("x", [rows, 4], "FP32")
    tensor.set_data_from_numpy(np.ones((rows, 4), np.float32))
    return tensor


async def wait_in_flight(http_url: str, count: int, timeout_s: float = 30.0) -> None:
    """Until the server says ``count`` predictions are in progress (its prediction_in_flight gauge)."""
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(timeout=5.0) as http:
        while time.monotonic() < deadline:
            metrics = (await http.get(f"{http_url}/metrics")).text
            match = re.search(r"^prediction_in_flight(?:\{[^}]*\})? ([0-9.e+]+)$", metrics, re.MULTILINE)
            if match and float(match.group(1)) >= count:
                return
            await asyncio.sleep(0.02)
    raise TimeoutError(f"never saw {count} predictions in flight")


async def wait_not_ready(url: str, timeout_s: float = 30.0) -> None:
    client = aioclient.InferenceServerClient(url)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            if not await client.is_server_ready():
                return
            await asyncio.sleep(0.01)
    finally:
        await client.close()
    raise TimeoutError("the server still says ready after SIGTERM")


async def test_sigterm_lets_calls_in_flight_finish_and_refuses_new_ones(slow_store_template, tmp_path):
    server = serve_grpc(slow_store_template, tmp_path, env={
        "SERVER_SHUTDOWN_GRACE_SECONDS": "60", "SERVER_SHUTDOWN_DRAIN_SECONDS": "0", "BATCH_MAX_BATCH_SIZE": str(BLOCKER_ROWS),
        "BATCH_CONCURRENT_BATCHES": "1", "SIMPLE_INTRA_OP_THREADS": "1", "LIMIT_CALLER_DEADLINE_CEILING_MS": "120000"})
    client = aioclient.InferenceServerClient(server.grpc_url)
    stream = server.client()
    try:
        # a gRPC deadline well past the default one: queued calls must not expire while they wait
        calls = [asyncio.create_task(client.infer("slow-regressor", [slow_input(BLOCKER_ROWS)], request_id="0",
                                                  client_timeout=120))]
        await wait_in_flight(server.http_url, 1)
        calls += [asyncio.create_task(client.infer("slow-regressor", [slow_input()], request_id=str(i),
                                                   client_timeout=120)) for i in range(1, CALLS)]
        streamed: queue.Queue = queue.Queue()
        stream.start_stream(callback=lambda result, error: streamed.put((result, error)), stream_timeout=120)
        stream.async_stream_infer("slow-regressor", [slow_input()], request_id="streamed")
        await wait_in_flight(server.http_url, CALLS + 1)
        server.process.process.send_signal(signal.SIGTERM)
        await wait_not_ready(server.grpc_url)

        with grpc.insecure_channel(server.grpc_url) as channel:
            status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest()).status
        assert status == health_pb2.HealthCheckResponse.NOT_SERVING
        with pytest.raises(InferenceServerException) as refused:
            await client.infer("tiny-regressor", [slow_input()])  # a new call, on a connection already open
        assert refused.value.status() == "StatusCode.UNAVAILABLE" and "shutting down" in refused.value.message()

        # the open stream is in flight too: what it had sent finishes, what it sends now is refused in-stream
        stream.async_stream_infer("tiny-regressor", [slow_input()], request_id="after-sigterm")
        answers = [await asyncio.to_thread(streamed.get, timeout=60) for _ in range(2)]
        stream.stop_stream()

        results = await asyncio.gather(*calls)
        exit_code = await asyncio.to_thread(server.process.process.wait, 60)
    finally:
        await client.close()
        stream.close()
        server.process.stop()

    finished = [result for result, error in answers if error is None]
    refusals = [str(error) for result, error in answers if error is not None]
    assert [result.get_response().id for result in finished] == ["streamed"]
    assert finished[0].as_numpy("y").shape == (ROWS, 1)
    assert len(refusals) == 1 and "shutting down" in refusals[0]

    assert sorted(result.get_response().id for result in results) == [str(i) for i in range(CALLS)]
    for result in results:
        outputs = result.as_numpy("y")
        rows = BLOCKER_ROWS if result.get_response().id == "0" else ROWS
        assert outputs.shape == (rows, 1) and outputs.dtype == np.float32 and np.isfinite(outputs).all()
    log = server.process.log()
    assert exit_code == 0, log[-3000:]
    assert "gRPC server stopped" in log
