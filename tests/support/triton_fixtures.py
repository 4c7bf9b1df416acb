"""A real Triton Inference Server (nvidia-pytriton's tritonserver) shared for the session: startup costs
seconds. Test modules import the fixture; the contract suite can list it in ``pytest_plugins``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from prediction_service.commands.servers.triton import LocalTriton, TritonNotInstalled
from prediction_service.settings import Settings, TritonSettings


def start_local_triton(repository: Path, **ports: int) -> LocalTriton:
    """A started server, or a skip when the tritonserver binary is missing."""
    try:
        return LocalTriton(repository, **ports).start()
    except TritonNotInstalled as exc:
        pytest.skip(f"tritonserver binary not available: {exc}")


@pytest.fixture(scope="session")
def shared_triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalTriton]:
    server = start_local_triton(tmp_path_factory.mktemp("triton") / "repo")
    yield server
    server.stop()


def triton_settings(
    server: LocalTriton, registry: Path, *, use_grpc: bool = False, **overrides: object
) -> Settings:
    triton = TritonSettings(
        server_url=server.http_url,
        server_grpc_url=server.grpc_url,
        use_grpc=use_grpc,
        model_repository=server.model_repository,
        **overrides,
    )
    return Settings(model_store=registry, triton=triton)
