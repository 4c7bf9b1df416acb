"""Fixtures that start a real TorchServe (shared for the session) and register a tiny real model."""

from __future__ import annotations

import pytest

from prediction_service.commands.servers.torchserve import LocalTorchServe, missing_requirements
from prediction_service.settings import Settings, TorchServeSettings
from tests.support.torchserve_models import build_scripted_model, register_tiny


def _require_torchserve() -> None:
    problem = missing_requirements()
    if problem:
        pytest.skip(f"TorchServe tests need java and torchserve: {problem}")


@pytest.fixture(scope="session")
def tiny_registry(tmp_path_factory):
    """A registry with tiny-lstm 1.0.0 (TorchScript) and the in-process model to compare with."""
    root = tmp_path_factory.mktemp("registry")
    scripted, artifact = build_scripted_model(tmp_path_factory.mktemp("artifacts"))
    version = register_tiny(root, artifact)
    return root, version, scripted


@pytest.fixture(scope="session")
def shared_torchserve(tmp_path_factory):
    """One TorchServe for the session, token auth off (the token test starts its own)."""
    _require_torchserve()
    store = tmp_path_factory.mktemp("ts-store")
    with LocalTorchServe(store, tmp_path_factory.mktemp("ts-work"), token_auth=False) as server:
        yield server


def torchserve_settings(registry_root, server: LocalTorchServe, **overrides) -> Settings:
    config = TorchServeSettings(inference_url=server.inference_url, management_url=server.management_url,
                                model_store=server.model_store, **overrides)
    return Settings(model_store=registry_root, torchserve=config)
