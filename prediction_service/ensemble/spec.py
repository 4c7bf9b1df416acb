"""What a registered ensemble is: ``<root>/<name>/v<version>/ensemble.json``, beside models in the same
registry (one namespace, the same stage links, locks and event log).

An ensemble version has no artifact: its document names the member models (by stage, or pinned to a
version) and one shipped combiner with its parameters. It is stored under its own file name, not
metadata.json, so model readers (and the model manager's preload) never take it for a model.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..registry.layout import ENSEMBLE_FILE as ENSEMBLE_FILE  # re-exported: the name lives with the layout
from ..registry.layout import validate_name, validate_version
from ..registry.model_version import Status
from .combiners import Combiner

ENSEMBLE_BACKEND = "ensemble"
"""Backend, format and platform an ensemble reports: it runs no artifact of its own."""
Role = Literal["price", "sentiment"]
ROLES: tuple[Role, ...] = ("price", "sentiment")
"""The members a price + sentiment ensemble has, one model each."""


class EnsembleMember(BaseModel):
    """One member: a registered model, followed by stage (production by default) or pinned to a version."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    role: Role
    model: str
    stage: Literal["production", "staging"] | None = None
    version: str | None = None

    @field_validator("model")
    @classmethod
    def _valid_model(cls, value: str) -> str:
        return validate_name(value)

    @field_validator("version")
    @classmethod
    def _valid_version(cls, value: str | None) -> str | None:
        return None if value is None else validate_version(value)

    @model_validator(mode="after")
    def _stage_or_version(self) -> "EnsembleMember":
        if self.stage is not None and self.version is not None:
            raise ValueError(f"member {self.role}: give a stage or a pinned version, not both")
        return self

    @property
    def followed_stage(self) -> str | None:
        """The stage this member follows (production when neither a stage nor a version is given)."""
        return None if self.version is not None else (self.stage or "production")

    def describe(self) -> str:
        return f"{self.model} {self.version}" if self.version else f"{self.model}/{self.followed_stage}"


class EnsembleMetadata(BaseModel):
    """Contents of ``ensemble.json``."""

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = 1
    kind: Literal["ensemble"] = "ensemble"
    name: str
    version: str
    created_at: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))
    description: str = ""
    members: tuple[EnsembleMember, ...]
    combiner: Combiner
    status: Status = "none"
    tags: dict[str, str] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        return validate_name(value)

    @field_validator("version")
    @classmethod
    def _valid_version(cls, value: str) -> str:
        return validate_version(value)

    @model_validator(mode="after")
    def _one_member_per_role(self) -> "EnsembleMetadata":
        roles = sorted(member.role for member in self.members)
        if roles != sorted(ROLES):
            raise ValueError(f"an ensemble has exactly one member per role {list(ROLES)}, got {roles}")
        if any(member.model == self.name for member in self.members):
            raise ValueError("an ensemble cannot be its own member")
        return self

    def member(self, role: Role) -> EnsembleMember:
        return next(member for member in self.members if member.role == role)


class Ensemble(BaseModel):
    """A resolved ensemble version: its document, where it lives, and the stage it was resolved through."""

    model_config = ConfigDict(frozen=True)

    path: Path
    metadata: EnsembleMetadata
    sha256: str
    """Of ensemble.json: names exactly what answered, like an artifact's hash."""
    stage: str | None = None

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def version(self) -> str:
        return self.metadata.version
