"""tritonclient-side helpers for the drop-in comparisons with Triton (tests/oip, bench/oip_bench.py).

``publish`` serves a registry version in a real tritonserver under the name the service gives it
(``lstm-price``), so one tritonclient call works against either server. The entry is what the project's
packaging generates (config.pbtxt from the signature, the fp32 ONNX artifact, and for the python backend
the ONNX Runtime ``model.py``); only the entry name differs from the TritonAdapter's ``<name>__<version>``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import tritonclient.grpc.aio as grpcclient
import tritonclient.http.aio as httpclient
from tritonclient.utils import InferenceServerException

from prediction_service.commands.servers.triton import LocalTriton
from prediction_service.packaging.triton_config import TritonConfigOptions, choose_platform, render_config
from prediction_service.packaging.triton_repository import remove_entry, write_entry
from prediction_service.registry import ModelVersion

TRITON_VERSION_DIR = "1"


async def publish(server: LocalTriton, version: ModelVersion, *, name: str | None = None,
                  options: TritonConfigOptions | None = None, timeout_s: float = 120.0) -> str:
    """Write ``version`` into the server's repository as entry ``name`` (default: the registry name) and load it."""
    name = name or version.name
    platform = choose_platform(None, {artifact.format for artifact in version.metadata.artifacts})
    options = (options or TritonConfigOptions()).model_copy(update={"platform": platform})
    artifact = version.artifact((platform.artifact_format,), "fp32")
    if artifact is None:
        raise ValueError(f"{version.key} has no fp32 {platform.artifact_format} artifact")
    config = render_config(name, version.signature, options)
    await asyncio.to_thread(write_entry, server.model_repository, name, TRITON_VERSION_DIR,
                            version.artifact_path(artifact), config, platform)
    client = httpclient.InferenceServerClient(server.http_url, conn_timeout=timeout_s)
    try:
        await asyncio.wait_for(client.load_model(name), timeout_s)
        if not await client.is_model_ready(name):
            raise RuntimeError(f"tritonserver loaded {name} but reports it not ready:\n{server.log_tail()}")
    finally:
        await client.close()
    return name


async def unpublish(server: LocalTriton, name: str) -> None:
    """Unload entry ``name`` and remove it from the repository (a shared server goes on with its other models)."""
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        await client.unload_model(name)
    finally:
        await client.close()
    await asyncio.to_thread(remove_entry, server.model_repository, name)


async def wait_grpc_ready(url: str, log: Callable[[], str] = str, timeout_s: float = 30.0) -> None:
    """Wait for OIP gRPC readiness on ``url`` (``log()`` goes into the error). A server that said ready over
    HTTP may still be binding its gRPC listener in a worker."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        client = grpcclient.InferenceServerClient(url)
        try:
            if await client.is_server_ready(client_timeout=1.0):
                return
        except InferenceServerException:
            pass
        finally:
            await client.close()
        if loop.time() > deadline:
            raise TimeoutError(f"gRPC on {url} not ready after {timeout_s} s:\n{log()[-3000:]}")
        await asyncio.sleep(0.1)
