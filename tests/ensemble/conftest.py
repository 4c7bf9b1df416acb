"""A copy of the demo registry, which has the price + sentiment ensemble registered and in production."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from prediction_service.commands.demo_registry import DEMO_COMBINER, DEMO_ENSEMBLE, DEMO_ENSEMBLE_MEMBERS
from prediction_service.ensemble import EnsembleRegistry, WeightedPriceSentiment
from prediction_service.settings import AuditSettings, Settings
from tests.support.asgi import served_app

ENSEMBLE = DEMO_ENSEMBLE
MEMBERS = DEMO_ENSEMBLE_MEMBERS
COMBINER = DEMO_COMBINER
"""setup-demo registers price-sentiment v1.0.0 with these members and this combiner, in production."""


def register_ensemble(root: Path, version: str, stage: str | None = "production",
                      combiner: WeightedPriceSentiment = COMBINER):
    """Another version of the demo's ensemble."""
    registry = EnsembleRegistry(root)
    registry.register(ENSEMBLE, version, MEMBERS, combiner, description="LSTM price + transformer sentiment")
    if stage:
        registry.promote(ENSEMBLE, version, stage, actor="test")
    return registry


@pytest.fixture
def ensemble_store(demo_store, tmp_path) -> Path:
    root = tmp_path / "store"
    shutil.copytree(demo_store, root, symlinks=True)
    return root


def app_client(root: Path, **overrides):
    """The app on ``root`` (audit off, its own metrics registry), started, with a client: ``(app, http)``."""
    settings = Settings(model_store=root, audit=AuditSettings(enabled=False), **overrides)
    return served_app(settings, metrics_registry=CollectorRegistry())


@pytest.fixture
async def ensemble_client(ensemble_store):
    async with app_client(ensemble_store) as (app, http):
        http.app = app
        yield http
