"""Run a model or an exported artifact on numpy inputs keyed by the signature's tensor names.

One small class per runtime, so validation and benchmarks treat every variant alike.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from ..signature import ModelSignature


class Runner(Protocol):
    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


def _outputs_by_name(signature: ModelSignature, result: object) -> dict[str, np.ndarray]:
    tensors = list(result) if isinstance(result, (tuple, list)) else [result]
    if len(tensors) != len(signature.outputs):
        raise ValueError(f"model returned {len(tensors)} outputs, the signature declares {len(signature.outputs)}")
    return {spec.name: t.detach().cpu().numpy() for spec, t in zip(signature.outputs, tensors)}


class TorchModuleRunner:
    """The original PyTorch module: the reference every variant is compared against."""

    def __init__(self, module: nn.Module, signature: ModelSignature):
        self.module = module.eval()
        self.signature = signature

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        args = [torch.from_numpy(np.ascontiguousarray(inputs[spec.name])) for spec in self.signature.inputs]
        with torch.inference_mode():
            return _outputs_by_name(self.signature, self.module(*args))


class TorchScriptRunner(TorchModuleRunner):
    def __init__(self, path: Path, signature: ModelSignature):
        super().__init__(torch.jit.load(str(path), map_location="cpu"), signature)


class OnnxRunner:
    def __init__(self, path: Path, threads: int = 1):
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self.output_names, self.session.run(self.output_names, inputs)))
