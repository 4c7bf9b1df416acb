"""The registry every property module serves: the demo's zoo models (a bars price model, a bars direction
classifier, a text model) and its price + sentiment ensemble (the one the /api/v1 aliases name), and the tiny
ONNX regressor (production and staging)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def property_store_template(demo_store, tiny_store_template, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("properties") / "store"
    shutil.copytree(demo_store, root, symlinks=True)
    for model in tiny_store_template.iterdir():
        if not model.name.startswith("."):
            shutil.copytree(model, root / model.name, symlinks=True)
    return root
