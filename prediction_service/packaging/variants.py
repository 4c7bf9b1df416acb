"""Reduced-precision ONNX variants: fp16 (float32 I/O kept) and int8 dynamic quantization."""

from __future__ import annotations

from pathlib import Path

import onnx
from onnxruntime.quantization import QuantType, quantize_dynamic
from onnxruntime.transformers.float16 import convert_float_to_float16
from onnxruntime.transformers.onnx_model import OnnxModel


def make_fp16(source: Path, target: Path) -> Path:
    """Weights and compute in fp16; ``keep_io_types`` keeps the served inputs/outputs float32."""
    model = OnnxModel(convert_float_to_float16(onnx.load(str(source)), keep_io_types=True))
    # The converter appends the input casts after their consumers; the checker wants a sorted graph.
    model.topological_sort()
    onnx.save(model.model, str(target))
    onnx.checker.check_model(str(target))
    return target


def make_int8(source: Path, target: Path) -> Path:
    """Dynamic quantization: int8 weights, activations quantized per batch at run time."""
    quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8)
    onnx.checker.check_model(str(target))
    return target
