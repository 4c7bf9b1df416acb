"""A researcher's model as issue 27 reported it: a 2-layer LSTM with attention pooling over the time steps.

Its fp16 ONNX variant makes ONNX Runtime 1.32's session creation (all graph optimisations, as serving opens
it) die with SIGSEGV on this project's machines, every time, with 1 or 2 layers; fp32, TorchScript and int8
are fine. ``package --fp16`` must reject that variant with the reason and register the others.
"""

import numpy as np
import torch
from torch import nn

from prediction_service.signature import ModelSignature, TensorSpec

SIGNATURE = ModelSignature(
    inputs=[TensorSpec(name="ohlcv", dtype="float32", shape=(-1, 60, 5))],
    outputs=[TensorSpec(name="price", dtype="float32", shape=(-1, 1))],
)


class AttentionLSTM(nn.Module):
    def __init__(self, layers: int = 2, hidden: int = 32):
        super().__init__()
        self.lstm = nn.LSTM(5, hidden, num_layers=layers, batch_first=True)
        self.score = nn.Linear(hidden, 1)
        self.head = nn.Linear(hidden, 1)

    def forward(self, ohlcv: torch.Tensor) -> torch.Tensor:
        sequence, _ = self.lstm(ohlcv)
        weights = torch.softmax(self.score(sequence), dim=1)  # attention over the time steps
        return self.head((weights * sequence).sum(dim=1))


def build_model() -> nn.Module:
    torch.manual_seed(0)
    return AttentionLSTM().eval()


def validation_inputs(rows: int) -> dict[str, np.ndarray]:
    return {"ohlcv": np.random.default_rng(5).standard_normal((rows, 60, 5)).astype(np.float32)}
