"""Static (calibrated) int8 quantization of an ONNX graph, the option for models dynamic int8 hurts.

Dynamic quantization (variants.make_int8) measures each activation's range per batch at run time and
quantizes every MatMul and the embedding tables per tensor; on a small pretrained encoder with a sharp
classifier head that moves too many answers. Here ONNX Runtime's ``quantize_static`` writes a QDQ graph:
weights int8 per output channel, activation ranges measured once on calibration inputs the caller gives
(never the validation set, so validation stays an honest check), and only the nodes a recipe names are
quantized: the sensitive rest (e.g. a transformer's feed-forward blocks whose GELU outputs have outliers,
LayerNorm, Softmax, a classifier head) stays fp32. The result is validated like any variant, against the
same tolerances.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                      quantize_static)
from onnxruntime.quantization.shape_inference import quant_pre_process
from pydantic import BaseModel, ConfigDict, Field

from ..errors import InvalidInput

_CALIBRATION_METHODS = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                        "entropy": CalibrationMethod.Entropy}


class StaticInt8Options(BaseModel):
    """How to build the int8 variant by static quantization (PackagingOptions.int8_static)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    op_types: tuple[str, ...] = ("MatMul",)
    """ONNX op types that may be quantized."""
    nodes: tuple[str, ...] = ()
    """Regular expressions (``re.search``) over ONNX node names (the torch exporter names them after the module
    path, e.g. ``/encoder/encoder/layer.0/attention/self/query/MatMul``): only matching nodes of ``op_types`` are
    quantized; empty = all of them."""
    exclude: tuple[str, ...] = ()
    """Regular expressions over ONNX node names kept fp32 even when ``nodes`` matches them."""
    constant_weights_only: bool = True
    """Quantize only nodes with a constant (initializer) input, i.e. layers with weights: activation x
    activation products such as attention scores stay fp32."""
    per_channel: bool = True
    """One weight scale per output channel instead of one per tensor."""
    calibration: Literal["minmax", "percentile", "entropy"] = "minmax"
    """How activation ranges are taken from the calibration outputs (percentile and entropy build histograms
    and need every calibration batch of one shape)."""
    calibration_batch: int = Field(16, ge=1)
    """Rows per calibration run when the calibration rows come as one set of tensors."""


class QuantizationSummary(BaseModel):
    """How a static int8 variant was made, for metadata.json (validation details, ``quantization``)."""

    method: Literal["static"] = "static"
    format: Literal["QDQ"] = "QDQ"
    per_channel: bool
    op_types: list[str]
    quantized_nodes: int
    """Nodes of ``op_types`` that were quantized."""
    fp32_nodes: int
    """Nodes of ``op_types`` left in fp32 by the recipe."""
    calibration: str | None = None
    calibration_rows: int | None = None


Calibration = dict[str, np.ndarray] | list[dict[str, np.ndarray]]
"""Calibration rows: one set of input tensors (run in slices of ``calibration_batch`` rows), or a list of
batches run as given (e.g. texts tokenized batch by batch, each padded to its own longest, as served)."""


def calibration_batches(inputs: Calibration, batch: int) -> list[dict[str, np.ndarray]]:
    if isinstance(inputs, list):
        return inputs
    rows = len(next(iter(inputs.values()), []))
    return [{name: np.ascontiguousarray(array[start : start + batch]) for name, array in inputs.items()}
            for start in range(0, rows, batch)]


class _BatchReader(CalibrationDataReader):
    """Feeds ONNX Runtime's calibrator one batch per model run."""

    def __init__(self, batches: list[dict[str, np.ndarray]]):
        self._batches = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def select_nodes(model: onnx.ModelProto, options: StaticInt8Options) -> tuple[list[str], list[str]]:
    """(nodes to quantize, candidate nodes left fp32) among the graph's nodes of ``options.op_types``."""
    constants = {initializer.name for initializer in model.graph.initializer}
    candidates = [node for node in model.graph.node if node.op_type in options.op_types
                  and (not options.constant_weights_only or any(i in constants for i in node.input))]
    chosen, kept = [], []
    for node in candidates:
        wanted = not options.nodes or any(re.search(pattern, node.name) for pattern in options.nodes)
        excluded = any(re.search(pattern, node.name) for pattern in options.exclude)
        (chosen if wanted and not excluded else kept).append(node.name)
    return chosen, kept


def make_int8_static(source: Path, target: Path, options: StaticInt8Options,
                     calibration_inputs: Calibration) -> QuantizationSummary:
    """QDQ int8 graph of ``source`` at ``target``, activation ranges calibrated on ``calibration_inputs``."""
    batches = calibration_batches(calibration_inputs, options.calibration_batch)
    rows = sum(len(next(iter(batch.values()), [])) for batch in batches)
    if rows == 0:
        raise InvalidInput("static int8 quantization needs calibration inputs (rows of the model's inputs)")
    with tempfile.TemporaryDirectory(prefix="int8-static-", dir=target.parent) as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        # ONNX shape inference + ORT's basic graph fusions, as ORT's quantization tool asks; the symbolic shape
        # pass is skipped: it cannot resolve the dynamic token axis of a text model
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        chosen, kept = select_nodes(onnx.load(str(prepared), load_external_data=False), options)
        if not chosen:  # quantize_static reads an empty node list as "all nodes"
            raise InvalidInput("the static int8 recipe selects no node of the graph",
                               {"op_types": list(options.op_types), "nodes": list(options.nodes),
                                "exclude": list(options.exclude)})
        quantize_static(str(prepared), str(target), _BatchReader(batches),
                        quant_format=QuantFormat.QDQ, per_channel=options.per_channel,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        op_types_to_quantize=list(options.op_types), nodes_to_quantize=chosen,
                        calibrate_method=_CALIBRATION_METHODS[options.calibration])
    onnx.checker.check_model(str(target))
    return QuantizationSummary(per_channel=options.per_channel,
                               op_types=list(options.op_types), quantized_nodes=len(chosen),
                               fp32_nodes=len(kept), calibration=options.calibration, calibration_rows=rows)
