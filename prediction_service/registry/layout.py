"""Paths inside the registry root, and the validation that keeps every path inside it."""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import Conflict, InvalidName

STAGES = ("production", "staging")
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,127}$")
METADATA_FILE = "metadata.json"
ENSEMBLE_FILE = "ensemble.json"
"""The document of an ensemble version (ensemble/spec.py): models and ensembles share one namespace."""
_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_RESERVED_FILES = (METADATA_FILE, ".lock")


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


def validate_file_name(file_name: str) -> str:
    """Names of files copied into a version dir: one plain path component, not a reserved name."""
    if (not isinstance(file_name, str) or not _FILE_NAME.fullmatch(file_name) or ".." in file_name
            or file_name in _RESERVED_FILES):
        raise InvalidName(f"invalid file name {file_name!r}: use letters, digits, '.', '_' or '-', no '..'",
                          {"value": file_name if isinstance(file_name, str) else repr(file_name)})
    return file_name


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

    def new_version_dir(self, name: str, version: str) -> Path:
        """Where a new version goes; Conflict when it exists. Callers check early, before expensive work."""
        path = self.version_dir(name, version)
        if path.exists():
            raise Conflict(f"{name} version {version} already exists", {"model": name, "version": version})
        return path

    def has_versions(self, name: str, document: str) -> bool:
        """Whether ``name`` holds a version made of ``document`` (METADATA_FILE: a model's, ENSEMBLE_FILE:
        an ensemble's)."""
        model_dir = self.model_dir(name)
        return any(not p.parent.is_symlink() for p in model_dir.glob(f"v*/{document}")) if model_dir.is_dir() \
            else False

    def stage_link(self, name: str, stage: str) -> Path:
        return self.model_dir(name) / validate_stage(stage)

    def metadata_path(self, name: str, version: str) -> Path:
        return self.version_dir(name, version) / METADATA_FILE

    def read_stage(self, name: str, stage: str) -> str | None:
        """Version a stage link points to, or None. A link that leaves the model dir is refused.

        The link is read where it lies, without resolving the model dir (a dozen ``lstat`` calls on a path
        that runs per request for a version served outside its stage): all it yields is a checked version
        string, and every path built from that is checked when it is used."""
        link = os.path.join(self.root, validate_name(name), validate_stage(stage))
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
