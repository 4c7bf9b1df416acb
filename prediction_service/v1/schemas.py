"""Request and response models of the prediction API (shared by REST and future protocols)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .. import types as core

# Wire names the server and prediction_service.client share.
REQUEST_ID_HEADER = "X-Request-Id"
DEADLINE_HEADER = "X-Request-Deadline-Ms"
API_KEY_HEADER = "X-API-Key"
MAX_DEADLINE_MS = core.MAX_DEADLINE_MS
MAX_N_STEPS = core.MAX_N_STEPS


class PredictRequest(BaseModel):
    """Exactly one of ``inputs`` (a batch, batch dim first), ``instances`` (a list of rows),
    ``instance`` (one row), ``text`` (for models that declare a tokenizer) or ``bars`` (raw OHLCV, for
    models that declare a bars pre-processing step)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"instance": {"ohlcv": [[100.0, 101.0, 99.5, 100.5, 12000.0]] * 60}},
        {"text": ["Shares rally after strong earnings beat"]},
        {"bars": [[100.0, 101.0, 99.5, 100.5, 12000.0]] * 60},
    ]})

    # Tensor payloads are typed Any on purpose: pydantic would walk every number of a 60x110 window;
    # the signature check (numpy) validates them instead. The schema below still documents them.
    inputs: Any = Field(None, description="Batch: tensor name -> nested list with the batch dim first.",
                        json_schema_extra={"type": "object", "additionalProperties": {"type": "array"}})
    instances: Any = Field(None, description="Rows without the batch dim: {tensor: row} each, or bare rows "
                           "for single-input models.", json_schema_extra={"type": "array"})
    instance: Any = Field(None, description="One row (no batch dim): {tensor: row}, or a bare row for "
                          "single-input models.", json_schema_extra={"type": ["object", "array"]})
    text: list[str] | str | None = Field(None, description="Text for models with a tokenizer.")
    bars: Any = Field(None, description="Raw OHLCV bars for models that declare a bars step: one window "
                      "[[open, high, low, close, volume], ...] or a batch of windows, or named columns "
                      '{"open": [...], "high": [...], "low": [...], "close": [...], "volume": [...]} (a list of '
                      "such objects is a batch); the server computes the model's input with the step it was "
                      "trained with.", json_schema_extra={"type": ["array", "object"]})
    version: str | None = Field(None, description="Serve this exact version (wins over stage).", max_length=128)
    stage: str | None = Field(None, description="production (default) or staging.", max_length=32)
    routing_key: str | None = Field(None, description="Sticky A/B routing key, e.g. a symbol or client id.",
                                    max_length=256)
    priority: int | None = Field(None, ge=0, le=core.MAX_PRIORITY_LEVELS, strict=True,
                                 description="Queue priority, as Triton's: 1 is the highest; 0 or absent: the API "
                                 "key's default, else the server's (BATCH_DEFAULT_PRIORITY). At most "
                                 "BATCH_PRIORITY_LEVELS.")
    n_steps: int | None = Field(None, ge=1, le=MAX_N_STEPS, strict=True,
                                description="Forecasters: answer with the first n_steps steps of the model's "
                                "horizon (more than the horizon is 422); absent: the whole horizon.")

    @model_validator(mode="after")
    def _one_payload(self) -> "PredictRequest":
        given = [f for f in ("inputs", "instances", "instance", "text", "bars") if getattr(self, f) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of inputs, instances, instance, text or bars (got {given or 'none'})")
        if self.bars is not None and not isinstance(self.bars, (list, dict)):
            raise ValueError("bars must be an array of [open, high, low, close, volume] rows (or of such windows), "
                             "or named columns {open: [...], high: [...], low: [...], close: [...], volume: [...]}")
        if self.inputs is not None and not (isinstance(self.inputs, dict)
                                            and all(isinstance(v, list) for v in self.inputs.values())):
            raise ValueError("inputs must be an object of tensor name -> array")
        if self.instances is not None and not isinstance(self.instances, list):
            raise ValueError("instances must be an array of rows")
        if self.instance is not None and not isinstance(self.instance, (dict, list)):
            raise ValueError("instance must be an object of tensor name -> row, or a row")
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


class ModelSummary(BaseModel):
    name: str
    versions: list[str]
    stages: dict[str, str | None]
    loaded_versions: list[str]
    memory_bytes: dict[str, int] | None = Field(None, description="Per loaded version: resident memory its load "
                                                "added (in-process backends; absent for remote ones).")


class ModelDetail(ModelSummary):
    signature: dict[str, Any]
    serving: dict[str, str] = Field(description="Stage -> version this worker is serving.")
    load_failures: dict[str, str]
    backend: dict[str, Any] = Field(description="Backend metadata and statistics per loaded version.")
    versions_detail: list[dict[str, Any]]
