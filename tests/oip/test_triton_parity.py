"""Drop-in parity with Triton: the demo model lstm-price served by a real tritonserver and by the service,
called by the same tritonclient code with only the URL changed, over HTTP (binary and JSON tensors) and gRPC.

Both answer with the same outputs (within the model's float tolerance), the same metadata (input and output
names, datatypes, shapes: the batch dim as -1 first, as Triton reports it with max_batch_size > 0), the same
config tensors, the same health answers, and errors that reach the caller as the client's own
InferenceServerException. Skips when the tritonserver binary is missing (the shared_triton fixture does).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc.aio as grpcclient
import tritonclient.http.aio as httpclient
from tritonclient.utils import InferenceServerException

from prediction_service.commands.servers.triton import LocalTriton
from prediction_service.registry import ModelRegistry, ModelVersion
from tests.support.oip import publish, unpublish, wait_grpc_ready
from tests.support.server import start_server

pytestmark = pytest.mark.triton

MODEL = "lstm-price"
TOLERANCE = {"rtol": 1e-4, "atol": 1e-4}  # the packaging's own fp32 parity bound (max_abs_error 1e-4)
ROWS = 4
DOORS = [pytest.param(httpclient, True, id="http-binary"), pytest.param(httpclient, False, id="http-json"),
         pytest.param(grpcclient, True, id="grpc")]

Tensors = list[tuple[str, str, list[int]]]


@dataclass(frozen=True)
class Urls:
    http: str
    grpc: str

    def of(self, client: ModuleType) -> str:
        return self.grpc if client is grpcclient else self.http


@dataclass(frozen=True)
class Observed:
    """What a tritonclient user sees of one server."""

    live: bool
    ready: bool
    model_ready: bool
    inputs: Tensors
    outputs: Tensors
    config_inputs: Tensors
    config_outputs: Tensors
    batched: bool
    results: dict[str, np.ndarray]


def tensors(entries: list[dict[str, Any]], kind: str = "datatype", dims: str = "shape") -> Tensors:
    # gRPC's JSON form spells int64 dims as strings; int() makes both protocols comparable.
    return [(entry["name"], entry[kind], [int(d) for d in entry[dims]]) for entry in entries]


async def observe(url: str, client: ModuleType, batch: dict[str, np.ndarray], *, binary: bool = True) -> Observed:
    """The one tritonclient function: health, metadata, config and one inference of ``batch``."""
    json_form = {"as_json": True} if client is grpcclient else {}
    binary_data = {"binary_data": binary} if client is httpclient else {}
    triton = client.InferenceServerClient(url)
    try:
        metadata = await triton.get_model_metadata(MODEL, **json_form)
        config = await triton.get_model_config(MODEL, **json_form)
        config = config.get("config", config)  # gRPC wraps it in ModelConfigResponse
        inputs = []
        for name, array in batch.items():
            tensor = client.InferInput(name, list(array.shape), "FP32")
            tensor.set_data_from_numpy(array, **binary_data)
            inputs.append(tensor)
        requested = [client.InferRequestedOutput(entry["name"], **binary_data) for entry in metadata["outputs"]]
        result = await triton.infer(MODEL, inputs, outputs=requested)
        return Observed(
            live=await triton.is_server_live(), ready=await triton.is_server_ready(),
            model_ready=await triton.is_model_ready(MODEL),
            inputs=tensors(metadata["inputs"]), outputs=tensors(metadata["outputs"]),
            config_inputs=tensors(config["input"], "data_type", "dims"),
            config_outputs=tensors(config["output"], "data_type", "dims"),
            batched=int(config.get("max_batch_size", 0)) > 0,
            results={entry["name"]: result.as_numpy(entry["name"]) for entry in metadata["outputs"]},
        )
    finally:
        await triton.close()


async def assert_refused(url: str, client: ModuleType, model: str, batch: dict[str, np.ndarray]) -> None:
    triton = client.InferenceServerClient(url)
    try:
        inputs = []
        for name, array in batch.items():
            tensor = client.InferInput(name, list(array.shape), "FP32")
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        with pytest.raises(InferenceServerException) as caught:
            await triton.infer(model, inputs)
        assert caught.value.message(), "the server says why"
    finally:
        await triton.close()


@pytest.fixture(scope="module")
def lstm(demo_store: Path) -> ModelVersion:
    return ModelRegistry(demo_store).resolve(MODEL, stage="production")


@pytest.fixture(scope="module")
def tritonserver(shared_triton: LocalTriton, lstm: ModelVersion) -> Iterator[Urls]:
    name = asyncio.run(publish(shared_triton, lstm))
    try:
        yield Urls(http=shared_triton.http_url, grpc=shared_triton.grpc_url)
    finally:
        asyncio.run(unpublish(shared_triton, name))


@pytest.fixture(scope="module")
def service(demo_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Urls]:
    server = start_server(demo_store, tmp_path_factory.mktemp("oip-parity"), grpc=True)
    try:
        urls = Urls(http=f"127.0.0.1:{server.port}", grpc=f"127.0.0.1:{server.grpc_port}")
        asyncio.run(wait_grpc_ready(urls.grpc, server.log))
        yield urls
    finally:
        server.stop()


@pytest.mark.parametrize(("client", "binary"), DOORS)
async def test_same_outputs_and_metadata_as_tritonserver(tritonserver, service, lstm, client, binary):
    batch = lstm.signature.synthetic_inputs(ROWS, seed=7)
    expected = await observe(tritonserver.of(client), client, batch, binary=binary)
    got = await observe(service.of(client), client, batch, binary=binary)

    assert (got.live, got.ready, got.model_ready) == (expected.live, expected.ready, expected.model_ready) \
        == (True, True, True)
    assert expected.inputs == [("ohlcv", "FP32", [-1, 60, 5])]  # what tritonserver reports for this config
    # One deliberate addition: the raw OHLCV input the service turns into ohlcv itself (the version declares
    # a bars step), listed after the model's tensors as a text model lists "text".
    assert got.inputs == expected.inputs + [("bars", "FP64", [-1, -1, 5])]
    assert got.outputs == expected.outputs == [("price", "FP32", [-1, 1])]
    assert got.batched and expected.batched
    assert expected.config_inputs == [("ohlcv", "TYPE_FP32", [60, 5])]
    assert got.config_inputs == expected.config_inputs + [("bars", "TYPE_FP64", [-1, 5])]
    assert got.config_outputs == expected.config_outputs
    assert got.results.keys() == expected.results.keys() == {"price"}
    for name, want in expected.results.items():
        assert got.results[name].dtype == want.dtype == np.float32
        assert got.results[name].shape == want.shape == (ROWS, 1)
        np.testing.assert_allclose(got.results[name], want, **TOLERANCE)


@pytest.mark.parametrize("client", [httpclient, grpcclient], ids=["http", "grpc"])
async def test_errors_reach_the_caller_as_inference_server_exceptions(tritonserver, service, lstm, client):
    """Client code written against Triton catches the service's failures the same way (messages and
    status codes are each server's own)."""
    good = lstm.signature.synthetic_inputs(1)
    bad_shape = {name: array[:, :-1] for name, array in good.items()}
    for urls in (tritonserver, service):
        await assert_refused(urls.of(client), client, "no-such-model", good)
        await assert_refused(urls.of(client), client, MODEL, bad_shape)
