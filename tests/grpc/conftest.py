"""The real server (``python -m prediction_service serve``) with its gRPC door on a free port."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from tests.support.server import ServerProcess, launch


@dataclass
class GrpcServer:
    process: ServerProcess
    grpc_url: str

    @property
    def http_url(self) -> str:
        return self.process.url

    def client(self, **kwargs) -> grpcclient.InferenceServerClient:
        return grpcclient.InferenceServerClient(self.grpc_url, **kwargs)


def serve_grpc(store_template: Path, work: Path, env: dict[str, str] | None = None, workers: int = 1) -> GrpcServer:
    """Copy the registry into ``work`` and serve it; returns once gRPC answers ready too."""
    store = work / "store"
    shutil.copytree(store_template, store, symlinks=True)
    # No warm-up: the slow model's takes seconds, and these tests are about the protocol.
    process = launch(store, env={"WARMUP_ENABLED": "false", **(env or {})}, workers=workers,
                     log_path=work / "server.log", log_level="info", grpc=True)
    server = GrpcServer(process, f"127.0.0.1:{process.grpc_port}")
    try:
        wait_grpc_ready(server)
    except BaseException:
        process.stop()
        raise
    return server


def wait_grpc_ready(server: GrpcServer, timeout_s: float = 30.0) -> None:
    # /health/ready answered over HTTP; the gRPC listener is bound in the same lifespan, just before.
    deadline = time.monotonic() + timeout_s
    client = server.client()
    try:
        while True:
            try:
                if client.is_server_ready(client_timeout=1.0):
                    return
            except InferenceServerException:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"gRPC not ready on {server.grpc_url}:\n{server.process.log()[-3000:]}")
            time.sleep(0.05)
    finally:
        client.close()


@pytest.fixture(scope="session")
def grpc_server(slow_store_template, tmp_path_factory) -> Iterator[GrpcServer]:
    """One server for the read-mostly tests (none changes the registry or its settings)."""
    server = serve_grpc(slow_store_template, tmp_path_factory.mktemp("grpc-server"),
                        env={"LIMIT_MAX_REQUEST_BYTES": str(256 * 1024)})
    try:
        yield server
    finally:
        server.process.stop()
