from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture
def ops_store(slow_store_template, tmp_path) -> Path:
    root = tmp_path / "ops-store"
    shutil.copytree(slow_store_template, root, symlinks=True)
    return root
