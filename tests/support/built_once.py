"""Expensive session fixtures (trained demo registries) built once per test run, however many pytest-xdist
workers the run has: the first worker to ask builds under a file lock, the others wait and reuse it."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from filelock import FileLock


def built_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], object]) -> Path:
    """A directory ``build`` fills once per run. Readers must copy it before changing anything in it."""
    if os.environ.get("PYTEST_XDIST_WORKER") is None:  # one process: its own temp dir
        root = tmp_path_factory.mktemp(name)
        build(root)
        return root
    # Every worker's base temp dir sits in the run's own directory: shared by this run's workers only.
    run_dir = tmp_path_factory.getbasetemp().parent
    root, done = run_dir / name, run_dir / f"{name}.done"
    with FileLock(str(run_dir / f"{name}.lock")):
        if not done.exists():
            shutil.rmtree(root, ignore_errors=True)  # a worker that failed half way left a partial build
            root.mkdir()
            build(root)
            done.touch()
    return root
