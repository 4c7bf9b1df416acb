"""Registering a large artifact does not hold it in memory several times: the upload's base64 streams to a
file and is decoded in slices, the signature is read past the weights, and the smoke run maps the
weights in place. Measured as the peak RSS (VmHWM) of a fresh process around the registration: a memory
bound, not a timing."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from tests.registry.conftest import REPO_ROOT

WEIGHTS_MB = 64

# A graph whose one large initializer is read at run time (a Gather at an index computed from the input), so
# no optimisation folds or copies it: what the process holds is what the registry code holds.
MODEL = textwrap.dedent("""
    import numpy as np, onnx
    from onnx import TensorProto, helper, numpy_helper

    def build(path, megabytes):
        big = numpy_helper.from_array(np.full(megabytes * (1 << 18), 0.001, dtype=np.float32), "big")
        w = numpy_helper.from_array(np.ones((4, 2), dtype=np.float32), "w")
        zero = numpy_helper.from_array(np.zeros((), dtype=np.float32), "zero")
        nodes = [helper.make_node("ReduceSum", ["features"], ["total"], keepdims=0),
                 helper.make_node("Mul", ["total", "zero"], ["nothing"]),
                 helper.make_node("Cast", ["nothing"], ["index"], to=TensorProto.INT64),
                 helper.make_node("Gather", ["big", "index"], ["shift"]),
                 helper.make_node("MatMul", ["features", "w"], ["product"]),
                 helper.make_node("Add", ["product", "shift"], ["prediction"])]
        graph = helper.make_graph(
            nodes, "big", [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 4])],
            [helper.make_tensor_value_info("prediction", TensorProto.FLOAT, ["batch", 2])], [big, w, zero])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        onnx.save(model, path)
""")

BUILD = MODEL + textwrap.dedent("""
    import sys
    from pathlib import Path

    build(Path(sys.argv[1]) / "small.onnx", 1)
    build(Path(sys.argv[1]) / "large.onnx", int(sys.argv[2]))
""")

MEASURE = textwrap.dedent("""
    import asyncio, base64, json, sys
    from pathlib import Path

    from prediction_service.api.routes.registry import router
    from prediction_service.registry import ArtifactSource, ModelRegistry
    from prediction_service.settings import LimitSettings, SecuritySettings, Settings
    from tests.support.asgi import asgi_client, router_app

    mode, work = sys.argv[1], Path(sys.argv[2])
    small, large = work / "small.onnx", work / "large.onnx"
    store = work / "store"
    settings = Settings(model_store=store, security=SecuritySettings(api_keys="admin-secret"),
                        limits=LimitSettings(max_artifact_upload_bytes=256 << 20))

    def peak_rss():
        # VmHWM belongs to this process's memory map: ru_maxrss would carry the forking parent's size over exec.
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024

    def rss():
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024

    def baseline():
        with open("/proc/self/clear_refs", "w") as fh:  # the peak starts again from what is resident now
            fh.write("5")
        return rss()

    def body(path, version):
        yield b'{"version": "%s", "artifacts": [{"file_name": "model.onnx", "format": "onnx", "content_base64": "' \\
            % version.encode()
        with open(path, "rb") as fh:
            while chunk := fh.read(3 << 16):
                yield base64.b64encode(chunk)
        yield b'"}]}'

    async def upload(http, path, version):
        async def chunks():
            for piece in body(path, version):
                yield piece
        answer = await http.post("/v1/registry/models/big/versions", content=chunks(),
                                 headers={"X-API-Key": "admin-secret", "Content-Type": "application/json"})
        assert answer.status_code == 201, answer.text

    async def main():
        async with asgi_client(router_app(router, settings), lifespan=False) as http:
            if mode == "api":
                ModelRegistry(store).register("big", "0.1.0", [ArtifactSource(small, "onnx")])
                before = baseline()
                ModelRegistry(store).register("big", "1.0.0", [ArtifactSource(large, "onnx")])
            else:
                await upload(http, small, "0.1.0")  # every import and first-use allocation before the baseline
                before = baseline()
                await upload(http, large, "1.0.0")
        peak = peak_rss()
        print(json.dumps({"before": before, "peak": peak, "size": large.stat().st_size}))

    asyncio.run(main())
""")


@pytest.mark.parametrize("mode", ["rest-upload", "api"])
def test_registering_a_large_artifact_holds_far_less_than_its_size(tmp_path, mode):
    # Built in a process of its own: building holds the model several times, and the peak is per process.
    subprocess.run([sys.executable, "-c", BUILD, str(tmp_path), str(WEIGHTS_MB)], check=True, timeout=300)
    result = subprocess.run([sys.executable, "-c", MEASURE, mode, str(tmp_path)], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    grown = measured["peak"] - measured["before"]
    # Before: the upload held its base64 text, a mapped copy of the body and the parsed graph (about 4x the
    # artifact); a registration held the file's bytes and the parsed weights (2x).
    assert grown < measured["size"] // 2, f"peak grew {grown >> 20} MiB for a {measured['size'] >> 20} MiB artifact"
