"""Request and response models of the prediction API (shared by REST and future protocols)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator


class PredictRequest(BaseModel):
    """Exactly one of ``inputs`` (a batch, batch dim first), ``instances`` (a list of rows),
    ``instance`` (one row) or ``text`` (for models that declare a tokenizer)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"instance": {"ohlcv": [[100.0, 101.0, 99.5, 100.5, 12000.0]] * 60}},
        {"text": ["Shares rally after strong earnings beat"]},
    ]})

    inputs: dict[str, list[Any]] | None = Field(None, description="Batch: tensor name -> nested list with the batch dim first.")
    instances: list[dict[str, list[Any]] | list[Any]] | None = Field(
        None, description="Rows without the batch dim: {tensor: row} each, or bare rows for single-input models.")
    instance: dict[str, list[Any]] | list[Any] | None = Field(None, description="One row (no batch dim).")
    text: list[str] | str | None = Field(None, description="Text for models with a tokenizer.")
    version: str | None = Field(None, description="Serve this exact version (wins over stage).", max_length=128)
    stage: str | None = Field(None, description="production (default) or staging.", max_length=32)
    routing_key: str | None = Field(None, description="Sticky A/B routing key, e.g. a symbol or client id.",
                                    max_length=256)

    @model_validator(mode="after")
    def _one_payload(self) -> "PredictRequest":
        given = [f for f in ("inputs", "instances", "instance", "text") if getattr(self, f) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of inputs, instances, instance or text (got {given or 'none'})")
        return self


class Provenance(BaseModel):
    backend: str = Field(description="Serving adapter that ran the model.")
    artifact: str = Field(description="Artifact file inside the version.")
    format: str
    precision: str
    sha256: str = Field(description="sha256 of the artifact that served this prediction.")


class PredictResponse(BaseModel):
    model: str
    version: str
    stage: str | None
    arm: str | None = Field(None, description="A/B arm (champion/challenger) when an experiment routed it.")
    experiment_id: str | None = None
    request_id: str
    inference_time_ms: float
    outputs: dict[str, list[Any]]
    predictions: list[Any] = Field(description="Per row: the value (regression) or {label, scores} (classification).")
    provenance: Provenance


class TensorInfo(BaseModel):
    name: str
    dtype: str
    shape: list[int]


class ModelSummary(BaseModel):
    name: str
    versions: list[str]
    stages: dict[str, str | None]
    loaded_versions: list[str]


class ModelDetail(ModelSummary):
    signature: dict[str, Any]
    serving: dict[str, str] = Field(description="Stage -> version this worker is serving.")
    load_failures: dict[str, str]
    backend: dict[str, Any] = Field(description="Backend metadata and statistics per loaded version.")
    versions_detail: list[dict[str, Any]]
