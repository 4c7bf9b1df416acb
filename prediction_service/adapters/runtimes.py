"""In-process model runtimes: synchronous ``run(inputs) -> outputs`` over numpy arrays.

None of them runs code from the artifact: ONNX graphs, TorchScript archives, and state dicts read
with ``torch.load(weights_only=True)`` into a model-zoo architecture.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from ..errors import ModelLoadError
from ..registry import ArtifactInfo, ModelVersion
from ..signature import ModelSignature

Tensors = dict[str, np.ndarray]


class Runtime(ABC):
    format: str

    @abstractmethod
    def run(self, inputs: Tensors) -> Tensors: ...

    def close(self) -> None:
        """Release native resources."""


class OnnxRuntime(Runtime):
    format = "onnx"

    def __init__(self, path: Path, signature: ModelSignature, threads: int):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - ORT raises several unrelated types
            raise ModelLoadError(f"ONNX Runtime could not load {path.name}: {exc}") from exc
        graph_inputs = {i.name for i in self._session.get_inputs()}
        graph_outputs = [o.name for o in self._session.get_outputs()]
        wanted = [spec.name for spec in signature.outputs]
        if graph_inputs != {spec.name for spec in signature.inputs} or not set(wanted) <= set(graph_outputs):
            raise ModelLoadError(
                f"{path.name} does not match its signature",
                {"graph_inputs": sorted(graph_inputs), "graph_outputs": graph_outputs},
            )
        self._outputs = wanted

    def run(self, inputs: Tensors) -> Tensors:
        return dict(zip(self._outputs, self._session.run(self._outputs, inputs)))


class TorchRuntime(Runtime):
    """A torch.nn.Module (scripted, or rebuilt from a state dict) called with inputs in signature order."""

    format = "torchscript"

    def __init__(self, module, signature: ModelSignature, threads: int):
        import torch

        if threads:
            torch.set_num_threads(threads)
        self._torch = torch
        self._module = module.eval()
        self._signature = signature
        # torch modules are not documented as safe for concurrent calls: one run at a time per model.
        self._lock = threading.Lock()

    @classmethod
    def from_torchscript(cls, path: Path, signature: ModelSignature, threads: int) -> "TorchRuntime":
        import torch

        try:
            module = torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:  # noqa: BLE001
            raise ModelLoadError(f"torch could not load TorchScript {path.name}: {exc}") from exc
        return cls(module, signature, threads)

    @classmethod
    def from_state_dict(cls, path: Path, version: ModelVersion, threads: int) -> "TorchRuntime":
        import torch

        from ..modelzoo.architectures import build_model

        meta = version.metadata
        if not meta.architecture:
            raise ModelLoadError("a state_dict artifact needs metadata 'architecture' to rebuild the model")
        try:
            module = build_model(meta.architecture, meta.architecture_config)
            module.load_state_dict(torch.load(str(path), map_location="cpu", weights_only=True))
        except (KeyError, RuntimeError, ValueError) as exc:
            raise ModelLoadError(f"could not rebuild {meta.architecture} from {path.name}: {exc}") from exc
        runtime = cls(module, version.signature, threads)
        runtime.format = "state_dict"
        return runtime

    def run(self, inputs: Tensors) -> Tensors:
        torch = self._torch
        args = [torch.from_numpy(inputs[spec.name]) for spec in self._signature.inputs]
        with self._lock, torch.inference_mode():
            result = self._module(*args)
        if isinstance(result, torch.Tensor):
            result = (result,)
        elif isinstance(result, dict):
            result = tuple(result[spec.name] for spec in self._signature.outputs)
        if len(result) != len(self._signature.outputs):
            raise ModelLoadError(f"model returned {len(result)} outputs, signature declares "
                                 f"{len(self._signature.outputs)}")
        return {spec.name: tensor.detach().numpy().astype(spec.dtype, copy=False)
                for spec, tensor in zip(self._signature.outputs, result)}


def open_runtime(version: ModelVersion, artifact: ArtifactInfo, threads: int) -> Runtime:
    path = version.artifact_path(artifact)
    if artifact.format == "onnx":
        return OnnxRuntime(path, version.signature, threads)
    if artifact.format == "torchscript":
        return TorchRuntime.from_torchscript(path, version.signature, threads)
    if artifact.format == "state_dict":
        return TorchRuntime.from_state_dict(path, version, threads)
    raise ModelLoadError(f"no in-process runtime for artifact format {artifact.format!r}")
