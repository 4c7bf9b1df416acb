"""What a registered version is: metadata.json's schema and the resolved ModelVersion handed to adapters."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field

from ..signature import ModelSignature

ArtifactFormat = Literal["onnx", "torchscript", "state_dict"]
Status = Literal["none", "staging", "production", "archived"]


class ModelKey(NamedTuple):
    name: str
    version: str

    def __str__(self) -> str:
        return f"{self.name}:{self.version}"


class ArtifactInfo(BaseModel):
    model_config = ConfigDict(frozen=True)

    file: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    format: ArtifactFormat
    precision: Literal["fp32", "fp16", "int8"] = "fp32"
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size_bytes: int = Field(ge=0)


class ValidationReport(BaseModel):
    """Evidence that a version computes what it should: numeric parity or a smoke run."""

    passed: bool
    kind: Literal["numeric_parity", "smoke"]
    details: dict[str, Any] = Field(default_factory=dict)
    checked_at: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))


class VersionMetadata(BaseModel):
    """Contents of ``<name>/v<version>/metadata.json``."""

    model_config = ConfigDict(protected_namespaces=())

    schema_version: int = 1
    name: str
    version: str
    created_at: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))
    description: str = ""
    architecture: str | None = None
    """modelzoo architecture name; needed to load ``state_dict`` artifacts."""
    architecture_config: dict[str, Any] = Field(default_factory=dict)
    signature: ModelSignature
    artifacts: list[ArtifactInfo] = Field(default_factory=list)
    """Filled in by the registry when files are copied in (register_version)."""
    metrics: dict[str, float] = Field(default_factory=dict)
    tags: dict[str, str] = Field(default_factory=dict)
    status: Status = "none"
    validation: ValidationReport | None = None
    benchmarks: dict[str, Any] = Field(default_factory=dict)


class ModelVersion(BaseModel):
    """A version resolved from the registry: everything an adapter needs, nothing of the registry's internals."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    path: Path
    metadata: VersionMetadata
    stage: str | None = None
    """The stage this version was resolved through (production/staging), or None for an explicit version."""

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def version(self) -> str:
        return self.metadata.version

    @property
    def key(self) -> ModelKey:
        return ModelKey(self.metadata.name, self.metadata.version)

    @property
    def signature(self) -> ModelSignature:
        return self.metadata.signature

    def artifact(self, formats: tuple[str, ...], precision: str = "fp32") -> ArtifactInfo | None:
        """First artifact in ``formats`` order with ``precision``, falling back to fp32."""
        for wanted in dict.fromkeys((precision, "fp32")):
            for fmt in formats:
                for art in self.metadata.artifacts:
                    if art.format == fmt and art.precision == wanted:
                        return art
        return None

    def artifact_path(self, artifact: ArtifactInfo) -> Path:
        return self.path / artifact.file
