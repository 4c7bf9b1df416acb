"""Filesystem model registry: ``<root>/<name>/v<version>/`` with metadata.json and stage links."""

from .layout import STAGES, RegistryLayout, validate_name, validate_version
from .model_version import ArtifactInfo, ModelKey, ModelVersion, ValidationReport, VersionMetadata
from .reader import RegistryReader
from .store import ModelRegistry
from .writer import ArtifactSource

__all__ = [
    "STAGES",
    "ArtifactInfo",
    "ArtifactSource",
    "ModelKey",
    "ModelRegistry",
    "ModelVersion",
    "RegistryLayout",
    "RegistryReader",
    "ValidationReport",
    "VersionMetadata",
    "validate_name",
    "validate_version",
]
