"""Model runtimes: synchronous ``run(inputs) -> outputs`` over numpy arrays keyed by the signature's names.

One set of classes for everyone who runs a model in this process: the in-process adapters serve with
them, the packaging pipeline validates and benchmarks every variant with them, and the registry's smoke
run checks a new version with them. So a variant is validated by the very runtime, with the very session
options, that will serve it.

None of them runs code from the artifact: ONNX graphs, TorchScript archives, and state dicts read
with ``torch.load(weights_only=True)`` into a model-zoo architecture.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..artifacts import ArtifactFormat
from ..errors import ModelLoadError
from ..signature import ModelSignature

Tensors = dict[str, np.ndarray]


class Runtime(ABC):
    format: str
    runs_concurrently = True
    """Runs may overlap (no lock around them). A runtime that serializes its runs never runs a request on the
    event loop: waiting there for another run's lock would stop the loop."""

    @abstractmethod
    def run(self, inputs: Tensors) -> Tensors: ...

    @property
    @abstractmethod
    def options(self) -> dict[str, Any]:
        """The settings the runtime was opened with (threads, optimisation level), for comparison and reports."""

    def close(self) -> None:
        """Release native resources."""


ARENA_SHRINK_ELEMENTS = 16_384
"""An ONNX run whose inputs hold more elements than this (all inputs together) releases the arena memory it
grew by once it ends, so a one-off large request (64 texts x 256 tokens grew a MiniLM worker by 650 MB) does
not leave the worker that much bigger. Below it runs reuse the arena as usual: typical batches (32 rows of 60
bars x 5, a few dozen headlines) stay under it, and shrinking costs a large run only re-allocation."""


def onnx_session_options(threads: int):
    """The one ONNX Runtime session setup: ``threads`` per run (0 = runtime default), one inter-op thread
    (requests run concurrently on the adapter's pool instead), every graph optimisation."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return options


class OnnxRuntime(Runtime):
    format = "onnx"

    def __init__(self, path: Path, signature: ModelSignature, threads: int):
        import onnxruntime as ort

        try:
            self._session = ort.InferenceSession(str(path), onnx_session_options(threads),
                                                 providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - ORT raises several unrelated types
            raise ModelLoadError(f"ONNX Runtime could not load {Path(path).name}: {exc}") from exc
        graph_inputs = {i.name for i in self._session.get_inputs()}
        graph_outputs = [o.name for o in self._session.get_outputs()]
        wanted = [spec.name for spec in signature.outputs]
        if graph_inputs != {spec.name for spec in signature.inputs} or not set(wanted) <= set(graph_outputs):
            raise ModelLoadError(
                f"{Path(path).name} does not match its signature",
                {"graph_inputs": sorted(graph_inputs), "graph_outputs": graph_outputs},
            )
        self._outputs = wanted
        # The CPU arena grows to the largest run and keeps that memory: a large run gives its growth back
        # when it ends. Small runs keep the arena as it was (no re-allocation per run).
        self._shrink_arena = ort.RunOptions()
        self._shrink_arena.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")

    @property
    def options(self) -> dict[str, Any]:
        import onnxruntime as ort

        options = self._session.get_session_options()
        return {"runtime": f"onnxruntime {ort.__version__}", "intra_op_threads": options.intra_op_num_threads,
                "inter_op_threads": options.inter_op_num_threads,
                "graph_optimization": options.graph_optimization_level.name,
                "providers": self._session.get_providers()}

    def run(self, inputs: Tensors) -> Tensors:
        large = sum(np.size(array) for array in inputs.values()) > ARENA_SHRINK_ELEMENTS
        return dict(zip(self._outputs, self._session.run(self._outputs, inputs,
                                                         self._shrink_arena if large else None)))


class TorchRuntime(Runtime):
    """A torch.nn.Module (scripted, or rebuilt from a state dict) called with inputs in signature order."""

    format = "torchscript"
    runs_concurrently = False

    def __init__(self, module, signature: ModelSignature, threads: int):
        import torch

        if threads:
            torch.set_num_threads(threads)
        self._torch = torch
        self._threads = threads
        self.module = module.eval()
        self._signature = signature
        # torch modules are not documented as safe for concurrent calls: one run at a time per model.
        self._lock = threading.Lock()

    @classmethod
    def from_torchscript(cls, path: Path, signature: ModelSignature, threads: int) -> "TorchRuntime":
        import torch

        try:
            module = torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:  # noqa: BLE001
            raise ModelLoadError(f"torch could not load TorchScript {Path(path).name}: {exc}") from exc
        return cls(module, signature, threads)

    @classmethod
    def from_state_dict(cls, path: Path, signature: ModelSignature, threads: int, architecture: str | None,
                        architecture_config: Mapping[str, Any]) -> "TorchRuntime":
        import torch

        from ..architectures import build_model

        if not architecture:
            raise ModelLoadError("a state_dict artifact needs metadata 'architecture' to rebuild the model")
        try:
            module = build_model(architecture, dict(architecture_config))
            module.load_state_dict(torch.load(str(path), map_location="cpu", weights_only=True))
        except (KeyError, RuntimeError, ValueError) as exc:
            raise ModelLoadError(f"could not rebuild {architecture} from {Path(path).name}: {exc}") from exc
        runtime = cls(module, signature, threads)
        runtime.format = "state_dict"
        return runtime

    @property
    def options(self) -> dict[str, Any]:
        return {"runtime": f"torch {self._torch.__version__}", "threads": self._threads}

    def run(self, inputs: Tensors) -> Tensors:
        torch = self._torch
        args = [torch.from_numpy(inputs[spec.name]) for spec in self._signature.inputs]
        with self._lock, torch.inference_mode():
            result = self.module(*args)
        if isinstance(result, torch.Tensor):
            result = (result,)
        elif isinstance(result, dict):
            result = tuple(result[spec.name] for spec in self._signature.outputs)
        if len(result) != len(self._signature.outputs):
            raise ModelLoadError(f"model returned {len(result)} outputs, signature declares "
                                 f"{len(self._signature.outputs)}")
        return {spec.name: tensor.detach().numpy().astype(spec.dtype, copy=False)
                for spec, tensor in zip(self._signature.outputs, result)}


def open_artifact(path: Path, format: ArtifactFormat | str, signature: ModelSignature, threads: int, *,
                  architecture: str | None = None,
                  architecture_config: Mapping[str, Any] | None = None) -> Runtime:
    """The runtime for an artifact file: what serving loads and what packaging validates, alike."""
    if format == "onnx":
        return OnnxRuntime(path, signature, threads)
    if format == "torchscript":
        return TorchRuntime.from_torchscript(path, signature, threads)
    if format == "state_dict":
        return TorchRuntime.from_state_dict(path, signature, threads, architecture, architecture_config or {})
    raise ModelLoadError(f"no in-process runtime for artifact format {format!r}")
