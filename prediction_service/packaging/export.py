"""PyTorch -> TorchScript and ONNX, checked; plus an ONNX Runtime graph-optimised copy.

torch is imported by the functions that need it: a packaging child that only optimises an ONNX graph or
checks a converted tree model does not pay for it.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import onnx
import onnxruntime as ort

from ..errors import ValidationFailed
from ..signature import ModelSignature

if TYPE_CHECKING:
    import torch
    from torch import nn

OnnxOptimization = Literal["disabled", "basic", "extended"]
TorchScriptMethod = Literal["auto", "script", "trace"]

log = logging.getLogger(__name__)
_ORT_LEVELS = {
    "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
}


def _example_args(signature: ModelSignature, example: dict[str, np.ndarray]) -> tuple[torch.Tensor, ...]:
    import torch

    return tuple(torch.from_numpy(np.ascontiguousarray(example[spec.name])) for spec in signature.inputs)


def export_torchscript(model: nn.Module, signature: ModelSignature, example: dict[str, np.ndarray],
                       path: Path, method: TorchScriptMethod = "auto") -> TorchScriptMethod:
    """Compile, freeze and optimise for inference; the saved file loads with ``torch.jit.load`` (no pickle).

    ``script`` keeps shape- and device-dependent code (an LSTM's zero state follows its input's device);
    ``trace`` bakes what one example run did. ``auto`` scripts and falls back to tracing for code the
    TorchScript compiler cannot handle. Returns the method used.
    """
    import torch

    model.eval()
    compiled = None
    if method in ("auto", "script"):
        try:
            compiled, method = torch.jit.script(model), "script"
        except Exception as exc:  # the compiler raises many types for unsupported Python; tracing may still work
            if method == "script":
                raise ValidationFailed(f"torch.jit.script failed: {exc}") from exc
            log.info("torch.jit.script failed (%s); tracing instead", str(exc).splitlines()[0])
    if compiled is None:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            compiled, method = torch.jit.trace(model, _example_args(signature, example), check_trace=False), "trace"
    with torch.no_grad():
        optimized = torch.jit.optimize_for_inference(torch.jit.freeze(compiled.eval()))
    torch.jit.save(optimized, str(path))
    return method


def export_onnx(model: nn.Module, signature: ModelSignature, example: dict[str, np.ndarray], path: Path,
                opset: int = 17) -> Path:
    """Export with the signature's tensor names and dynamic batch (and other -1) axes, then check the graph.

    The TorchScript-based exporter (``dynamo=False``) is used: it handles the zoo's LSTMs with a
    symbolic batch dim and needs no extra dependencies.
    """
    import torch

    model.eval()
    # Every dynamic (-1) dim of the signature stays symbolic: the batch, and e.g. a text model's token dim
    # when it is padded to each request's longest text.
    dynamic_axes = {spec.name: {axis: "batch" if axis == 0 else f"{spec.name}_{axis}"
                                for axis, dim in enumerate(spec.shape) if axis == 0 or dim == -1}
                    for spec in signature.inputs + signature.outputs}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation notice of the TorchScript exporter, tracer notes
        torch.onnx.export(
            model, _example_args(signature, example), str(path),
            input_names=[s.name for s in signature.inputs],
            output_names=[s.name for s in signature.outputs],
            dynamic_axes=dynamic_axes,
            opset_version=opset,
            dynamo=False,
        )
    check_onnx(path, signature)
    return path


def check_onnx(path: Path, signature: ModelSignature) -> None:
    """onnx.checker plus: tensor names match the signature and the batch axis is symbolic."""
    onnx.checker.check_model(str(path), full_check=True)
    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    io = {"inputs": [v for v in graph.input if v.name not in initializers], "outputs": list(graph.output)}
    for kind, specs in (("inputs", signature.inputs), ("outputs", signature.outputs)):
        got = [v.name for v in io[kind]]
        want = [s.name for s in specs]
        if got != want:
            raise ValidationFailed(f"exported ONNX {kind} {got} do not match the signature {want}")
        for value in io[kind]:
            batch_dim = value.type.tensor_type.shape.dim[0]
            if not batch_dim.dim_param:
                raise ValidationFailed(f"ONNX {kind[:-1]} {value.name!r} has a fixed batch dimension")


def optimize_onnx(source: Path, target: Path, level: OnnxOptimization = "basic") -> Path:
    """Let ONNX Runtime apply its graph optimisations and save the result.

    ``basic`` keeps standard ONNX ops only (portable to any runtime, Triton included); ``extended``
    adds ONNX Runtime fusions; "all" is not offered because its layout changes tie a file to one CPU.
    """
    options = ort.SessionOptions()
    options.graph_optimization_level = _ORT_LEVELS[level]
    options.optimized_model_filepath = str(target)
    ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
    onnx.checker.check_model(str(target))
    return target
