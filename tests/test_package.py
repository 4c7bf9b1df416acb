"""`pip install .` gives the package and its CLI: the wheel built from pyproject.toml holds every module and
data file of the source tree, declares the pinned requirements, and the installed copy runs outside the
checkout (`python -m prediction_service` and the `prediction-service` script)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHIPPED = ("*.py", "*.txt", "*.mako")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    source = tmp_path_factory.mktemp("source")  # a copy: setuptools writes build/ and egg-info beside the sources
    for name in ("pyproject.toml", "README.md", "requirements.txt"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "prediction_service", source / "prediction_service",
                    ignore=shutil.ignore_patterns("__pycache__"))
    # no build isolation: the venv's setuptools, no index needed
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(source)], check=True, env={**os.environ, "PIP_NO_INPUT": "1"}, timeout=300)
    [built] = out.glob("prediction_service-*.whl")
    return built


def test_the_wheel_holds_every_module_and_data_file(wheel: Path):
    names = set(zipfile.ZipFile(wheel).namelist())
    source = {str(path.relative_to(REPO)) for pattern in SHIPPED for path in (REPO / "prediction_service").rglob(pattern)
              if "__pycache__" not in path.parts}
    assert source - names == set()


def test_the_wheel_declares_the_pinned_requirements_and_the_script(wheel: Path):
    archive = zipfile.ZipFile(wheel)
    info = next(name for name in archive.namelist() if name.endswith(".dist-info/METADATA"))
    declared = {line.split(": ", 1)[1] for line in archive.read(info).decode().splitlines()
                if line.startswith("Requires-Dist: ")}
    pinned = {line.strip() for line in (REPO / "requirements.txt").read_text().splitlines()
              if line.strip() and not line.startswith("#")}
    assert declared == pinned
    entry_points = next(name for name in archive.namelist() if name.endswith(".dist-info/entry_points.txt"))
    assert "prediction-service = prediction_service.cli:main" in archive.read(entry_points).decode()


def test_the_installed_package_runs_outside_the_checkout(wheel: Path, tmp_path: Path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, timeout=300)
    env = {**os.environ, "PYTHONPATH": str(target)}
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    module = subprocess.run([sys.executable, "-c", "import prediction_service; print(prediction_service.__file__)"],
                            cwd=outside, env=env, capture_output=True, text=True, check=True)
    assert Path(module.stdout.strip()).is_relative_to(target)
    for command in ([sys.executable, "-m", "prediction_service", "--help"], [str(target / "bin" / "prediction-service"), "--help"]):
        run = subprocess.run(command, cwd=outside, env=env, capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
        assert "serve" in run.stdout and "registry" in run.stdout
