"""A one-off large batch does not leave the worker bigger: ONNX Runtime's CPU arena grows to the largest run,
and the runtime hands that growth back after a large run (runtimes.OnnxRuntime). Measured in a fresh
subprocess, so other tests' allocations do not blur its resident set."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent('''
    import json, os, sys
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from prediction_service.execution.runtimes import open_artifact
    from prediction_service.signature import ModelSignature, TensorSpec

    def rss_mb():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array((rng.standard_normal(shape) * 0.05).astype(np.float32), name)
               for name, shape in (("w1", (256, 2048)), ("w2", (2048, 2048)), ("w3", (2048, 3)))]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h1"]), helper.make_node("Relu", ["h1"], ["r1"]),
             helper.make_node("MatMul", ["r1", "w2"], ["h2"]), helper.make_node("Relu", ["h2"], ["r2"]),
             helper.make_node("MatMul", ["r2", "w3"], ["y"])]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 256])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = os.path.join(sys.argv[1], "mlp.onnx")
    onnx.save(model, path)
    signature = ModelSignature(inputs=[TensorSpec(name="x", dtype="float32", shape=(-1, 256))],
                               outputs=[TensorSpec(name="y", dtype="float32", shape=(-1, 3))])
    runtime = open_artifact(path, "onnx", signature, 1)
    small = {"x": rng.standard_normal((8, 256)).astype(np.float32)}
    for _ in range(20):
        runtime.run(small)
    baseline = rss_mb()
    large = runtime.run({"x": rng.standard_normal((20000, 256)).astype(np.float32)})  # ~330 MB of activations
    assert large["y"].shape == (20000, 3)
    for _ in range(20):
        runtime.run(small)
    print(json.dumps({"baseline_mb": baseline, "after_mb": rss_mb()}))
''')


def test_rss_returns_near_its_baseline_after_a_large_onnx_batch(tmp_path):
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    rss = json.loads(done.stdout.strip().splitlines()[-1])
    assert rss["after_mb"] - rss["baseline_mb"] < 50, rss
