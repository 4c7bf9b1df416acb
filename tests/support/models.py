"""Tiny real models (torch -> ONNX and TorchScript) registered into a tmp registry for tests."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from prediction_service.registry import ValidationReport, VersionMetadata
from prediction_service.registry.writer import ArtifactSource, register_version, set_stage_link
from prediction_service.signature import ModelSignature, TensorSpec


class TinyRegressor(nn.Module):
    def __init__(self, scale: float):
        super().__init__()
        self.linear = nn.Linear(4, 1)
        with torch.no_grad():
            self.linear.weight.copy_(torch.tensor([[1.0, 2.0, 3.0, 4.0]]) * scale)
            self.linear.bias.fill_(scale)

    def forward(self, x):
        return self.linear(x)


class TinyClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(4, 3)

    def forward(self, x):
        return torch.softmax(self.linear(x), dim=-1)


REGRESSOR_SIGNATURE = ModelSignature(
    inputs=[TensorSpec(name="x", dtype="float32", shape=(-1, 4))],
    outputs=[TensorSpec(name="y", dtype="float32", shape=(-1, 1))],
    task="regression", max_batch_size=64,
)
CLASSIFIER_SIGNATURE = ModelSignature(
    inputs=[TensorSpec(name="x", dtype="float32", shape=(-1, 4))],
    outputs=[TensorSpec(name="probabilities", dtype="float32", shape=(-1, 3))],
    task="classification", labels=["down", "flat", "up"], max_batch_size=64,
)


def export(module: nn.Module, signature: ModelSignature, out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    module.eval()
    example = torch.zeros(2, 4)
    onnx_path, ts_path = out_dir / "model.onnx", out_dir / "model.pt"
    torch.onnx.export(module, (example,), str(onnx_path), input_names=[signature.inputs[0].name],
                      output_names=[signature.outputs[0].name], dynamic_axes={signature.inputs[0].name: {0: "batch"},
                      signature.outputs[0].name: {0: "batch"}}, dynamo=False)
    torch.jit.save(torch.jit.trace(module, example), str(ts_path))
    return onnx_path, ts_path


def register_tiny(root: Path, name: str, version: str, module: nn.Module, signature: ModelSignature,
                  work: Path, stage: str | None = "production", formats: tuple[str, ...] = ("onnx", "torchscript")):
    onnx_path, ts_path = export(module, signature, work / f"{name}-{version}")
    sources = {"onnx": ArtifactSource(onnx_path, "onnx"), "torchscript": ArtifactSource(ts_path, "torchscript")}
    meta = VersionMetadata(name=name, version=version, signature=signature,
                           validation=ValidationReport(passed=True, kind="smoke"))
    registered = register_version(root, meta, [sources[f] for f in formats])
    if stage:
        set_stage_link(root, name, stage, version)
    return registered


class SlowRegressor(nn.Module):
    """Same signature as TinyRegressor, but every row runs ``steps`` 64x256x256 matmuls: a model whose run
    takes long enough (tens of ms on one thread) for queues to form under load."""

    def __init__(self, steps: int = 40):
        super().__init__()
        torch.manual_seed(0)
        self.steps = steps
        self.project = nn.Parameter(torch.randn(4, 256) * 0.1)
        self.mix = nn.Parameter(torch.randn(256, 256) * 0.05)

    def forward(self, x):
        hidden = (x @ self.project).unsqueeze(1).expand(-1, 64, -1)
        for _ in range(self.steps):
            hidden = torch.tanh(hidden @ self.mix)
        return hidden.mean(dim=(1, 2)).unsqueeze(1)


def register_slow(root: Path, work: Path, name: str = "slow-regressor", steps: int = 40):
    """A TorchScript (scripted: the loop stays a loop) slow model, staged to production."""
    work.mkdir(parents=True, exist_ok=True)
    path = work / f"{name}.pt"
    torch.jit.save(torch.jit.script(SlowRegressor(steps).eval()), str(path))
    meta = VersionMetadata(name=name, version="1.0.0", signature=REGRESSOR_SIGNATURE,
                           validation=ValidationReport(passed=True, kind="smoke"))
    registered = register_version(root, meta, [ArtifactSource(path, "torchscript")])
    set_stage_link(root, name, "production", "1.0.0")
    return registered
