"""Tiny real models registered in a tmp registry, for the TorchServe adapter and .mar tests."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from prediction_service.registry import ModelVersion, VersionMetadata
from prediction_service.registry.writer import ArtifactSource, register_version
from prediction_service.signature import ModelSignature, TensorSpec

SEQ_LEN, FEATURES, HIDDEN = 8, 4, 6


class TinyLstm(nn.Module):
    """(batch, 8, 4) -> prediction (batch, 1) and last hidden state (batch, 6): two named outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(FEATURES, HIDDEN, batch_first=True)
        self.head = nn.Linear(HIDDEN, 1)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sequence, _ = self.lstm(features)
        last = sequence[:, -1, :]
        return self.head(last), last


def tiny_signature() -> ModelSignature:
    return ModelSignature(
        inputs=[TensorSpec(name="features", dtype="float32", shape=(-1, SEQ_LEN, FEATURES))],
        outputs=[
            TensorSpec(name="prediction", dtype="float32", shape=(-1, 1)),
            TensorSpec(name="hidden", dtype="float32", shape=(-1, HIDDEN)),
        ],
        max_batch_size=64,
    )


def build_scripted_model(work_dir: Path, seed: int = 0) -> tuple[torch.jit.ScriptModule, Path]:
    torch.manual_seed(seed)
    scripted = torch.jit.script(TinyLstm().eval())
    path = Path(work_dir) / f"tiny-{seed}.pt"
    scripted.save(str(path))
    return scripted, path


def register_tiny(registry_root: Path, artifact: Path, *, name: str = "tiny-lstm", version: str = "1.0.0",
                  fmt: str = "torchscript") -> ModelVersion:
    metadata = VersionMetadata(
        name=name, version=version, signature=tiny_signature(), architecture="tiny-lstm")
    return register_version(registry_root, metadata, [ArtifactSource(artifact, fmt, file_name="model.pt")])
