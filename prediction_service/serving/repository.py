"""The Open Inference Protocol's model-repository extension (index, load, unload), mapped onto the registry
(what is on disk) and the model manager (what this worker has loaded).

Load brings a registered version into memory beside what the stages serve (no version: production);
unload takes out a version no stage serves. What a stage serves is the stage's to change (promote,
archive): it cannot be unloaded this way, or the next request would only load it again.
"""

from __future__ import annotations

from ..errors import Conflict, ModelNotFound
from ..registry import ModelVersion
from ..types import RepositoryEntry
from .model_manager import ModelManager


class ModelRepository:
    def __init__(self, manager: ModelManager):
        self.manager = manager

    def index(self, ready_only: bool = False) -> list[RepositoryEntry]:
        entries = []
        for name in self.manager.reader.model_names():
            failures = self.manager.failures(name)
            for version in self.manager.reader.versions(name):
                loaded = self.manager.adapter.is_loaded(version.key)
                if ready_only and not loaded:
                    continue
                reason = version.metadata.status
                if version.version in failures:
                    reason = f"{reason}; load failed: {failures[version.version]}"
                entries.append(RepositoryEntry(name, version.version, "READY" if loaded else "UNAVAILABLE",
                                               reason))
        return entries

    async def load(self, name: str, version: str | None) -> ModelVersion:
        """Load ``version`` (no version: what production serves) and keep it until unloaded or idle."""
        target = self.manager.reader.resolve(name, version, None if version else "production")
        await self.manager.ensure_loaded(target)
        return target

    async def unload(self, name: str, version: str | None) -> list[str]:
        """Unload ``version`` (no version: every loaded version of ``name`` that no stage serves); the
        versions unloaded. A version a stage serves is refused (409)."""
        versions = self.manager.reader.versions(name)
        if version is not None:
            chosen = [v for v in versions if v.version == version]
            if not chosen:
                self.manager.reader.get(name, version)  # the registry's own not-found answer
            served = self.manager.served_stage(chosen[0].key)
            if served is not None:
                raise Conflict(f"{name} {version} serves {served}: move the stage (promote or archive) instead",
                               {"model": name, "version": version, "stage": served})
        else:
            chosen = [v for v in versions if self.manager.adapter.is_loaded(v.key)
                      and self.manager.served_stage(v.key) is None]
            if not chosen and not any(self.manager.adapter.is_loaded(v.key) for v in versions):
                raise ModelNotFound(f"no version of {name} is loaded", {"model": name})
            if not chosen:
                raise Conflict(f"every loaded version of {name} serves a stage: move the stage instead",
                               {"model": name})
        for target in chosen:
            await self.manager.unload(target.key, "unloaded through the repository API")
        return [target.version for target in chosen]
