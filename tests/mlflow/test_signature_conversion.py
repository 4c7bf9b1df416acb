"""MLmodel signature blocks (as MLflow writes them: JSON strings) -> the strict ModelSignature. No server."""

from __future__ import annotations

import json

import pytest

from prediction_service.mlflow_bridge import SignatureNotConvertible, convert_signature


def _block(inputs, outputs=None) -> dict:
    outputs = outputs if outputs is not None else [
        {"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 1]}, "name": "y"}]
    return {"inputs": json.dumps(inputs), "outputs": json.dumps(outputs)}


def test_tensor_signature_converts():
    sig = convert_signature(_block([
        {"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 30, 5]}, "name": "ohlcv"},
        {"type": "tensor", "tensor-spec": {"dtype": "int64", "shape": [-1, 16]}, "name": "input_ids"}]))
    assert [(s.name, s.dtype, s.shape) for s in sig.inputs] == [("ohlcv", "float32", (-1, 30, 5)),
                                                                ("input_ids", "int64", (-1, 16))]
    assert sig.outputs[0].name == "y"


def test_no_signature_is_none():
    assert convert_signature(None) is None and convert_signature({}) is None


@pytest.mark.parametrize("spec, message", [
    ({"type": "double", "name": "open"}, "column-based (double)"),
    ({"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 4]}}, "unnamed tensor"),
    ({"type": "tensor", "tensor-spec": {"dtype": "str", "shape": [-1]}, "name": "text"}, "dtype 'str'"),
    ({"type": "tensor", "tensor-spec": {"dtype": "uint8", "shape": [-1, 4]}, "name": "x"}, "dtype 'uint8'"),
    ({"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": []}, "name": "x"}, "batch dimension first"),
    ({"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 0]}, "name": "x"}, "cannot be expressed"),
    ({"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 4]}, "name": "a b"}, "cannot be expressed"),
])
def test_unconvertible_specs_are_refused_with_the_reason(spec, message):
    with pytest.raises(SignatureNotConvertible, match="inputs") as info:
        convert_signature(_block([spec]))
    assert message in info.value.message


def test_duplicate_names_and_missing_outputs_are_refused():
    x = {"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 4]}, "name": "y"}
    with pytest.raises(SignatureNotConvertible, match="unique"):
        convert_signature(_block([x]))
    with pytest.raises(SignatureNotConvertible, match="no outputs"):
        convert_signature({"inputs": json.dumps([x])})
