"""A real Triton Inference Server for the adapter tests: one per session (startup costs seconds).

Imported by the test modules that need it (not a conftest, so other adapter tests do not pay for it)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from prediction_service.adapters.triton_local import LocalTriton, TritonNotInstalled
from prediction_service.settings import Settings, TritonSettings


def start_local_triton(repository: Path, **ports: int) -> LocalTriton:
    try:
        return LocalTriton(repository, **ports).start()
    except TritonNotInstalled as exc:
        pytest.skip(f"tritonserver binary not available: {exc}")


@pytest.fixture(scope="session")
def triton_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalTriton]:
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
