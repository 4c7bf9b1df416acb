"""A researcher-style model file for ``package``: a linear model with one huge weight.

Per-tensor int8 quantization of its weights rounds every ordinary weight to zero, so the int8
variant's outputs move far beyond tolerance while fp32/fp16 stay exact enough.
"""

import numpy as np
import torch
from torch import nn

from prediction_service.signature import ModelSignature, TensorSpec

SIGNATURE = ModelSignature(
    inputs=[TensorSpec(name="x", dtype="float32", shape=(-1, 16))],
    outputs=[TensorSpec(name="y", dtype="float32", shape=(-1, 4))],
    task="regression",
)


def build_model() -> nn.Module:
    generator = torch.Generator().manual_seed(7)
    layer = nn.Linear(16, 4)
    with torch.no_grad():
        layer.weight.copy_(torch.rand(4, 16, generator=generator) * 0.4 - 0.2)  # |w| <= 0.2
        layer.weight[0, 0] = 100.0  # int8 scale becomes 100/127 ~ 0.79: the others round to 0
        layer.bias.zero_()
    return layer.eval()


def validation_inputs(rows: int) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(3).standard_normal((rows, 16)).astype(np.float32)}
