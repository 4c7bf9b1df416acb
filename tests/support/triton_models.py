"""Small real ONNX models and registry versions for the Triton adapter tests and bench.

The price model mimics a windowed predictor: ``features`` [batch, 6, 4] and ``scale`` [batch, 1]
-> ``prediction`` [batch, 3] = tanh(flatten(features) @ W + b) * scale.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from prediction_service.registry import ModelVersion, VersionMetadata
from prediction_service.registry.writer import ArtifactSource, register_version
from prediction_service.signature import ModelSignature, TensorSpec

WINDOW, FEATURES, OUTPUTS = 6, 4, 3

PRICE_SIGNATURE = ModelSignature(
    inputs=[
        TensorSpec(name="features", dtype="float32", shape=(-1, WINDOW, FEATURES)),
        TensorSpec(name="scale", dtype="float32", shape=(-1, 1)),
    ],
    outputs=[TensorSpec(name="prediction", dtype="float32", shape=(-1, OUTPUTS))],
    max_batch_size=64,
)


def build_price_onnx(path: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    weight = rng.normal(size=(WINDOW * FEATURES, OUTPUTS)).astype(np.float32) * 0.3
    bias = rng.normal(size=(OUTPUTS,)).astype(np.float32)
    nodes = [
        helper.make_node("Reshape", ["features", "flat_shape"], ["flat"]),
        helper.make_node("MatMul", ["flat", "weight"], ["linear"]),
        helper.make_node("Add", ["linear", "bias"], ["shifted"]),
        helper.make_node("Tanh", ["shifted"], ["activated"]),
        helper.make_node("Mul", ["activated", "scale"], ["prediction"]),
    ]
    graph = helper.make_graph(
        nodes,
        "price",
        inputs=[
            helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", WINDOW, FEATURES]),
            helper.make_tensor_value_info("scale", TensorProto.FLOAT, ["batch", 1]),
        ],
        outputs=[helper.make_tensor_value_info("prediction", TensorProto.FLOAT, ["batch", OUTPUTS])],
        initializer=[
            numpy_helper.from_array(np.array([-1, WINDOW * FEATURES], dtype=np.int64), "flat_shape"),
            numpy_helper.from_array(weight, "weight"),
            numpy_helper.from_array(bias, "bias"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def register_price_version(registry: Path, name: str, version: str, work_dir: Path, seed: int = 0) -> ModelVersion:
    """Build the ONNX file and register it as a real registry version."""
    work_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = build_price_onnx(work_dir / f"{name}-{version}.onnx", seed)
    # register_version fills in the artifact list from the copied file (real sha256 and size).
    metadata = VersionMetadata(name=name, version=version, signature=PRICE_SIGNATURE, description="toy price model")
    return register_version(registry, metadata, [ArtifactSource(onnx_path, "onnx", file_name="model.onnx")])


def price_batch(rows: int, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "features": rng.normal(size=(rows, WINDOW, FEATURES)).astype(np.float32),
        "scale": rng.uniform(0.5, 2.0, size=(rows, 1)).astype(np.float32),
    }
