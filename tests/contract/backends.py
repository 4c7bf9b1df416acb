"""Adapters under the contract suite. Each entry makes a ready adapter for a settings object;
remote backends add an entry that starts (or reuses) their real server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from prediction_service.adapters.base import ServingAdapter
from prediction_service.adapters.simple import SimpleAdapter
from prediction_service.settings import Settings


@asynccontextmanager
async def simple_onnx(settings: Settings) -> AsyncIterator[ServingAdapter]:
    adapter = SimpleAdapter(settings)
    yield adapter
    await adapter.close()


@asynccontextmanager
async def simple_torchscript(settings: Settings) -> AsyncIterator[ServingAdapter]:
    adapter = SimpleAdapter(settings)
    adapter.formats = ("torchscript",)  # the same adapter through its PyTorch runtime
    yield adapter
    await adapter.close()


@asynccontextmanager
async def torchscript(settings: Settings) -> AsyncIterator[ServingAdapter]:
    from prediction_service.adapters.torchscript import TorchScriptAdapter

    adapter = TorchScriptAdapter(settings)
    yield adapter
    await adapter.close()


@asynccontextmanager
async def torchserve(settings: Settings, server) -> AsyncIterator[ServingAdapter]:
    from prediction_service.adapters.torchserve import TorchServeAdapter
    from prediction_service.settings import TorchServeSettings

    config = TorchServeSettings(inference_url=server.inference_url, management_url=server.management_url,
                                model_store=server.model_store)
    adapter = TorchServeAdapter(settings.model_copy(update={"torchserve": config}))
    yield adapter
    await adapter.close()


def triton(use_grpc: bool):
    @asynccontextmanager
    async def start(settings: Settings, server) -> AsyncIterator[ServingAdapter]:
        from prediction_service.adapters.triton import TritonAdapter
        from prediction_service.settings import TritonSettings

        config = TritonSettings(server_url=server.http_url, server_grpc_url=server.grpc_url,
                                model_repository=server.model_repository, use_grpc=use_grpc)
        adapter = TritonAdapter(settings.model_copy(update={"triton": config}))
        yield adapter
        await adapter.close()
    return start


# name -> (context manager factory, fixture naming the real server it needs, or None)
BACKENDS: dict[str, tuple[Callable, str | None]] = {
    "simple-onnx": (simple_onnx, None),
    "simple-torchscript": (simple_torchscript, None),
    "torchscript": (torchscript, None),
    "torchserve": (torchserve, "shared_torchserve"),
    "triton-http": (triton(use_grpc=False), "shared_triton"),
    "triton-grpc": (triton(use_grpc=True), "shared_triton"),
}
