"""MLflow model signatures (the ``signature`` block of an MLmodel file) -> the strict ModelSignature.

Read as plain JSON: MLflow writes ``inputs`` / ``outputs`` as JSON strings of column or tensor specs.
Only tensor-based specs convert: every tensor named, a numpy dtype the service serves, a shape with the
batch dimension first. Column-based (pandas) schemas, unnamed tensors, scalars and other dtypes are
refused with a message that says what to log instead.
"""

from __future__ import annotations

import json
from typing import Any

from ..errors import InvalidInput
from ..signature import ModelSignature, TensorSpec

SUPPORTED_DTYPES = ("float32", "float16", "float64", "int64", "int32", "bool")
_HINT = ("log the model with a tensor-based signature, e.g. mlflow.models.infer_signature(numpy_input, "
         "numpy_output) or a Schema of named TensorSpec(np.dtype('float32'), (-1, n), name)")


class SignatureNotConvertible(InvalidInput):
    """The MLflow signature cannot be expressed as the service's strict signature."""

    code = "signature_not_convertible"


def convert_signature(mlmodel_signature: dict[str, Any] | None) -> ModelSignature | None:
    """The strict signature for an MLmodel ``signature`` block; None when the model has none."""
    if not mlmodel_signature:
        return None
    sides = {}
    for side in ("inputs", "outputs"):
        raw = mlmodel_signature.get(side)
        if raw is None:
            raise SignatureNotConvertible(f"the MLflow signature has no {side}; {_HINT}", {"side": side})
        try:
            specs = json.loads(raw) if isinstance(raw, str) else raw
        except json.JSONDecodeError as exc:
            raise SignatureNotConvertible(f"the MLflow signature's {side} are not valid JSON: {exc}") from exc
        if not isinstance(specs, list) or not specs:
            raise SignatureNotConvertible(f"the MLflow signature declares no {side}; {_HINT}", {"side": side})
        sides[side] = [_tensor(side, index, spec) for index, spec in enumerate(specs)]
    try:
        return ModelSignature(**sides)
    except ValueError as exc:  # pydantic: duplicate names, a name the service cannot route, ...
        raise SignatureNotConvertible(f"the MLflow signature does not fit the service's signature rules: {exc}") \
            from exc


def _tensor(side: str, index: int, spec: Any) -> TensorSpec:
    where = {"side": side, "index": index}
    if not isinstance(spec, dict) or spec.get("type") != "tensor":
        kind = spec.get("type") if isinstance(spec, dict) else type(spec).__name__
        raise SignatureNotConvertible(
            f"{side}[{index}] is a column-based ({kind}) spec; only tensor-based signatures convert: {_HINT}",
            {**where, "type": kind})
    name = spec.get("name")
    if not name:
        raise SignatureNotConvertible(f"{side}[{index}] is an unnamed tensor; the service addresses tensors by "
                                      f"name (the ONNX graph's names): {_HINT}", where)
    tensor = spec.get("tensor-spec") or {}
    dtype, shape = tensor.get("dtype"), tensor.get("shape")
    if dtype not in SUPPORTED_DTYPES:
        raise SignatureNotConvertible(
            f"{side} tensor {name!r} has dtype {dtype!r}; the service serves {', '.join(SUPPORTED_DTYPES)}",
            {**where, "tensor": name, "dtype": dtype})
    if not isinstance(shape, list) or not shape or not all(isinstance(d, int) for d in shape):
        raise SignatureNotConvertible(
            f"{side} tensor {name!r} has shape {shape!r}; a shape with the batch dimension first (-1 = dynamic) "
            "is needed", {**where, "tensor": name, "shape": shape})
    try:
        return TensorSpec(name=name, dtype=dtype, shape=tuple(shape))
    except ValueError as exc:
        raise SignatureNotConvertible(f"{side} tensor {name!r} cannot be expressed: {exc}",
                                      {**where, "tensor": name}) from exc


def to_mlflow_signature(signature: ModelSignature) -> dict[str, str]:
    """The MLmodel ``signature`` block for a strict signature: named tensor specs, what convert_signature reads
    back (pre-processing such as a tokenizer is the service's own, so MLflow sees the tensors)."""
    def side(specs: list[TensorSpec]) -> str:
        return json.dumps([{"name": spec.name, "type": "tensor",
                            "tensor-spec": {"dtype": spec.dtype, "shape": list(spec.shape)}} for spec in specs])

    return {"inputs": side(list(signature.inputs)), "outputs": side(list(signature.outputs))}
