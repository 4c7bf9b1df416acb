"""A copy of the demo registry with the price + sentiment ensemble registered and in production."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from prediction_service.ensemble import EnsembleMember, EnsembleRegistry, WeightedPriceSentiment
from prediction_service.settings import AuditSettings, Settings
from tests.support.asgi import served_app

ENSEMBLE = "price-sentiment"
MEMBERS = (EnsembleMember(role="price", model="lstm-price"),
           EnsembleMember(role="sentiment", model="sentiment-transformer"))
COMBINER = WeightedPriceSentiment(price_weight=0.6, sentiment_weight=0.4, sentiment_scale=0.02)


def register_ensemble(root: Path, version: str = "1.0.0", stage: str | None = "production",
                      combiner: WeightedPriceSentiment = COMBINER):
    registry = EnsembleRegistry(root)
    registry.register(ENSEMBLE, version, MEMBERS, combiner, description="LSTM price + transformer sentiment")
    if stage:
        registry.promote(ENSEMBLE, version, stage, actor="test")
    return registry


@pytest.fixture
def ensemble_store(demo_store, tmp_path) -> Path:
    root = tmp_path / "store"
    shutil.copytree(demo_store, root, symlinks=True)
    register_ensemble(root)
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
