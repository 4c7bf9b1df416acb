from __future__ import annotations

from pathlib import Path

import pytest

from prediction_service.experiments.service import ExperimentService, VersionFacts
from prediction_service.experiments.store import ExperimentStore
from prediction_service.settings import ExperimentSettings

KNOWN_VERSIONS = {("sentiment", "1.0.0"), ("sentiment", "1.1.0"), ("sentiment", "1.2.0"),
                  ("price", "1.0.0"), ("price", "2.0.0")}


def version_exists(name: str, version: str) -> bool:
    return (name, version) in KNOWN_VERSIONS


class Catalog:
    """What the registry tells create(): production versions and validation (a dict, not a registry)."""

    def __init__(self, production: dict[str, str], unvalidated: set[tuple[str, str]] = frozenset()):
        self.production_versions = production
        self.unvalidated = unvalidated

    def production(self, model_name: str) -> str | None:
        return self.production_versions.get(model_name)

    def facts(self, model_name: str, version: str) -> VersionFacts | None:
        if (model_name, version) not in KNOWN_VERSIONS:
            return None
        status = "production" if self.production_versions.get(model_name) == version else "none"
        return VersionFacts(status=status, validation_passed=(model_name, version) not in self.unvalidated)


class RecordingPromoter:
    """A promoter that records its calls (the registry's promote is wired in by the app)."""

    def __init__(self, fail: bool = False):
        self.calls: list[tuple[str, str]] = []
        self.fail = fail

    def __call__(self, name: str, version: str) -> None:
        if self.fail:
            raise RuntimeError("registry unavailable")
        self.calls.append((name, version))


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "experiments.sqlite3"


@pytest.fixture
def promoter() -> RecordingPromoter:
    return RecordingPromoter()


@pytest.fixture
def make_service(db_path: Path, promoter: RecordingPromoter):
    stores: list[ExperimentStore] = []

    def make(catalog: Catalog | None = None, **settings) -> ExperimentService:
        store = ExperimentStore(db_path)
        stores.append(store)
        return ExperimentService(store, ExperimentSettings(**settings), promoter, version_exists, catalog=catalog)

    yield make
    for store in stores:
        store.close()


@pytest.fixture
def service(make_service) -> ExperimentService:
    return make_service(min_samples_per_arm=50)
