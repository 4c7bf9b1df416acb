"""Tiny real ONNX models (torch Linear layers with a dynamic batch axis) and stores built from them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from prediction_service.registry import ArtifactSource, ModelRegistry

REPO_ROOT = Path(__file__).resolve().parents[2]


def _export_linear(path: Path, seed: int, in_features: int = 4, out_features: int = 2) -> Path:
    import torch

    torch.manual_seed(seed)
    model = torch.nn.Linear(in_features, out_features).eval()
    torch.onnx.export(model, (torch.zeros(1, in_features),), str(path), input_names=["features"],
                      output_names=["prediction"], dynamic_axes={"features": {0: "batch"}, "prediction": {0: "batch"}},
                      dynamo=False)
    return path


@pytest.fixture(scope="session")
def onnx_models(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("onnx")
    return {
        "a": _export_linear(base / "model_a.onnx", seed=1),
        "b": _export_linear(base / "model_b.onnx", seed=2),
        "wide": _export_linear(base / "model_wide.onnx", seed=3, in_features=6, out_features=3),
    }


def _export_bars_model(path: Path, seed: int, window: int = 60) -> Path:
    """A tiny price model over [batch, window, 5] OHLCV windows (what an ohlcv_window bars step makes)."""
    import torch

    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(window * 5, 1)).eval()
    torch.onnx.export(model, (torch.zeros(1, window, 5),), str(path), input_names=["window"],
                      output_names=["price"], dynamic_axes={"window": {0: "batch"}, "price": {0: "batch"}},
                      dynamo=False)
    return path


@pytest.fixture(scope="session")
def bars_models(tmp_path_factory) -> dict[str, Path]:
    """ONNX price models over 60 bars (two seeds) and a signature JSON declaring their ohlcv_window step."""
    from prediction_service.signature import BarsPreprocessing, ModelSignature, TensorSpec

    base = tmp_path_factory.mktemp("bars-onnx")
    signature = ModelSignature(inputs=[TensorSpec(name="window", dtype="float32", shape=(-1, 60, 5))],
                               outputs=[TensorSpec(name="price", dtype="float32", shape=(-1, 1))],
                               bars=BarsPreprocessing(kind="ohlcv_window", input="window", window=60))
    (base / "signature.json").write_text(signature.model_dump_json())
    parity = {"passed": True, "kind": "numeric_parity", "details": {"max_abs_diff": 1e-6}}
    (base / "parity.json").write_text(json.dumps(parity))
    return {"a": _export_bars_model(base / "lstm_a.onnx", seed=1),
            "b": _export_bars_model(base / "lstm_b.onnx", seed=2),
            "signature": base / "signature.json", "parity": base / "parity.json"}


def onnx_artifact(path: Path) -> list[ArtifactSource]:
    return [ArtifactSource(path=path, format="onnx", file_name="model.onnx")]


@pytest.fixture
def registry(tmp_path) -> ModelRegistry:
    return ModelRegistry(tmp_path / "store")


@pytest.fixture
def two_versions(registry, onnx_models) -> ModelRegistry:
    """Model ``price`` with versions 1.0.0 and 1.1.0, neither staged yet."""
    registry.register("price", "1.0.0", onnx_artifact(onnx_models["a"]), metrics={"mae": 0.5, "acc": 0.6})
    registry.register("price", "1.1.0", onnx_artifact(onnx_models["b"]), metrics={"mae": 0.4, "acc": 0.66})
    return registry


def run_cli(*args: str, env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "prediction_service", *args], cwd=REPO_ROOT,
                            capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=120)
    if check and result.returncode != 0:
        raise AssertionError(f"CLI {args} failed ({result.returncode}): {result.stderr}")
    return result


def assert_consistent(root: Path, name: str, expected_production: set[str] | None = None) -> ModelRegistry:
    """Open the store (which reconciles) and check links, metadata and events agree."""
    from datetime import datetime, timezone

    from prediction_service.registry.model_version import VersionMetadata

    link = Path(root) / name / "production"
    if expected_production is not None:
        assert link.is_symlink(), "the production link disappeared"
        assert os.readlink(link)[1:] in expected_production
    registry = ModelRegistry(root)
    production = registry.layout.read_stage(name, "production")
    staging = registry.layout.read_stage(name, "staging")
    statuses = {}
    for meta_path in sorted((Path(root) / name).glob("v*/metadata.json")):
        meta = VersionMetadata.model_validate_json(meta_path.read_bytes())  # parses: never torn
        statuses[meta.version] = meta.status
    if production is not None:
        assert (Path(root) / name / f"v{production}" / "metadata.json").is_file()
    assert [v for v, s in statuses.items() if s == "production"] == ([production] if production else [])
    assert [v for v, s in statuses.items() if s == "staging"] == ([staging] if staging else [])
    assert registry.events.production_at(name, datetime.now(timezone.utc)) == production
    assert not list((Path(root) / name).glob(".*.tmp")) and not list((Path(root) / name).glob("v*/.*.tmp"))
    return registry
