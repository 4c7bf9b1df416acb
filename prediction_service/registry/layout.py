"""Paths inside the registry root, and the validation that keeps every path inside it."""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import InvalidName

STAGES = ("production", "staging")
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,127}$")
METADATA_FILE = "metadata.json"


def validate_name(name: str, what: str = "model name") -> str:
    """Model names and versions: lowercase ``[a-z0-9][a-z0-9._-]*``, no ``..``, no separators."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or ".." in name:
        raise InvalidName(
            f"invalid {what} {name!r}: use lowercase letters, digits, '.', '_' or '-', "
            "starting with a letter or digit, no '..'",
            {"value": name if isinstance(name, str) else repr(name)},
        )
    return name


def validate_version(version: str) -> str:
    return validate_name(version, "version")


def validate_stage(stage: str) -> str:
    if stage not in STAGES:
        raise InvalidName(f"unknown stage {stage!r}; valid: {', '.join(STAGES)}", {"value": stage})
    return stage


class RegistryLayout:
    """Maps names to paths under ``root`` and refuses anything that would leave it."""

    def __init__(self, root: Path):
        self.root = Path(root).expanduser().resolve()

    def model_dir(self, name: str) -> Path:
        return self._inside(self.root / validate_name(name))

    def version_dir(self, name: str, version: str) -> Path:
        return self._inside(self.model_dir(name) / f"v{validate_version(version)}")

    def stage_link(self, name: str, stage: str) -> Path:
        return self.model_dir(name) / validate_stage(stage)

    def metadata_path(self, name: str, version: str) -> Path:
        return self.version_dir(name, version) / METADATA_FILE

    def read_stage(self, name: str, stage: str) -> str | None:
        """Version a stage link points to, or None. A link that leaves the model dir is refused."""
        link = self.stage_link(name, stage)
        try:
            target = os.readlink(link)
        except (FileNotFoundError, OSError):
            return None
        if "/" in target or not target.startswith("v"):
            raise InvalidName(f"stage link {name}/{stage} points outside its model: {target!r}")
        return validate_version(target[1:])

    def _inside(self, path: Path) -> Path:
        # Resolve symlinks too: a planted link to /etc must not be followed.
        resolved = path.resolve()
        if resolved != self.root and self.root not in resolved.parents:
            raise InvalidName(f"path escapes the registry root: {path}")
        return path
