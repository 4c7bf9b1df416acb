"""Repair after a crash: the stage links are the truth; metadata ``status`` and the event log follow them.

A promotion moves the link first (atomically), then rewrites metadata, then appends events. A
process killed in between leaves the link old or new, never missing, and at worst:

* the same version behind both ``production`` and ``staging`` (killed before the staging link was
  dropped) -> production wins, the staging link is removed;
* a version whose status names a stage whose link points elsewhere -> it was displaced: ``archived``;
* a version a link points at whose status says otherwise -> it takes the link's stage;
* the event log's replayed production differs from the link -> a ``reconciled`` event records the link;
* leftover ``.*.tmp`` files, links and directories from interrupted writes -> removed.

Callers hold the model's lock, so no write of this model is in progress while it runs.
"""

from __future__ import annotations

import logging
import os
import shutil
from datetime import datetime, timezone

from pydantic import BaseModel

from .events import EventLog
from .fsutil import fsync_dir
from .layout import METADATA_FILE, RegistryLayout
from .model_version import VersionMetadata
from .writer import write_metadata

log = logging.getLogger(__name__)
RECONCILE_ACTOR = "reconcile"


class Repair(BaseModel):
    model: str
    version: str | None
    action: str
    """status, drop_staging_link, event_log, temp_removed."""
    detail: str


def read_metadata(layout: RegistryLayout, name: str, version: str) -> VersionMetadata:
    """Uncached read for write paths (they must see the latest file, not a cached parse)."""
    return VersionMetadata.model_validate_json(layout.metadata_path(name, version).read_bytes())


def write_status(layout: RegistryLayout, metadata: VersionMetadata, status: str) -> VersionMetadata:
    updated = metadata.model_copy(update={"status": status})
    write_metadata(layout.metadata_path(metadata.name, metadata.version), updated)
    return updated


def version_names(layout: RegistryLayout, name: str) -> list[str]:
    model_dir = layout.model_dir(name)
    return sorted(p.name[1:] for p in model_dir.glob("v*")
                  if p.is_dir() and not p.is_symlink() and (p / METADATA_FILE).is_file())


def reconcile_model(layout: RegistryLayout, events: EventLog, name: str) -> list[Repair]:
    repairs = _remove_temp_files(layout, name)
    model_dir = layout.model_dir(name)
    production = layout.read_stage(name, "production")
    staging = layout.read_stage(name, "staging")
    if production is not None and production == staging:
        layout.stage_link(name, "staging").unlink()
        fsync_dir(model_dir)
        staging = None
        repairs.append(Repair(model=name, version=production, action="drop_staging_link",
                              detail="version was behind both production and staging; production wins"))
    for version in version_names(layout, name):
        metadata = read_metadata(layout, name, version)
        if version == production:
            expected = "production"
        elif version == staging:
            expected = "staging"
        else:
            expected = metadata.status if metadata.status in ("none", "archived") else "archived"
        if expected != metadata.status:
            write_status(layout, metadata, expected)
            events.record("reconciled", name, version, actor=RECONCILE_ACTOR,
                          from_stage=metadata.status, to_stage=expected,
                          details={"reason": "metadata status disagreed with the stage links"})
            repairs.append(Repair(model=name, version=version, action="status",
                                  detail=f"{metadata.status} -> {expected}"))
    logged = events.production_at(name, datetime.now(timezone.utc))
    if logged != production:
        # The link moved but the process died before its events were written.
        events.record("reconciled", name, production or logged, actor=RECONCILE_ACTOR,
                      from_stage=None if production else "production",
                      to_stage="production" if production else None,
                      details={"reason": "event log disagreed with the production link", "logged": logged})
        repairs.append(Repair(model=name, version=production, action="event_log",
                              detail=f"event log said {logged}, link says {production}"))
    for repair in repairs:
        log.warning("registry repair %s %s: %s (%s)", repair.model, repair.version, repair.action, repair.detail)
    return repairs


def _remove_temp_files(layout: RegistryLayout, name: str) -> list[Repair]:
    model_dir = layout.model_dir(name)
    leftovers = list(model_dir.glob(".*.tmp")) + list(model_dir.glob("v*/.*.tmp"))
    repairs = []
    for path in leftovers:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            os.unlink(path)
        repairs.append(Repair(model=name, version=None, action="temp_removed", detail=path.name))
    if leftovers:
        fsync_dir(model_dir)
    return repairs
