from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from prediction_service.adapters.factory import ServingAdapterFactory, UnknownAdapterType
from prediction_service.settings import Settings, example_env

REPO = Path(__file__).resolve().parents[1]


def test_env_vars_reach_their_section(monkeypatch, tmp_path):
    monkeypatch.setenv("SIMPLE_MAX_MODELS_IN_MEMORY", "3")
    monkeypatch.setenv("BATCH_MAX_QUEUE_DELAY_MS", "0.5")
    monkeypatch.setenv("MODEL_STORE", str(tmp_path))
    settings = Settings()
    assert settings.simple.max_models_in_memory == 3
    assert settings.batching.max_queue_delay_ms == 0.5
    assert settings.model_store == tmp_path.resolve()
    assert settings.server.host == "127.0.0.1"  # loopback unless told otherwise


def test_unknown_adapter_type_names_the_valid_ones(monkeypatch):
    monkeypatch.setenv("SERVING_ADAPTER_TYPE", "tensorflow")
    with pytest.raises(ValidationError, match="valid: simple, torchscript, torchserve, triton"):
        Settings()


def test_factory_refuses_unregistered_type():
    with pytest.raises(UnknownAdapterType, match="valid:"):
        ServingAdapterFactory.adapter_class("nope")


def test_invalid_values_are_refused(monkeypatch):
    monkeypatch.setenv("SERVER_PORT", "70000")
    with pytest.raises(ValidationError, match="port"):
        Settings()


def test_example_env_documents_every_variable():
    committed = (REPO / "config" / "example.env").read_text()
    assert committed.strip() == example_env().strip(), "regenerate: python -m prediction_service config-example"
    for line in committed.splitlines():
        if "=" in line and not line.startswith("#"):
            index = committed.splitlines().index(line)
            assert committed.splitlines()[index - 1].startswith("# ") and len(committed.splitlines()[index - 1]) > 4
