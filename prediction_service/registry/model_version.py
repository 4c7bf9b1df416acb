"""What a registered version is: metadata.json's schema and the resolved ModelVersion handed to adapters."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field

from ..artifacts import DEFAULT_PRECISION, ArtifactFormat, Precision
from ..signature import ModelSignature
from .layout import validate_file_name

Status = Literal["none", "staging", "production", "archived"]
CACHE_DIR = ".cache"
"""Per-version caches (see ModelVersion.cache_dir); hidden, and not a valid artifact file name."""


class ModelKey(NamedTuple):
    name: str
    version: str

    def __str__(self) -> str:
        return f"{self.name}:{self.version}"


class ArtifactInfo(BaseModel):
    model_config = ConfigDict(frozen=True)

    file: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    format: ArtifactFormat
    precision: Precision = DEFAULT_PRECISION
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

    def artifact(self, formats: tuple[str, ...], precision: str = DEFAULT_PRECISION) -> ArtifactInfo | None:
        """First artifact in ``formats`` order with ``precision``, falling back to fp32."""
        for wanted in dict.fromkeys((precision, DEFAULT_PRECISION)):
            for fmt in formats:
                for art in self.metadata.artifacts:
                    if art.format == fmt and art.precision == wanted:
                        return art
        return None

    def artifact_path(self, artifact: ArtifactInfo) -> Path:
        return self.path / artifact.file

    def cache_dir(self, purpose: str) -> Path:
        """A directory, created on first use, where a backend keeps what it derives from this version's
        artifacts (a compiled archive, ...). It lives inside the version, so it goes when the version is
        deleted, is shared by every worker, and is never listed as an artifact."""
        path = self.path / CACHE_DIR / validate_file_name(purpose)
        path.mkdir(parents=True, exist_ok=True)
        return path
