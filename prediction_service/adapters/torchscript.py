"""TorchScript adapter: compiles a registered PyTorch version on load and serves it in process.

Source, in order of preference: a state dict (rebuilt into its model-zoo architecture, then compiled
by the packaging exporter: script, or trace as a fallback) or a TorchScript archive. Either way the
module is frozen and ``optimize_for_inference``-d, and the compiled archive is kept in the version's
cache directory (``ModelVersion.cache_dir``, keyed by the source's sha256 and the torch version) so the
next load, in any worker, skips compilation.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ..errors import ModelLoadError, ValidationFailed
from ..registry import ArtifactInfo, ModelVersion
from ..execution.runtimes import Runtime, TorchRuntime
from .inprocess import InProcessAdapter
from .runtimes import open_runtime

log = logging.getLogger(__name__)

CACHE_PURPOSE = "torchscript"
EXAMPLE_ROWS = 2
"""Rows of the example a trace runs on (dynamic dims get 1): enough to compile the graph."""


def compiled_path(version: ModelVersion, source: ArtifactInfo) -> Path:
    import torch

    return version.cache_dir(CACHE_PURPOSE) / f"{source.sha256[:16]}-torch{torch.__version__.split('+')[0]}.pt"


def compile_to(version: ModelVersion, source: ArtifactInfo, destination: Path) -> None:
    """Compile ``source`` (state dict or TorchScript) into an optimized TorchScript archive."""
    import torch

    from ..packaging.export import export_torchscript

    if source.format == "state_dict":
        module = open_runtime(version, source, threads=0).module
    else:
        module = torch.jit.load(str(version.artifact_path(source)), map_location="cpu")
    example = version.signature.synthetic_inputs(EXAMPLE_ROWS, dynamic_dim=1)
    export_torchscript(module, version.signature, example, destination)


class TorchScriptAdapter(InProcessAdapter):
    name = "torchscript"
    formats = ("state_dict", "torchscript")

    def open_runtime(self, version: ModelVersion, artifact: ArtifactInfo) -> Runtime:
        cached = compiled_path(version, artifact)
        if not cached.is_file():
            self._compile(version, artifact, cached)
        try:
            runtime = TorchRuntime.from_torchscript(cached, version.signature, self.settings.simple.intra_op_threads)
        except ModelLoadError:
            log.warning("compiled cache %s unreadable; compiling again", cached)
            self._compile(version, artifact, cached)
            runtime = TorchRuntime.from_torchscript(cached, version.signature, self.settings.simple.intra_op_threads)
        return runtime

    @staticmethod
    def _compile(version: ModelVersion, artifact: ArtifactInfo, cached: Path) -> None:
        tmp = cached.with_name(f".{cached.name}.{os.getpid()}.tmp")
        try:
            compile_to(version, artifact, tmp)
            os.replace(tmp, cached)  # another worker compiling the same version cannot tear it
        except (RuntimeError, ValueError, ValidationFailed, OSError) as exc:
            tmp.unlink(missing_ok=True)
            raise ModelLoadError(f"could not compile {version.key} to TorchScript: {exc}") from exc
        log.info("compiled %s from %s into %s", version.key, artifact.file, cached.name)
