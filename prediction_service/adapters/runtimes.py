"""The runtime of a registered version: its artifact file opened by the shared runtime classes
(prediction_service/execution/runtimes.py, the same ones packaging validates with)."""

from __future__ import annotations

from ..registry import ArtifactInfo, ModelVersion
from ..execution.runtimes import Runtime, open_artifact


def open_runtime(version: ModelVersion, artifact: ArtifactInfo, threads: int) -> Runtime:
    meta = version.metadata
    return open_artifact(version.artifact_path(artifact), artifact.format, version.signature, threads,
                         architecture=meta.architecture, architecture_config=meta.architecture_config)
