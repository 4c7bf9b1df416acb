"""TRITON_SSL over gRPC against a real tritonserver serving TLS with a private CA's certificate."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from prediction_service.adapters.triton import TritonAdapter
from prediction_service.commands.servers.triton import GrpcTls, LocalTriton, TritonNotInstalled
from prediction_service.errors import BackendUnavailable
from prediction_service.registry import ModelVersion
from prediction_service.settings import Settings, TritonSettings
from tests.support.triton_models import price_batch, register_price_version

pytestmark = pytest.mark.triton


def _private_ca_and_server_cert(folder: Path) -> tuple[Path, Path, Path]:
    """A CA, and a server certificate for 127.0.0.1 signed by it (openssl CLI)."""
    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=folder)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
            "-keyout", "ca.key", "-out", "ca.pem")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", "server.key",
            "-out", "server.csr")
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "2", "-extfile", "san.ext", "-out", "server.pem")
    return folder / "ca.pem", folder / "server.pem", folder / "server.key"


@pytest.fixture(scope="module")
def tls_triton(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("tls")
    ca, cert, key = _private_ca_and_server_cert(folder)
    try:
        server = LocalTriton(folder / "repo", grpc_tls=GrpcTls(cert, key)).start()
    except TritonNotInstalled as exc:
        pytest.skip(f"tritonserver binary not available: {exc}")
    yield server, ca
    server.stop()


@pytest.fixture(scope="module")
def version(tmp_path_factory: pytest.TempPathFactory) -> ModelVersion:
    return register_price_version(tmp_path_factory.mktemp("registry"), "lstm-price", "1.0.0",
                                  tmp_path_factory.mktemp("onnx"))


def _adapter(server: LocalTriton, registry: Path, **tls: object) -> TritonAdapter:
    triton = TritonSettings(server_url=server.http_url, server_grpc_url=server.grpc_url, use_grpc=True,
                            model_repository=server.model_repository, load_timeout_seconds=60, **tls)
    return TritonAdapter(Settings(model_store=registry, triton=triton))


async def test_grpc_over_tls_with_the_private_ca(tls_triton, version: ModelVersion) -> None:
    server, ca = tls_triton
    adapter = _adapter(server, version.path.parents[1], ssl=True, ca_certificates=ca)
    try:
        await adapter.load(version)
        out = await adapter.predict(version.key, price_batch(rows=4))
        assert out["prediction"].shape[0] == 4 and np.isfinite(out["prediction"]).all()
    finally:
        await adapter.close()


@pytest.mark.parametrize("tls", [pytest.param({"ssl": False}, id="plaintext"),
                                 pytest.param({"ssl": True}, id="tls-without-the-ca")])
async def test_an_unverifiable_or_plaintext_channel_is_refused(tls_triton, version: ModelVersion, tls) -> None:
    server, _ = tls_triton
    adapter = _adapter(server, version.path.parents[1], timeout_seconds=3.0, **tls)
    try:
        with pytest.raises(BackendUnavailable):
            await adapter.load(version)
        assert not (await adapter.health()).healthy
    finally:
        await adapter.close()
