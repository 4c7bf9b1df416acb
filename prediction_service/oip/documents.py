"""What the Open Inference Protocol says about the server, a model and a prediction, wire-neutral.

The OIP REST codec sends these as JSON; the gRPC codec parses the same documents into its protobuf
messages (Triton's REST model config is the JSON mapping of its ModelConfig proto), so both doors
answer with one content.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from .. import __version__
from ..errors import InvalidInput
from ..types import InferenceResult, ModelMetadata, RepositoryEntry, TensorMetadata
from .datatypes import oip_datatype

SERVER_NAME = "prediction-service"

# Triton's platform and backend names for our artifact formats, so Triton-aware tooling recognises them.
_TRITON_PLATFORMS = {"onnx": "onnxruntime_onnx", "torchscript": "pytorch_libtorch", "pytorch": "pytorch_libtorch"}
_TRITON_BACKENDS = {"onnx": "onnxruntime", "torchscript": "pytorch", "pytorch": "pytorch"}


def server_metadata(extensions: tuple[str, ...]) -> dict[str, Any]:
    return {"name": SERVER_NAME, "version": __version__, "extensions": list(extensions)}


def _inputs_of(meta: ModelMetadata) -> tuple[TensorMetadata, ...]:
    """The model's tensors, then the string input a text model tokenizes server side, then the raw OHLCV
    input a bars model turns into its tensor server side."""
    extra = tuple(t for t in (meta.text_input, meta.bars_input) if t is not None)
    return meta.inputs + extra


def model_metadata(meta: ModelMetadata) -> dict[str, Any]:
    """OIP model metadata: shapes with the batch dimension first (-1 = any)."""
    return {"name": meta.name, "versions": list(meta.versions), "platform": meta.platform,
            "inputs": [_tensor_metadata(t) for t in _inputs_of(meta)],
            "outputs": [_tensor_metadata(t) for t in meta.outputs]}


def _tensor_metadata(tensor: TensorMetadata) -> dict[str, Any]:
    return {"name": tensor.name, "datatype": oip_datatype(tensor.dtype), "shape": list(tensor.shape)}


def model_config(meta: ModelMetadata) -> dict[str, Any]:
    """Triton's model configuration (JSON mapping of its ModelConfig proto): with max_batch_size > 0 dims
    leave out the batch dimension."""
    batched = meta.max_batch_size > 0
    # a text (bars) model takes its tensors or the text (bars): none is required alone
    either = meta.text_input is not None or meta.bars_input is not None

    def entry(tensor: TensorMetadata, optional: bool) -> dict[str, Any]:
        datatype = oip_datatype(tensor.dtype)
        config: dict[str, Any] = {"name": tensor.name,
                                  "data_type": "TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}"}
        dims = list(tensor.shape[1:] if batched else tensor.shape)
        if dims:
            config["dims"] = dims
        else:  # one value per row: Triton spells it dims [1] reshaped to a scalar
            config["dims"], config["reshape"] = [1], {"shape": []}
        if optional:
            config["optional"] = True
        return config

    parameters = {"version": meta.version, "stage": meta.stage, "task": meta.task, "serving_backend": meta.backend,
                  "format": meta.platform, "labels": ",".join(meta.labels) if meta.labels else None}
    return {"name": meta.name, "platform": _TRITON_PLATFORMS.get(meta.platform, meta.platform),
            "backend": _TRITON_BACKENDS.get(meta.platform, ""), "max_batch_size": meta.max_batch_size,
            "input": [entry(t, either) for t in _inputs_of(meta)],
            "output": [entry(t, False) for t in meta.outputs],
            "parameters": {key: {"string_value": value} for key, value in parameters.items() if value}}


def provenance_parameters(result: InferenceResult) -> dict[str, str]:
    """Who answered, as response parameters: version, stage, A/B arm, the audit request id an outcome is
    later posted under, and the artifact; unset ones are left out. (``inference_time_ms`` goes beside
    them as a number.)"""
    provenance = result.provenance
    values = {"model_version": result.version, "stage": result.stage, "arm": result.arm,
              "experiment_id": result.experiment_id, "request_id": result.request_id,
              "backend": provenance.backend, "artifact": provenance.artifact, "format": provenance.format,
              "precision": provenance.precision, "sha256": provenance.sha256}
    member_versions = getattr(provenance, "member_versions", None)  # an ensemble's members (ensemble/runner.py)
    if member_versions is not None:
        values.update({f"{role}_model_version": value for role, value in member_versions().items()})
    return {key: value for key, value in values.items() if value}


class RepositoryIndexRequest(BaseModel):
    """POST /v2/repository/index: ``ready`` lists only what is loaded."""

    model_config = ConfigDict(extra="forbid")
    ready: bool = False


class RepositoryModelRequest(BaseModel):
    """POST /v2/repository/models/{name}/load (or unload): the version in ``parameters`` (none: production
    for load, every version no stage serves for unload). Other parameters Triton defines (a config to
    load with, unload_dependents) are refused or ignored as documented in docs/operations.md."""

    model_config = ConfigDict(extra="forbid")
    parameters: dict[str, Any] = Field(default_factory=dict)

    def version(self) -> str | None:
        unknown = sorted(set(self.parameters) - {"version", "unload_dependents"})
        if unknown:
            raise InvalidInput(f"unsupported repository parameters {unknown}: this server loads registered "
                               "versions (parameters.version), never a config or files sent with the request",
                               {"parameters": unknown})
        version = self.parameters.get("version")
        if version is not None and not isinstance(version, str):
            raise InvalidInput("parameters.version must be a string", {"version": repr(version)[:40]})
        return version


def repository_index(entries: Sequence[RepositoryEntry]) -> list[dict[str, str]]:
    return [{"name": e.name, "version": e.version, "state": e.state, "reason": e.reason} for e in entries]
