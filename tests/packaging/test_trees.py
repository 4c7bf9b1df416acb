"""Tree models (issue 31): LightGBM, XGBoost and scikit-learn pipelines saved by their own libraries, packaged
into a real tmp registry (converted to ONNX in a child process, validated against the native predictions),
then served through the in-process app: the served answer is the native library's, within fp32 tolerance."""

from __future__ import annotations

import argparse
import json
import pickle
from pathlib import Path

import lightgbm
import numpy as np
import onnx
import pytest
import xgboost

from prediction_service.commands import package as package_command
from prediction_service.errors import InvalidInput
from prediction_service.packaging.pipeline import PackagingOptions, PackagingRequest, package_tree_model
from prediction_service.packaging.sources import load_source
from prediction_service.packaging.torchserve_mar import servable_artifact, signature_document
from prediction_service.packaging.triton_config import (TritonConfigOptions, TritonPlatform, choose_platform,
                                                        render_config)
from prediction_service.packaging.trees import TreeSource, detect_library, load_tree_model
from prediction_service.registry import RegistryReader
from prediction_service.registry.store import ModelRegistry
from prediction_service.signature import ModelSignature, TensorSpec
from prediction_service.settings import Settings
from tests.support.asgi import served_app

LABELS = ["sell", "hold", "buy"]
FAST = PackagingOptions(benchmark_runs=3, validation_rows=32)
ATOL = 1e-5


def _rows(n: int, seed: int, features: int = 12) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, features)).astype(np.float32)


def _labels(x: np.ndarray) -> np.ndarray:
    return (x[:, 0] > 0.3).astype(int) + (x[:, 1] + 0.5 * x[:, 2] > 0).astype(int)


def _run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    package_command.register(parser.add_subparsers())
    args = parser.parse_args(["package", *argv])
    return args.func(args)


async def _predict(store: Path, name: str, inputs: dict) -> dict:
    ModelRegistry(store).promote(name, "1.0.0", "production", actor="test")
    async with served_app(Settings(model_store=store)) as (_, http):
        response = await http.post(f"/v1/models/{name}/predict", json={"inputs": inputs})
        assert response.status_code == 200, response.text
        return response.json()


@pytest.fixture(scope="module")
def lightgbm_file(tmp_path_factory) -> Path:
    x = _rows(600, 0)
    path = tmp_path_factory.mktemp("lgb") / "direction.txt"
    lightgbm.LGBMClassifier(n_estimators=25, num_leaves=15, n_jobs=1, deterministic=True, force_row_wise=True,
                            verbose=-1).fit(x, _labels(x)).booster_.save_model(str(path))
    return path


async def test_a_lightgbm_text_model_is_packaged_by_the_cli_and_served_as_lightgbm_predicts(
        lightgbm_file, tmp_path, capsys):
    store = tmp_path / "store"
    code = _run_cli(str(lightgbm_file), "--name", "lgb-direction", "--version", "1.0.0", "--store", str(store),
                    "--labels", ",".join(LABELS), "--benchmark-runs", "3", "--validation-rows", "32")
    out = capsys.readouterr().out
    assert code == 0, out
    (line,) = [line for line in out.splitlines() if line.startswith("onnx-fp32")]
    assert line.endswith("accepted")

    version = RegistryReader(store).get("lgb-direction", "1.0.0")
    assert [(a.format, a.precision, a.file) for a in version.metadata.artifacts] == [("onnx", "fp32", "model.onnx")]
    assert version.signature.task == "classification" and version.signature.labels == LABELS
    assert [s.name for s in version.signature.outputs] == ["probabilities"]
    report = version.metadata.validation.details["variants"]["onnx-fp32"]
    assert report["passed"] and report["top1_agreement"] == 1.0 and report["max_abs_error"] < 1e-5
    graph = onnx.load(str(version.path / "model.onnx"))
    assert {o.domain for o in graph.opset_import} >= {"ai.onnx.ml"}
    assert [o.name for o in graph.graph.output] == ["probabilities"]  # the converter's label output is dropped

    rows = _rows(5, 99)
    body = await _predict(store, "lgb-direction", {"features": rows.tolist()})
    native = lightgbm.Booster(model_file=str(lightgbm_file)).predict(rows)
    np.testing.assert_allclose(np.array(body["outputs"]["probabilities"]), native, atol=ATOL)
    assert [p["label"] for p in body["predictions"]] == [LABELS[i] for i in native.argmax(axis=1)]
    assert set(body["predictions"][0]["scores"]) == set(LABELS)


async def test_an_xgboost_json_model_with_a_three_dim_input_is_flattened_in_the_graph(tmp_path):
    x = _rows(400, 1)
    target = (2.0 * x[:, 0] - x[:, 5] + 0.1 * x[:, 7]).astype(np.float32)
    path = tmp_path / "price.json"
    xgboost.XGBRegressor(n_estimators=30, max_depth=4, n_jobs=1).fit(x, target).save_model(str(path))
    assert detect_library(path) == "xgboost"
    model = load_tree_model(TreeSource(path=path, library="xgboost"))
    assert (model.task, model.n_features) == ("regression", 12)
    signature = ModelSignature(inputs=[TensorSpec(name="window", dtype="float32", shape=(-1, 3, 4))],
                               outputs=[TensorSpec(name="price", dtype="float32", shape=(-1, 1))])
    validation = {"window": _rows(32, 2).reshape(32, 3, 4)}
    result = package_tree_model(model, PackagingRequest(name="xgb-price", version="1.0.0", signature=signature),
                                tmp_path / "store", FAST, validation_inputs=validation)
    assert not result.rejected and set(result.benchmarks) == {"onnx-fp32"}

    rows = _rows(4, 3)
    body = await _predict(tmp_path / "store", "xgb-price", {"window": rows.reshape(4, 3, 4).tolist()})
    booster = xgboost.Booster()
    booster.load_model(str(path))
    native = booster.predict(xgboost.DMatrix(rows))
    np.testing.assert_allclose(np.array(body["outputs"]["price"])[:, 0], native, atol=ATOL, rtol=1e-6)


