"""Which files of an MLflow model version are mirrored, under which names, as which artifact formats.

Everything here reads MLflow's data (the MLmodel file, the artifact listing, an ONNX file's external-data
table, a zip's table of contents) and loads nothing: paths must be plain relative paths of at most
``MAX_DEPTH`` plain names (nothing can lead out of the staging dir or the version dir), and a file is only
taken when the listing has it.

Mirrored: the ``onnx`` flavour's model file (with its external weight files and the flavour's extra files,
e.g. a tokenizer vocab); otherwise a ``pytorch`` flavour model that is a TorchScript archive (a pickled
``torch.save`` model or a pt2 export is skipped: nothing is unpickled); otherwise a bare ``model.onnx``.
A version logged by ``package --mlflow`` also lists its variants (fp16/int8 ONNX, TorchScript, state_dict)
and extra files under the MLmodel's ``metadata.prediction_service``; they come back under the same names.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..artifacts import ARTIFACT_FORMATS, PRECISIONS, ArtifactFormat, Precision
from ..errors import InvalidInput, InvalidName
from ..registry.layout import validate_file_name

MLMODEL_FILE = "MLmodel"
PLAIN_ONNX_FILE = "model.onnx"
ONNX_FILE = "model.onnx"
"""Name of the main ONNX artifact inside the filesystem version, whatever MLflow called it."""
TORCHSCRIPT_FILE = "model.pt"
PYTORCH_MODEL_FILE = "model.pth"
"""Where ``mlflow.pytorch.log_model`` puts the model inside the flavour's ``model_data`` dir."""
PYTORCH_PT2_FILE = "model.pt2"
METADATA_KEY = "prediction_service"
"""Key under the MLmodel's ``metadata`` where ``package --mlflow`` lists the version's files."""
MAX_DEPTH = 2
"""Deepest path taken from a model version (``extra_files/vocab.txt``, ``data/model.pth``)."""
MAX_LISTED = 1000
"""A model version listing more files than this is refused rather than walked."""


class NoServableArtifact(InvalidInput):
    """The MLflow model version has nothing the service can serve without running its code."""

    code = "no_servable_artifact"


@dataclass(frozen=True)
class WantedFile:
    path: str
    """Path inside the MLflow model version (``model.onnx``, ``extra_files/vocab.txt``)."""
    file_name: str
    """Name inside the filesystem version."""
    format: ArtifactFormat | None = None
    """None: an extra file (tokenizer vocab, ONNX external weights), copied beside the artifacts."""
    precision: Precision = "fp32"


@dataclass(frozen=True)
class MirrorPlan:
    flavor: str
    """onnx | pytorch | plain | prediction_service (logged by ``package --mlflow``)."""
    files: tuple[WantedFile, ...]
    architecture: str | None = None
    architecture_config: dict[str, Any] | None = None
    signature: dict[str, Any] | None = None
    """The strict signature as ``package --mlflow`` logged it (task, labels, tokenizer, ... that MLflow's
    tensor signature cannot say); validated like any signature before use."""

    @property
    def main(self) -> WantedFile:
        return self.files[0]


def safe_path(path: Any, what: str) -> str:
    """A relative path of at most MAX_DEPTH plain names; anything else (``..``, absolute, ``a//b``) is refused."""
    parts = str(path).split("/") if isinstance(path, str) else []
    try:
        if not 1 <= len(parts) <= MAX_DEPTH:
            raise InvalidName(f"{len(parts)} levels")
        for part in parts:
            validate_file_name(part)
    except InvalidName as exc:
        raise InvalidInput(f"the {what} path {path!r} is not a plain file name inside the model version: refused",
                           {"path": str(path)}) from exc
    return str(path)


