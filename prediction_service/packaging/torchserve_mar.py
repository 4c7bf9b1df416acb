"""Build a TorchServe ``.mar`` from a registry ModelVersion.

The archive holds the version's TorchScript (preferred) or ONNX artifact (a tree model's only one: the
handler runs it with onnxruntime, which implements its ai.onnx.ml operators), the batching handler
(``torchserve_handler.py``), ``signature.json`` (tensor names, dtypes, shapes, artifact format) and,
with warm-up on, ``warmup.npz``: synthetic batches each worker runs before it reports ready.
Only files from the registry go in: the artifact's sha256 is checked against metadata.json first.
The archive is written under a temporary directory inside the model store and renamed into place,
so TorchServe never sees half a file.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Literal

import numpy as np

from ..errors import ModelLoadError
from ..registry import ArtifactInfo, ModelKey, ModelVersion
from ..registry.fsutil import sha256_file
from ..settings import WarmupSettings
from ..execution.warmup import warmup_batches

logger = logging.getLogger(__name__)

HANDLER_FILE = Path(__file__).with_name("torchserve_handler.py")
SIGNATURE_FILE = "signature.json"
WARMUP_FILE = "warmup.npz"
SERVABLE_FORMATS = ("torchscript", "onnx")
ARCHIVE_MODEL_VERSION = "1.0"
"""TorchServe's own version field; the registry version is part of the served name instead."""


def served_model_name(key: ModelKey) -> str:
    """TorchServe model name for a registry key. Registry names are lowercase, so the upper-case
    ``V`` separator cannot be ambiguous: ``lstm`` 1.2.0 -> ``lstm-V1.2.0``."""
    return f"{key.name}-V{key.version}"


def mar_path(model_store: Path, key: ModelKey) -> Path:
    return Path(model_store) / f"{served_model_name(key)}.mar"


def servable_artifact(version: ModelVersion, precision: str = "fp32") -> ArtifactInfo:
    """The artifact TorchServe will run, or ModelLoadError saying why there is none."""
    artifact = version.artifact(SERVABLE_FORMATS, precision)
    if artifact is None:
        have = ", ".join(f"{a.file} ({a.format}, {a.precision})" for a in version.metadata.artifacts)
        raise ModelLoadError(
            f"{version.key} has no TorchScript or ONNX artifact that TorchServe can load "
            f"(has: {have}); export one with the packaging pipeline first",
            {"model": version.name, "version": version.version, "formats_needed": list(SERVABLE_FORMATS)},
        )
    path = version.artifact_path(artifact)
    if not path.is_file():
        raise ModelLoadError(f"artifact {artifact.file} of {version.key} is missing on disk",
                             {"model": version.name, "version": version.version, "file": artifact.file})
    if sha256_file(path) != artifact.sha256:
        raise ModelLoadError(f"artifact {artifact.file} of {version.key} does not match its sha256 in metadata.json",
                             {"model": version.name, "version": version.version, "file": artifact.file})
    return artifact


def signature_document(version: ModelVersion, artifact: ArtifactInfo, warmup_iterations: int = 0) -> dict:
    """What the handler needs to know, as plain JSON."""
    signature = version.signature
    return {
        "model": version.name,
        "version": version.version,
        "artifact_format": artifact.format,
        "artifact_file": artifact.file,
        "inputs": [spec.model_dump(mode="json") for spec in signature.inputs],
        "outputs": [spec.model_dump(mode="json") for spec in signature.outputs],
        "warmup_iterations": warmup_iterations,
    }


def write_warmup_batches(version: ModelVersion, warmup: WarmupSettings, path: Path) -> None:
    """The warm-up batches as ``b<index>__<input name>`` arrays (numpy's npz: loads without pickles)."""
    arrays = {f"b{index}__{name}": array
              for index, batch in enumerate(warmup_batches(version.signature, warmup))
              for name, array in batch.items()}
    np.savez(path, **arrays)


def build_mar(
    version: ModelVersion,
    model_store: Path,
    *,
    precision: str = "fp32",
    archive_format: Literal["default", "no-archive"] = "default",
    warmup: WarmupSettings | None = None,
) -> Path:
    """Write ``<model_store>/<served name>.mar`` (a directory for ``no-archive``) and return its path.
    With ``warmup`` enabled, every worker runs the warm-up batches before it reports ready."""
    from model_archiver.model_archiver_config import ModelArchiverConfig
    from model_archiver.model_packaging import generate_model_archive

    artifact = servable_artifact(version, precision)
    model_store = Path(model_store)
    model_store.mkdir(parents=True, exist_ok=True)
    served = served_model_name(version.key)
    target = model_store / (f"{served}.mar" if archive_format == "default" else served)
    logger.info("building %s from %s (%s)", target.name, artifact.file, artifact.format)
    work = Path(tempfile.mkdtemp(prefix=f".{served}.", suffix=".build", dir=model_store))
    try:
        warming = warmup is not None and warmup.enabled
        signature_path = work / SIGNATURE_FILE
        document = signature_document(version, artifact, warmup.iterations if warming else 0)
        signature_path.write_text(json.dumps(document, indent=2), encoding="utf-8")
        extra_files = [str(signature_path)]
        if warming:
            write_warmup_batches(version, warmup, work / WARMUP_FILE)
            extra_files.append(str(work / WARMUP_FILE))
        export_dir = work / "out"
        export_dir.mkdir()
        config = ModelArchiverConfig(
            model_name=served,
            handler=str(HANDLER_FILE),
            version=ARCHIVE_MODEL_VERSION,
            serialized_file=str(version.artifact_path(artifact)),
            extra_files=",".join(extra_files),
            export_path=str(export_dir),
            archive_format=archive_format,
            force=True,
        )
        generate_model_archive(config)
        built = export_dir / (f"{served}.mar" if archive_format == "default" else served)
        if not built.exists():
            raise ModelLoadError(f"torch-model-archiver did not produce {built.name}", {"model": version.name})
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(built, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target
