"""OIP gRPC ModelInfer (a grpc.aio server on a free port over the module's Service) with generated
requests: typed contents and raw_input_contents, BYTES, wrong datatypes and shapes (huge, negative, zero,
rank > 32), contents that disagree with them, bad parameters (timeout, priority, stage) and unknown
outputs. Every call ends in OK or a documented code (never INTERNAL or UNKNOWN), the server stays ready,
and metrics and the audit log count each call once, under the status the code stands for."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import pytest
from hypothesis import given, note, strategies as st
from tritonclient.grpc import service_pb2, service_pb2_grpc

from .harness import (GRPC_ERROR_CODES, MAX_REQUEST_BYTES, PROPERTY_SETTINGS, assert_no_tracebacks, copy_store,
                      http_statuses_of, serve)
from .strategies import (BAD_NAMES, ENSEMBLE, HEADLINE, MODELS, PRICE, ROW, SENTIMENT, TINY, WINDOW, RawInput,
                         broken_raw, bytes_elements, datatypes, mostly, non_utf8, shapes)

TYPED_FIELDS = ("bool_contents", "int_contents", "int64_contents", "uint_contents", "uint64_contents",
                "fp32_contents", "fp64_contents", "bytes_contents")
FIELD_VALUES = {
    "bool_contents": st.booleans(), "int_contents": st.integers(-(2 ** 31), 2 ** 31 - 1),
    "int64_contents": st.integers(-(2 ** 63), 2 ** 63 - 1), "uint_contents": st.integers(0, 2 ** 32 - 1),
    "uint64_contents": st.integers(0, 2 ** 64 - 1), "fp32_contents": st.floats(width=32),
    "fp64_contents": st.floats(), "bytes_contents": st.one_of(st.binary(max_size=12), non_utf8),
}


@dataclass(frozen=True)
class Contents:
    """Typed contents of one input: which field, and its values."""

    field: str
    values: tuple


@dataclass(frozen=True)
class GrpcCase:
    model: str
    version: str
    inputs: tuple[RawInput, ...]
    contents: tuple[Contents | None, ...] = ()
    """Per input: typed contents instead of (or, wrongly, beside) raw_input_contents."""
    raw: tuple[bytes, ...] | None = None
    """raw_input_contents (None: the inputs' own bytes, unless they travel as typed contents)."""
    parameters: tuple[tuple[str, str, Any], ...] = ()
    """(key, InferParameter field, value)."""
    outputs: tuple[str, ...] = ()
    timeout_s: float | None = None

    def message(self) -> service_pb2.ModelInferRequest:
        request = service_pb2.ModelInferRequest(model_name=self.model, model_version=self.version, id="p-1")
        for index, tensor in enumerate(self.inputs):
            added = request.inputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
            contents = self.contents[index] if index < len(self.contents) else None
            if contents is not None:
                getattr(added.contents, contents.field).extend(contents.values)
        if self.raw is not None:
            request.raw_input_contents.extend(self.raw)
        elif not any(self.contents):
            request.raw_input_contents.extend(tensor.raw for tensor in self.inputs)
        for key, kind, value in self.parameters:
            setattr(request.parameters[key], kind, value)
        for name in self.outputs:
            request.outputs.add(name=name)
        return request


BASES = [
    (TINY, (RawInput("x", "FP32", [2, 4], np.asarray([ROW, ROW], np.float32).tobytes()),)),
    (TINY, (RawInput("x", "FP32", [1, 4], b""),), (Contents("fp32_contents", tuple(ROW)),)),
    (PRICE, (RawInput("bars", "FP64", [1, 60, 5], np.asarray([WINDOW], np.float64).tobytes()),)),
    (SENTIMENT, (RawInput("text", "BYTES", [2], bytes_elements([HEADLINE.encode(), b"Company warns"])),)),
    (SENTIMENT, (RawInput("text", "BYTES", [1], b""),), (Contents("bytes_contents", (HEADLINE.encode(),)),)),
    (ENSEMBLE, (RawInput("bars", "FP64", [1, 60, 5], np.asarray([WINDOW], np.float64).tobytes()),
                RawInput("text", "BYTES", [1], bytes_elements([HEADLINE.encode()])))),
]
PARAMETER_KINDS = {"bool_param": st.booleans(), "int64_param": st.sampled_from((0, 1, -1, 10 ** 6, 2 ** 62)),
                   "string_param": st.sampled_from(("", "production", "staging", "canary", "10", "\u202e")),
                   "double_param": st.sampled_from((0.5, -1.0, 1e300)), "uint64_param": st.just(2 ** 63)}


@st.composite
def contents_for(draw, tensor: RawInput) -> Contents:
    """Typed contents in any field (matching the datatype or not), of the shape's size or not."""
    field_name = draw(st.sampled_from(TYPED_FIELDS))
    count = int(np.prod(tensor.shape)) if all(0 <= d <= 64 for d in tensor.shape) else 3
    size = draw(mostly(min(count, 64), st.integers(0, 9)))
    return Contents(field_name, tuple(draw(st.lists(FIELD_VALUES[field_name], min_size=size, max_size=size))))


@st.composite
def typed_input(draw, tensor: RawInput) -> RawInput:
    """The tensor with another datatype or shape now and then (its contents are drawn for it after)."""
    return RawInput(tensor.name, draw(mostly(tensor.datatype, datatypes, 6)),
                    draw(mostly(tensor.shape, shapes, 6)), b"")


@dataclass(frozen=True)
class Focus:
    """How often (in tenths) each part of a case is left as the valid base has it."""

    raw: int = 9
    typed: int = 10
    raw_count: int = 9
    selector: int = 9
    parameters: int = 9
    outputs: int = 9


@st.composite
def grpc_cases(draw, focus: Focus) -> GrpcCase:
    base = draw(st.sampled_from(BASES))
    model, inputs = base[0], base[1]
    contents = base[2] if len(base) > 2 else (None,) * len(inputs)
    if draw(mostly(False, st.just(True), focus.typed)):  # typed contents, drawn for a maybe-changed tensor
        inputs = tuple(draw(typed_input(tensor)) for tensor in inputs)
        contents = tuple(draw(contents_for(tensor)) for tensor in inputs)
    elif not any(contents):
        inputs = tuple(draw(mostly(tensor, broken_raw(tensor), focus.raw)) for tensor in inputs)
    raw = draw(mostly(None, st.sampled_from((
        tuple(t.raw for t in inputs[:-1]),  # one fewer than the inputs
        tuple(t.raw for t in inputs) + (b"\x00" * 4,),  # one more
        tuple(t.raw for t in inputs),  # beside typed contents too
        (b"\x00" * (MAX_REQUEST_BYTES + 1),),  # past the message limit
    )), focus.raw_count))
    parameters = tuple(draw(mostly((), st.lists(st.tuples(
        st.sampled_from(("timeout", "priority", "stage", "routing_key", "binary_data_output", "sequence_id")),
        st.sampled_from(tuple(PARAMETER_KINDS))).flatmap(
        lambda pair: st.tuples(st.just(pair[0]), st.just(pair[1]), PARAMETER_KINDS[pair[1]])),
        min_size=1, max_size=3, unique_by=lambda p: p[0]), focus.parameters)))
    return GrpcCase(
        model=draw(mostly(model, st.sampled_from(MODELS + BAD_NAMES + ("", "a/b", "\u202e", "x" * 300)),
                          focus.selector)),
        version=draw(mostly("", st.sampled_from(("1.0.0", "2.0.0", "9.9.9", "../x", "UP", "v" * 200)),
                            focus.selector)),
        inputs=inputs, contents=contents, raw=raw, parameters=parameters,
        outputs=tuple(draw(mostly([], st.lists(st.sampled_from(("nope", "y", "price", "probabilities", "")),
                                               min_size=1, max_size=2), focus.outputs))),
        timeout_s=draw(mostly(None, st.sampled_from((60.0, 20.0)))),
    )


@pytest.fixture(scope="module")
def served(property_store_template, tmp_path_factory):
    with serve(copy_store(property_store_template, tmp_path_factory.mktemp("oip-grpc")), with_grpc=True) as app:
        yield app


async def _call(channel: grpc.aio.Channel, request: service_pb2.ModelInferRequest, timeout_s: float | None
                ) -> tuple[grpc.StatusCode, str, dict[str, str], service_pb2.ModelInferResponse | None]:
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    try:
        response = await stub.ModelInfer(request, timeout=timeout_s)
    except grpc.aio.AioRpcError as error:
        return error.code(), error.details() or "", dict(error.trailing_metadata() or ()), None
    return grpc.StatusCode.OK, "", {}, response


def _run(served, caplog, cases: st.SearchStrategy) -> None:
    @PROPERTY_SETTINGS
    @given(case=cases)
    def answered_and_counted_once(case: GrpcCase) -> None:
        note(repr(case))  # the falsifying example, in full
        request = case.message()
        before = served.counted(case.model)
        code, details, trailers, response = served.grpc_call(lambda channel: _call(channel, request, case.timeout_s))
        assert code == grpc.StatusCode.OK or code in GRPC_ERROR_CODES, f"{code}: {details}"
        if request.ByteSize() > MAX_REQUEST_BYTES:  # refused by gRPC itself: never reaches ModelInfer
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, f"{code}: {details}"
            return
        if code != grpc.StatusCode.OK:
            assert details and trailers.get("error-code"), (code, details, trailers)
        request_id = response.parameters["request_id"].string_param if response is not None else None
        served.assert_counted_once(before, http_statuses_of(code), request_id)

    answered_and_counted_once()
    served.assert_ready()
    assert_no_tracebacks(caplog.get_records("call"))


def test_raw_input_contents(served, caplog):
    _run(served, caplog, grpc_cases(Focus(raw=4, raw_count=7)))


def test_typed_contents(served, caplog):
    _run(served, caplog, grpc_cases(Focus(typed=3)))


def test_names_parameters_and_outputs(served, caplog):
    _run(served, caplog, grpc_cases(Focus(selector=6, parameters=4, outputs=5)))