def plan_mirror(mlmodel: dict[str, Any], files: set[str]) -> MirrorPlan:
    """The files to download for one model version (``files``: every path the version lists)."""
    flavors = mlmodel.get("flavors") or {}
    if not isinstance(flavors, dict):
        raise InvalidInput("the MLmodel file's flavors are not a mapping")
    if "onnx" in flavors:
        conf = flavors["onnx"] or {}
        main = WantedFile(safe_path(conf.get("data") or PLAIN_ONNX_FILE, "ONNX artifact"), ONNX_FILE, "onnx")
        flavor = "onnx"
    elif "pytorch" in flavors:
        conf = flavors["pytorch"] or {}
        data = safe_path(conf.get("model_data") or "data", "PyTorch model_data")
        if f"{data}/{PYTORCH_PT2_FILE}" in files:
            raise NoServableArtifact("the PyTorch model is a torch.export (pt2) archive, which is not served; "
                                     "log a TorchScript model (torch.jit.script / trace) or ONNX")
        main = WantedFile(safe_path(f"{data}/{PYTORCH_MODEL_FILE}", "PyTorch model"), TORCHSCRIPT_FILE, "torchscript")
        flavor = "pytorch"
    elif PLAIN_ONNX_FILE in files:
        return _checked(MirrorPlan("plain", (WantedFile(PLAIN_ONNX_FILE, ONNX_FILE, "onnx"),)), files)
    else:
        kinds = ", ".join(sorted(flavors)) or "none"
        raise NoServableArtifact(f"no ONNX or TorchScript artifact (flavours: {kinds}); nothing from MLflow is "
                                 "executed, so only ONNX and TorchScript versions are mirrored")
    wanted = [main]
    for entry in conf.get("extra_files") or []:
        path = safe_path(entry.get("path") if isinstance(entry, dict) else entry, "extra file")
        wanted.append(WantedFile(path, path.rsplit("/", 1)[-1]))
    published = (mlmodel.get("metadata") or {}).get(METADATA_KEY) if isinstance(mlmodel.get("metadata"), dict) \
        else None
    if flavor != "onnx" or not isinstance(published, dict):
        return _checked(MirrorPlan(flavor, tuple(wanted)), files)
    for entry in published.get("artifacts") or []:
        wanted_file = _published_artifact(entry)
        if wanted_file.path != main.path:
            wanted.append(wanted_file)
    for name in published.get("extra_files") or []:
        wanted.append(WantedFile(safe_path(name, "extra file"), safe_path(name, "extra file")))
    architecture = published.get("architecture")
    config = published.get("architecture_config")
    signature = published.get("signature")
    return _checked(MirrorPlan("prediction_service", tuple(wanted), architecture if isinstance(architecture, str)
                               else None, config if isinstance(config, dict) else None,
                               signature if isinstance(signature, dict) else None), files)


def _published_artifact(entry: Any) -> WantedFile:
    if not isinstance(entry, dict):
        raise InvalidInput(f"metadata.{METADATA_KEY}.artifacts has an entry that is not a mapping: {entry!r}")
    name = entry.get("file")
    validate = safe_path(name, "artifact")
    if "/" in validate:
        raise InvalidInput(f"artifact {name!r} must be a plain file name")
    fmt, precision = entry.get("format"), entry.get("precision", "fp32")
    if fmt not in ARTIFACT_FORMATS or precision not in PRECISIONS:
        raise InvalidInput(f"artifact {name!r} has format {fmt!r} / precision {precision!r}; valid: "
                           f"{', '.join(ARTIFACT_FORMATS)} / {', '.join(PRECISIONS)}")
    return WantedFile(name, name, fmt, precision)


def _checked(plan: MirrorPlan, files: set[str]) -> MirrorPlan:
    names = [f.file_name for f in plan.files]
    if len(names) != len(set(names)):
        raise InvalidInput(f"two files of the model version would share a name in the registry: {names}")
    for wanted in plan.files:
        if wanted.path not in files:
            raise InvalidInput(f"the MLmodel names {wanted.path!r} but the model version has no such file")
    return plan


def external_data_files(onnx_path: Path) -> list[str]:
    """File names an ONNX model keeps weights in (MLflow's ``save_as_external_data``), relative to its dir;
    each must be a plain file name."""
    import onnx

    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError / ValueError / OSError for bad files
        raise InvalidInput(f"the ONNX artifact is not a readable ONNX model: {exc}") from exc
    locations: list[str] = []
    tensors = list(model.graph.initializer)  # weights, and constants folded into nodes of the main graph
    for node in model.graph.node:
        for attribute in node.attribute:
            tensors.extend([attribute.t] if attribute.HasField("t") else [])
            tensors.extend(attribute.tensors)
    for tensor in tensors:
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((entry.value for entry in tensor.external_data if entry.key == "location"), "")
        try:
            validate_file_name(location)
        except InvalidName as exc:
            raise InvalidInput(f"the ONNX artifact's external data location {location!r} is not a plain file name "
                               "next to the model: refused", {"location": location}) from exc
        if location not in locations:
            locations.append(location)
    return locations


def is_torchscript_archive(path: Path) -> bool:
    """A ``torch.jit.save`` zip (``<root>/code/`` + ``constants.pkl``), told from a pickled ``torch.save``
    model by its table of contents alone."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    parts = [name.split("/") for name in names]
    return any(p[1:] == ["constants.pkl"] for p in parts) and any(len(p) > 2 and p[1] == "code" for p in parts)
