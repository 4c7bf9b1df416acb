from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from prediction_service.errors import ValidationFailed
from prediction_service.packaging.export import check_onnx, export_onnx, export_torchscript, optimize_onnx
from prediction_service.signature import ModelSignature, TensorSpec

SIGNATURE = ModelSignature(inputs=[TensorSpec(name="x", dtype="float32", shape=(-1, 4))],
                           outputs=[TensorSpec(name="y", dtype="float32", shape=(-1, 2))])
EXAMPLE = {"x": np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)}


class NotScriptable(nn.Module):
    """Calls a Python lambda: the TorchScript compiler refuses it, tracing records what it did."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 2)
        self.activation = lambda t: t * torch.sigmoid(t)

    def forward(self, x):
        return self.activation(self.linear(x))


def test_torchscript_scripts_when_it_can_and_traces_otherwise(tmp_path: Path):
    torch.manual_seed(0)
    assert export_torchscript(nn.Linear(4, 2), SIGNATURE, EXAMPLE, tmp_path / "a.pt") == "script"
    model = NotScriptable().eval()
    assert export_torchscript(model, SIGNATURE, EXAMPLE, tmp_path / "b.pt") == "trace"
    loaded = torch.jit.load(str(tmp_path / "b.pt"))
    x = torch.randn(5, 4)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
    with pytest.raises(ValidationFailed, match="script failed"):
        export_torchscript(model, SIGNATURE, EXAMPLE, tmp_path / "c.pt", method="script")


def test_onnx_export_has_signature_names_and_symbolic_batch(tmp_path: Path):
    path = export_onnx(nn.Linear(4, 2).eval(), SIGNATURE, EXAMPLE, tmp_path / "m.onnx")
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == ["x"] and [o.name for o in graph.output] == ["y"]
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param
    optimized = optimize_onnx(path, tmp_path / "opt.onnx", "basic")
    check_onnx(optimized, SIGNATURE)


def test_check_onnx_refuses_names_that_differ_from_the_signature(tmp_path: Path):
    path = export_onnx(nn.Linear(4, 2).eval(), SIGNATURE, EXAMPLE, tmp_path / "m.onnx")
    other = SIGNATURE.model_copy(update={"outputs": [TensorSpec(name="z", dtype="float32", shape=(-1, 2))]})
    with pytest.raises(ValidationFailed, match="outputs"):
        check_onnx(path, other)
