"""The gRPC door judges every tensor's shape (rank, dimensions, rows, elements) before it decodes any data:
a huge claim, a shape numpy cannot build or contents that disagree are INVALID_ARGUMENT, counted in the
metrics like any refused prediction, and never a traceback in the server's log."""

from __future__ import annotations

import logging

import grpc
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.grpc import service_pb2, service_pb2_grpc

from prediction_service import errors
from prediction_service.oip import grpc_codec as codec
from prediction_service.grpc.servicer import _rpc
from prediction_service.settings import LimitSettings
from tests.grpc.conftest import serve_grpc

Tensor = service_pb2.ModelInferRequest.InferInputTensor
MILLION = 1_000_000
LIMITS = LimitSettings()


def infer_request(shape: list[int], datatype: str = "FP32", raw: bytes | None = None,
                  fp32: list[float] | None = None, strings: list[bytes] | None = None) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name="tiny-regressor")
    tensor = request.inputs.add(name="x", datatype=datatype, shape=shape)
    if raw is not None:
        request.raw_input_contents.append(raw)
    if fp32 is not None:
        tensor.contents.fp32_contents.extend(fp32)
    if strings is not None:
        tensor.contents.bytes_contents.extend(strings)
    return request


# ---- the codec on its own ----------------------------------------------------------------------------


def refusal(request: service_pb2.ModelInferRequest) -> errors.InvalidInput:
    with pytest.raises(errors.InvalidInput) as caught:
        codec.decode_request(request, LIMITS)
    return caught.value


@pytest.mark.parametrize("datatype", ["BYTES", "FP32", "INT8"])
def test_a_huge_claim_with_short_data_is_refused_by_the_shape_alone(datatype):
    # ten billion elements over 4 bytes: a refusal that read the data would say the data is short
    error = refusal(infer_request([1, 10**10], datatype, raw=b"\0\0\0\0"))
    assert "declares 10000000000 elements" in error.message
    assert error.details["max_elements"] == LIMITS.max_tensor_elements


def test_typed_contents_are_counted_before_they_are_converted():
    assert "batch of 1000000 rows exceeds the limit of 256" in refusal(
        infer_request([MILLION], "BYTES", strings=[b""] * 10)).message
    assert "3 values in contents, expected 2" in refusal(infer_request([1, 2], strings=None, fp32=[1.0] * 3)).message
    assert "1 values in contents, expected 4" in refusal(infer_request([2, 2], "BYTES", strings=[b"a"])).message


@pytest.mark.parametrize("shape, needle", [
    ([1] * 33, "shape has 33 dimensions, at most 32"),
    ([0, 4], "zero or negative dimension"),
    ([-3, 4], "zero or negative dimension"),
], ids=["rank-33", "zero", "negative"])
def test_shapes_numpy_cannot_build_are_invalid_input(shape, needle):
    assert needle in refusal(infer_request(shape, raw=b"\0\0\0\0")).message
    assert needle in refusal(infer_request(shape, fp32=[1.0])).message


def test_the_limits_given_are_the_limits_applied():
    small = LimitSettings(max_batch_rows=2, max_tensor_elements=6, max_request_tensors=1)
    request = infer_request([2, 3], fp32=[1.0] * 6)
    assert codec.decode_request(request, small).inputs["x"].shape == (2, 3)
    with pytest.raises(errors.InvalidInput, match="batch of 3 rows exceeds the limit of 2"):
        codec.decode_request(infer_request([3, 2], fp32=[1.0] * 6), small)
    with pytest.raises(errors.InvalidInput, match="at most 6 in all"):
        codec.decode_request(infer_request([2, 4], fp32=[1.0] * 8), small)
    request.inputs.add(name="y", datatype="FP32", shape=[1]).contents.fp32_contents.append(1.0)
    with pytest.raises(errors.InvalidInput, match="2 inputs"):
        codec.decode_request(request, small)


class _Aborted(Exception):
    pass


