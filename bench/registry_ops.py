"""Print how long registry operations take on this machine: register (with smoke run), promote, resolve.

    PYTHONPATH=. python bench/registry_ops.py [--promotions 200] [--resolves 20000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from prediction_service.registry import ArtifactSource, ModelRegistry


def _tiny_onnx(path: Path, seed: int) -> Path:
    weights = np.random.default_rng(seed).standard_normal((4, 2)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["features", "w"], ["prediction"])], "tiny",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("prediction", TensorProto.FLOAT, ["batch", 2])],
        [numpy_helper.from_array(weights, "w")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--promotions", type=int, default=200)
    parser.add_argument("--resolves", type=int, default=20_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        registry = ModelRegistry(root / "store")
        started = time.perf_counter()
        for i in range(2):
            model = _tiny_onnx(root / f"m{i}.onnx", seed=i)
            registry.register("bench", f"1.{i}.0", [ArtifactSource(path=model, format="onnx")])
        print(f"register (copy + sha256 + signature inference + smoke run): "
              f"{(time.perf_counter() - started) / 2 * 1e3:.1f} ms per version", flush=True)
        started = time.perf_counter()
        for i in range(args.promotions):
            registry.promote("bench", f"1.{i % 2}.0", actor="bench")
        per = (time.perf_counter() - started) / args.promotions
        print(f"promote (lock + reconcile check + link + 2 metadata writes + events): {per * 1e3:.2f} ms", flush=True)
        started = time.perf_counter()
        for _ in range(args.resolves):
            registry.reader.resolve("bench")
        per = (time.perf_counter() - started) / args.resolves
        print(f"resolve production (readlink + stat, cached metadata): {per * 1e6:.1f} us", flush=True)


if __name__ == "__main__":
    main()
