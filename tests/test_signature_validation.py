"""ModelSignature.validate_inputs: the strict casts every door relies on (one finiteness pass per tensor)."""

from __future__ import annotations

import numpy as np
import pytest

from prediction_service.errors import InvalidInput
from prediction_service.signature import ModelSignature, TensorSpec


def signature(dtype: str) -> ModelSignature:
    return ModelSignature(inputs=[TensorSpec(name="x", dtype=dtype, shape=(-1, 2))],
                          outputs=[TensorSpec(name="y", dtype="float32", shape=(-1, 1))])


@pytest.mark.parametrize("dtype, value, message", [
    ("float32", [[1.0, float("nan")]], "NaN or Inf"),
    ("float32", [[1.0, float("inf")]], "NaN or Inf"),
    ("float32", [[1.0, 1e308]], "overflows float32"),
    ("float16", [[1, 100_000]], "overflows float16"),  # an integer past float16's range
    ("int32", [[1, 2**40]], "overflows int32"),
    ("float32", [[True, False]], "has dtype bool"),
    ("float32", [["1.5", "2"]], "must be numeric"),
    ("int64", [[1.5, 2.0]], "has dtype float64"),
    ("float32", [[1.0], [2.0, 3.0]], "rectangular"),
])
def test_unsafe_values_are_refused(dtype, value, message):
    with pytest.raises(InvalidInput, match=message):
        signature(dtype).validate_inputs({"x": value})


@pytest.mark.parametrize("dtype, value", [
    ("float32", [[1, 2]]), ("float32", [[1.5, -2.25]]), ("float16", [[0.5, 2]]), ("int32", [[1, 2]]),
    ("float32", np.array([[1.5, 2.0]], dtype=np.float32)), ("bool", [[True, False]]),
])
def test_safe_values_arrive_contiguous_in_the_declared_dtype(dtype, value):
    array = signature(dtype).validate_inputs({"x": value})["x"]
    assert array.dtype == np.dtype(dtype) and array.flags.c_contiguous
    np.testing.assert_array_equal(array, np.asarray(value).astype(dtype))
