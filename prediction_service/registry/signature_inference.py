"""Signatures from ONNX graphs, and the smoke run that checks a signature against the model itself.

Inference reads names, dtypes and shapes from the graph (symbolic or unknown dims become -1).
The smoke run feeds generated inputs of the signature to the ONNX runtime that serves the model
(runtimes.OnnxRuntime, one thread) and checks that the outputs carry the declared names, dtypes and
shapes; it is what a version gets as validation when no numeric-parity report comes with it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..errors import InvalidInput, ValidationFailed
from ..execution.runtimes import OnnxRuntime
from ..signature import ModelSignature, TensorSpec
from .model_version import ValidationReport
from .onnx_wire import GraphInterface, UnusualLayout, graph_interface, write_external_weights_model

_SUPPORTED_DTYPES = ("float32", "float16", "float64", "int64", "int32", "bool")
SMOKE_BATCH = 2
"""Rows fed to a dynamic batch dim: 2, so a model that silently assumes batch 1 fails."""
SMOKE_DYNAMIC_DIM = 4
"""Size used for other dynamic dims (sequence length, ...)."""


def _onnx_dtype(elem_type: int, tensor: str) -> str:
    import onnx

    try:
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)).name
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidInput(f"tensor {tensor!r} has an ONNX element type this service cannot serve ({elem_type})") from exc
    if dtype not in _SUPPORTED_DTYPES:
        raise InvalidInput(f"tensor {tensor!r} has dtype {dtype}; supported: {', '.join(_SUPPORTED_DTYPES)}",
                           {"tensor": tensor, "dtype": dtype})
    return dtype


def _specs(values: Any, initializers: set[str]) -> list[TensorSpec]:
    specs = []
    for value in values:
        if value.name in initializers:  # old exporters list weights as graph inputs
            continue
        tensor_type = value.type.tensor_type
        if not tensor_type.HasField("shape"):
            raise InvalidInput(f"tensor {value.name!r} has no shape in the ONNX graph; give the signature explicitly")
        shape = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1
                      for d in tensor_type.shape.dim)
        specs.append(TensorSpec(name=value.name, dtype=_onnx_dtype(tensor_type.elem_type, value.name),
                                shape=shape or (1,)))
    return specs


def infer_signature(
    onnx_path: Path,
    *,
    task: Literal["regression", "classification"] = "regression",
    labels: list[str] | None = None,
) -> ModelSignature:
    """The signature an ONNX file declares. A fixed batch dim also caps ``max_batch_size``."""
    graph = _interface(Path(onnx_path))
    inputs, outputs = _specs(graph.inputs, graph.initializer_names), _specs(graph.outputs, set())
    if not inputs or not outputs:
        raise InvalidInput(f"{Path(onnx_path).name} declares no inputs or no outputs")
    batch_dims = {spec.shape[0] for spec in inputs}
    fixed_batch = next(iter(batch_dims)) if len(batch_dims) == 1 and -1 not in batch_dims else None
    extra: dict[str, Any] = {"max_batch_size": fixed_batch} if fixed_batch else {}
    return ModelSignature(inputs=inputs, outputs=outputs, task=task, labels=labels, **extra)


def _interface(onnx_path: Path) -> GraphInterface:
    """Inputs, outputs and initializer names, read past the weights (onnx.load would hold them twice)."""
    try:
        return graph_interface(onnx_path)
    except UnusualLayout:
        pass
    except OSError as exc:
        raise InvalidInput(f"{onnx_path.name} is not a readable ONNX model: {exc}") from exc
    import onnx

    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError / ValueError / OSError for bad files
        raise InvalidInput(f"{onnx_path.name} is not a readable ONNX model: {exc}") from exc
    graph = model.graph
    return GraphInterface(inputs=list(graph.input), outputs=list(graph.output),
                          initializer_names={init.name for init in graph.initializer})


@contextmanager
def _lean_model(onnx_path: Path, scratch: Path | None) -> Iterator[Path]:
    """``onnx_path``, or where possible a small copy of it in ``scratch`` whose large weights are read from a
    hard link of the file (ONNX external data): ONNX Runtime then maps them instead of holding the file's
    bytes and its parsed weights at once. ``scratch`` must be on the file's filesystem (a private directory
    removed afterwards); without one, or when linking fails, the file itself."""
    if scratch is None:
        yield onnx_path
        return
    data, lean = scratch / "weights.bin", scratch / "model.onnx"
    try:
        os.link(onnx_path, data)
        written = write_external_weights_model(onnx_path, lean, data.name)
    except (OSError, UnusualLayout):  # another filesystem, no hard links, an unusual file: the plain path
        written = False
    try:
        yield lean if written else onnx_path
    finally:
        lean.unlink(missing_ok=True)
        data.unlink(missing_ok=True)


def _compatible(declared: TensorSpec, actual: TensorSpec) -> bool:
    """Same dtype and rank; where both fix a dim they agree (a signature may pin a dim the graph leaves open)."""
    if declared.dtype != actual.dtype or len(declared.shape) != len(actual.shape):
        return False
    return all(d == a or d == -1 or a == -1 for d, a in zip(declared.shape, actual.shape))


def _check_against_graph(signature: ModelSignature, graph_signature: ModelSignature) -> None:
    problems = []
    for side in ("inputs", "outputs"):
        declared = {s.name: s for s in getattr(signature, side)}
        actual = {s.name: s for s in getattr(graph_signature, side)}
        if declared.keys() != actual.keys():
            problems.append({side: "names differ", "signature": sorted(declared), "model": sorted(actual)})
            continue
        for name, spec in declared.items():
            if not _compatible(spec, actual[name]):
                problems.append({"tensor": name, "signature": [spec.dtype, list(spec.shape)],
                                 "model": [actual[name].dtype, list(actual[name].shape)]})
    if problems:
        raise ValidationFailed("the signature does not match the ONNX graph", {"problems": problems})


def smoke_inputs(signature: ModelSignature, seed: int = 0) -> dict[str, np.ndarray]:
    """Deterministic inputs of the signature (see ModelSignature.synthetic_inputs)."""
    return signature.synthetic_inputs(SMOKE_BATCH, seed=seed, dynamic_dim=SMOKE_DYNAMIC_DIM)


def smoke_test(onnx_path: Path, signature: ModelSignature, scratch: Path | None = None) -> ValidationReport:
    """Run the model once on generated inputs; raise ValidationFailed unless the outputs match the signature.
    ``scratch``: a private directory on the file's filesystem, which lets the run map the weights in place."""
    _check_against_graph(signature, infer_signature(onnx_path))
    inputs = smoke_inputs(signature)
    try:
        with _lean_model(Path(onnx_path), scratch) as model_path:
            runtime = OnnxRuntime(model_path, signature, threads=1)
            results = runtime.run(inputs)
            options = runtime.options
    except Exception as exc:  # ModelLoadError when it cannot open; ORT's own Fail/InvalidArgument/... when a run fails
        raise ValidationFailed(f"the model failed its smoke run: {exc}", {"inputs": _shapes(inputs)}) from exc
    batch = next(iter(inputs.values())).shape[0]
    problems = []
    for spec in signature.outputs:
        got = np.asarray(results[spec.name])
        expected = tuple(batch if (axis == 0 and d == -1) else d for axis, d in enumerate(spec.shape))
        rank_ok = got.ndim == len(expected)
        dims_ok = rank_ok and all(e in (-1, g) for e, g in zip(expected, got.shape))
        if not dims_ok or got.dtype.name != spec.dtype:
            problems.append({"output": spec.name, "expected": [spec.dtype, list(expected)],
                             "got": [got.dtype.name, list(got.shape)]})
        elif got.dtype.kind == "f" and not np.isfinite(got).all():
            problems.append({"output": spec.name, "problem": "NaN or Inf on smoke inputs"})
    if problems:
        raise ValidationFailed("model outputs do not match the signature", {"problems": problems})
    return ValidationReport(passed=True, kind="smoke", details={
        "runtime": options["runtime"],
        "inputs": _shapes(inputs),
        "outputs": _shapes(results),
    })


def _shapes(arrays: dict[str, Any]) -> dict[str, list[int]]:
    return {name: list(np.asarray(a).shape) for name, a in arrays.items()}
