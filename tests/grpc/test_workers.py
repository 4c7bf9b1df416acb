"""Several uvicorn workers share the gRPC port (SO_REUSEPORT): every worker binds it, calls on fresh
connections are served, and SIGTERM still ends in exit code 0."""

from __future__ import annotations

import time

import numpy as np
import tritonclient.grpc as grpcclient

from tests.grpc.conftest import serve_grpc

LISTENING = "gRPC (Open Inference Protocol) listening on"


def test_every_worker_binds_the_grpc_port(slow_store_template, tmp_path):
    server = serve_grpc(slow_store_template, tmp_path, workers=2)
    try:
        deadline = time.monotonic() + 60
        while server.process.log().count(LISTENING) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.process.log().count(LISTENING) == 2, server.process.log()[-3000:]
        row = grpcclient.InferInput("x", [1, 4], "FP32")
        row.set_data_from_numpy(np.array([[1.0, 2.0, 3.0, 4.0]], np.float32))
        for _ in range(8):  # a new connection each time: the kernel spreads them over the workers
            client = server.client()
            try:
                assert client.infer("tiny-regressor", [row]).as_numpy("y").tolist() == [[31.0]]
            finally:
                client.close()
        exit_code = server.process.terminate(timeout=60)
    finally:
        server.process.stop()
    assert exit_code == 0, server.process.log()[-3000:]
    assert server.process.log().count("gRPC server stopped") == 2