async def test_a_skops_pipeline_needs_its_extra_types_trusted_by_name(tmp_path, capsys):
    import skops.io as sio
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = _rows(300, 4)
    pipeline = make_pipeline(StandardScaler(), GradientBoostingClassifier(n_estimators=20, random_state=0))
    path = tmp_path / "pipeline.skops"
    sio.dump(pipeline.fit(x, _labels(x)), str(path))
    store = tmp_path / "store"
    argv = [str(path), "--name", "skl-direction", "--version", "1.0.0", "--store", str(store), "--benchmark-runs", "0",
            "--validation-rows", "16"]
    assert _run_cli(*argv) == 1
    assert "sklearn.tree._tree.Tree" in capsys.readouterr().err and not store.exists()

    assert _run_cli(*argv, "--trust", "sklearn.tree._tree.Tree") == 0
    version = RegistryReader(store).get("skl-direction", "1.0.0")
    assert version.signature.labels == ["0", "1", "2"]  # the pipeline's own classes_
    rows = _rows(6, 5)
    body = await _predict(store, "skl-direction", {"features": rows.tolist()})
    np.testing.assert_allclose(np.array(body["outputs"]["probabilities"]), pipeline.predict_proba(rows), atol=ATOL)


def test_pickles_are_never_loaded(tmp_path):
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps({"not": "loaded"}))
    with pytest.raises(InvalidInput, match="pickled models are not loaded"):
        load_source(path, None, {})
    joblib_file = tmp_path / "model.joblib"
    joblib_file.write_bytes(b"anything")
    with pytest.raises(InvalidInput, match="skops"):
        load_source(joblib_file, None, {})


def test_what_does_not_fit_a_tree_model_is_refused_before_any_work(lightgbm_file, tmp_path):
    model = load_tree_model(TreeSource(path=lightgbm_file, library="lightgbm"))
    signature = load_source(lightgbm_file, None, {}, labels=LABELS).signature
    request = PackagingRequest(name="refused", version="1.0.0", signature=signature)
    with pytest.raises(InvalidInput, match="fp16 and int8 variants do not apply"):
        package_tree_model(model, request, tmp_path, FAST.model_copy(update={"fp16": True}))
    wrong = signature.model_copy(update={"inputs": [TensorSpec(name="features", dtype="float32", shape=(-1, 10))]})
    with pytest.raises(InvalidInput, match="reads 12 features per row"):
        package_tree_model(model, request.model_copy(update={"signature": wrong}), tmp_path, FAST)
    with pytest.raises(InvalidInput, match="has 3 classes"):
        load_source(lightgbm_file, None, {}, labels=["up", "down"])
    assert not (tmp_path / "refused").exists()


def test_a_signature_file_declares_a_bars_step_for_a_tree_model(tmp_path):
    from prediction_service.modelzoo import gbdt

    path = tmp_path / "bars.txt"
    data = gbdt.dataset(300, seed=3)
    lightgbm.LGBMClassifier(n_estimators=5, verbose=-1, n_jobs=1).fit(
        data.inputs["features"].reshape(300, -1), data.targets).booster_.save_model(str(path))
    signature_file = tmp_path / "signature.json"
    signature_file.write_text(gbdt.signature().model_dump_json())
    source = load_source(path, None, {}, signature=ModelSignature.model_validate(json.loads(signature_file.read_text())))
    assert source.signature.bars == gbdt.bars_step() and source.signature.inputs[0].shape == (-1, 1, 110)


def test_triton_and_torchserve_serve_the_tree_graph_with_onnx_runtime(lightgbm_file, tmp_path):
    """Triton: only ONNX backends (onnxruntime, or the python backend running ONNX Runtime) can run the
    ai.onnx.ml graph; there is no TorchScript for pytorch_libtorch. TorchServe: the handler's ONNX path."""
    store = tmp_path / "store"
    source = load_source(lightgbm_file, None, {}, labels=LABELS)
    version = package_tree_model(source.model, PackagingRequest(name="lgb", version="1.0.0", signature=source.signature),
                                 store, FAST.model_copy(update={"benchmark_runs": 0})).version
    formats = {a.format for a in version.metadata.artifacts}
    assert choose_platform(None, formats) is TritonPlatform.PYTHON_ONNX
    backends = tmp_path / "backends"
    (backends / "pytorch").mkdir(parents=True)
    assert choose_platform(backends, formats) is TritonPlatform.PYTHON_ONNX  # libtorch has nothing to run
    (backends / "onnxruntime").mkdir()
    assert choose_platform(backends, formats) is TritonPlatform.ONNXRUNTIME
    config = render_config("lgb__1.0.0", version.signature, TritonConfigOptions())
    assert 'name: "probabilities"' in config and "dims: [ 12 ]" in config and "dims: [ 3 ]" in config

    artifact = servable_artifact(version)
    assert (artifact.format, artifact.file) == ("onnx", "model.onnx")
    assert signature_document(version, artifact)["artifact_format"] == "onnx"
