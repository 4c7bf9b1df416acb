"""TorchScript adapter: compiles a registered PyTorch version on load and serves it in process.

Source, in order of preference: a state dict (rebuilt into its model-zoo architecture, then traced)
or a TorchScript archive. The module is frozen and ``optimize_for_inference``-d, and the compiled
archive is cached next to the version (``compiled/``, keyed by the source's sha256 and the torch
version) so the next load, in any worker, skips compilation.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ..errors import ModelLoadError
from ..registry import ArtifactInfo, ModelVersion
from ..signature import ModelSignature
from .inprocess import InProcessAdapter
from .runtimes import Runtime, TorchRuntime

log = logging.getLogger(__name__)

CACHE_DIR = "compiled"


def example_inputs(signature: ModelSignature, rows: int = 2):
    """Zeros of the signature's shape (dynamic dims -> 1): enough to trace the graph."""
    import torch

    dtypes = {"float32": torch.float32, "float16": torch.float16, "float64": torch.float64,
              "int64": torch.int64, "int32": torch.int32, "bool": torch.bool}
    return tuple(torch.zeros((rows, *[d if d > 0 else 1 for d in spec.row_shape]), dtype=dtypes[spec.dtype])
                 for spec in signature.inputs)


def compiled_path(version: ModelVersion, source: ArtifactInfo) -> Path:
    import torch

    return version.path / CACHE_DIR / f"{source.sha256[:16]}-torch{torch.__version__.split('+')[0]}.pt"


def compile_version(version: ModelVersion, source: ArtifactInfo):
    """Load or build the scripted module for ``source`` and optimize it for inference."""
    import torch

    path = version.artifact_path(source)
    if source.format == "state_dict":
        rebuilt = TorchRuntime.from_state_dict(path, version, threads=0)._module
        with torch.inference_mode(False), torch.no_grad():
            scripted = torch.jit.trace(rebuilt, example_inputs(version.signature), check_trace=False)
    else:
        scripted = torch.jit.load(str(path), map_location="cpu")
    scripted.eval()
    try:
        return torch.jit.optimize_for_inference(torch.jit.freeze(scripted))
    except (RuntimeError, AttributeError) as exc:  # some graphs cannot be frozen; serve them unfrozen
        log.warning("optimize_for_inference failed for %s (%s); serving the unfrozen module", version.key, exc)
        return scripted


class TorchScriptAdapter(InProcessAdapter):
    name = "torchscript"
    formats = ("state_dict", "torchscript")

    def open_runtime(self, version: ModelVersion, artifact: ArtifactInfo) -> Runtime:
        import torch

        cached = compiled_path(version, artifact)
        module = None
        if cached.is_file():
            try:
                module = torch.jit.load(str(cached), map_location="cpu")
            except RuntimeError as exc:
                log.warning("ignoring unreadable compiled cache %s: %s", cached, exc)
        if module is None:
            try:
                module = compile_version(version, artifact)
            except (RuntimeError, ValueError) as exc:
                raise ModelLoadError(f"could not compile {version.key} to TorchScript: {exc}") from exc
            self._write_cache(module, cached)
        runtime = TorchRuntime(module, version.signature, self.settings.simple.intra_op_threads)
        runtime.format = "torchscript"
        return runtime

    @staticmethod
    def _write_cache(module, path: Path) -> None:
        import torch

        try:
            path.parent.mkdir(exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            torch.jit.save(module, str(tmp))
            os.replace(tmp, path)  # another worker compiling the same version cannot tear it
        except OSError as exc:  # a read-only registry still serves; it just compiles every load
            log.warning("could not cache compiled module at %s: %s", path, exc)