class _Context:
    """What ``_rpc`` uses of a grpc.aio servicer context: abort, recorded."""

    def __init__(self):
        self.aborts: list[tuple[grpc.StatusCode, str]] = []

    async def abort(self, code: grpc.StatusCode, details: str, metadata: tuple = ()) -> None:
        self.aborts.append((code, details))
        raise _Aborted(details)


class BrokenHandlerError(RuntimeError):
    """Raised by the handler below: an error no table maps, as a bug would raise."""


async def test_an_unexpected_error_logs_one_line_and_one_traceback_per_interval(caplog):
    @_rpc
    async def ModelInfer(self, request, context):
        raise BrokenHandlerError("handler broke")

    caplog.set_level(logging.INFO)
    context = _Context()
    for _ in range(50):
        with pytest.raises(_Aborted):
            await ModelInfer(None, None, context)
    assert context.aborts == [(grpc.StatusCode.INTERNAL, "internal error")] * 50
    logged = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(logged) == 2, [r.getMessage() for r in logged]
    line, traceback = sorted(logged, key=lambda r: r.levelno)
    assert "ModelInfer failed: BrokenHandlerError: handler broke" in line.getMessage() and not line.exc_info
    assert traceback.exc_info and traceback.exc_info[0] is BrokenHandlerError


# ---- the real server, default limits (4 MiB messages) ----------------------------------------------


@pytest.fixture(scope="module")
def server(tiny_store_template, tmp_path_factory):
    served = serve_grpc(tiny_store_template, tmp_path_factory.mktemp("grpc-bounds"))
    yield served
    served.process.stop()


@pytest.fixture(scope="module")
def stub(server):
    with grpc.insecure_channel(server.grpc_url) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def refused_call(stub, request: service_pb2.ModelInferRequest) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(request, timeout=30)
    return caught.value


def still_serving(stub) -> None:
    answer = stub.ModelInfer(infer_request([1, 4], fp32=[1.0, 2.0, 3.0, 4.0]), timeout=30)
    assert answer.outputs[0].shape == [1, 1]


def test_a_million_empty_strings_are_invalid_argument(stub):
    raw = infer_request([MILLION], "BYTES", raw=b"\0\0\0\0" * MILLION)  # 4 MB: under the message limit
    error = refused_call(stub, raw)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "batch of 1000000 rows exceeds the limit of 256" in error.details()
    assert dict(error.trailing_metadata())["error-code"] == "invalid_input"
    typed = refused_call(stub, infer_request([1, MILLION], "BYTES", strings=[b""] * MILLION))
    assert typed.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "declares 1000000 elements" in typed.details()
    still_serving(stub)


BAD = [
    (infer_request([1] * 33, raw=b"\0\0\0\0"), "shape has 33 dimensions"),
    (infer_request([1] * 33, fp32=[1.0]), "shape has 33 dimensions"),
    (infer_request([0, 4], raw=b""), "zero or negative dimension"),
    (infer_request([-1, 4], raw=b"\0" * 16), "zero or negative dimension"),
    (infer_request([4, -1], fp32=[1.0] * 4), "zero or negative dimension"),
]


def metric(server, name: str, **labels: str) -> float:
    text = httpx.get(f"{server.http_url}/metrics", timeout=10).text
    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == name and set(labels.items()) <= set(sample.labels.items()))


def test_bad_shapes_are_invalid_argument_counted_and_not_logged(server, stub):
    refused_before = metric(server, "prediction_requests_total", status="422")
    log_before = len(server.process.log())
    sent = 0
    while sent < 50:
        for request, needle in BAD:
            error = refused_call(stub, request)
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and needle in error.details()
            sent += 1
    still_serving(stub)
    assert metric(server, "prediction_requests_total", status="422") - refused_before == sent
    assert metric(server, "prediction_requests_total", status="500") == 0
    logged = server.process.log()[log_before:]
    assert "Traceback" not in logged
    assert sum(1 for line in logged.splitlines() if "WARNING" in line or "ERROR" in line) <= 2, logged[-3000:]
