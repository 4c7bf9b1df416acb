from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.support.models import register_slow

SLOW_STEPS = 200
"""~30 ms per row on one thread: long enough for queues to form under load."""


@pytest.fixture(scope="session")
def ops_store_template(tiny_store_template, tmp_path_factory) -> Path:
    """The tiny registry plus slow-regressor 1.0.0 (production), a deliberately heavy TorchScript model."""
    root = tmp_path_factory.mktemp("ops-store") / "store"
    shutil.copytree(tiny_store_template, root, symlinks=True)
    register_slow(root, tmp_path_factory.mktemp("slow-export"), steps=SLOW_STEPS)
    return root


@pytest.fixture
def ops_store(ops_store_template, tmp_path) -> Path:
    root = tmp_path / "ops-store"
    shutil.copytree(ops_store_template, root, symlinks=True)
    return root
