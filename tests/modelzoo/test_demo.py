import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort

from prediction_service.commands.demo_registry import (DEMO_ENSEMBLE, DEMO_MODELS, GBDT_NAME, PATCHTST_NAME,
                                                       build_demo_registry)
from prediction_service.ensemble import EnsembleRegistry
from prediction_service.preprocessing.tokenizer import Tokenizer
from prediction_service.packaging.pipeline import PackagingOptions
from prediction_service.registry import RegistryReader
from tests.support.demo_store import setup_demo_output
from tests.zoo_models import trained_models

FAST = PackagingOptions(fp16=True, int8=True, benchmark_runs=3, validation_rows=32)
REBUILD = PackagingOptions(torchscript=False, state_dict=False, benchmark_runs=0, validation_rows=8)
"""The least packaging a forced rebuild can do: one validated ONNX per model."""


def test_demo_registry_has_its_models_and_the_ensemble_in_production(demo_store: Path):
    """The session's demo registry, built as `setup-demo` builds it."""
    tmp_path = demo_store
    ensemble = EnsembleRegistry(tmp_path).resolve(DEMO_ENSEMBLE)
    assert ensemble.version == "1.0.0" and ensemble.metadata.status == "production"
    assert [m.describe() for m in ensemble.metadata.members] == ["lstm-price/production",
                                                                 "sentiment-transformer/production"]
    reader = RegistryReader(tmp_path)
    assert reader.model_names() == sorted({*DEMO_MODELS, GBDT_NAME, PATCHTST_NAME})
    for name, architecture in DEMO_MODELS.items():
        version = reader.resolve(name)
        assert version.version == "1.0.0" and version.stage == "production"
        meta = version.metadata
        assert meta.architecture == architecture and meta.validation.passed
        assert {(a.format, a.precision) for a in meta.artifacts} >= {
            ("onnx", "fp32"), ("torchscript", "fp32"), ("state_dict", "fp32")}
        onnx_file = version.artifact_path(version.artifact(("onnx",)))
        session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
        assert [i.name for i in session.get_inputs()] == [s.name for s in meta.signature.inputs]

    sentiment = reader.resolve("sentiment-transformer")
    tokenizer = Tokenizer.from_file(sentiment.path / sentiment.signature.text.tokenizer)
    ids, mask = tokenizer.encode_batch(["nvidia beats estimates, shares surge"], max_length=64)
    onnx_file = sentiment.artifact_path(sentiment.artifact(("onnx",)))
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    (probabilities,) = session.run(None, {"input_ids": ids, "attention_mask": mask})
    assert sentiment.signature.labels[int(np.argmax(probabilities))] == "positive"

    forecaster = reader.resolve(PATCHTST_NAME)
    meta = forecaster.metadata
    assert forecaster.stage == "production" and meta.validation.passed
    assert meta.signature.horizon == 8 and meta.signature.outputs[0].shape == (-1, 8)
    assert meta.signature.bars is not None and meta.signature.bars.kind == "ohlcv_window"
    assert {(a.format, a.precision) for a in meta.artifacts} >= {("onnx", "fp32"), ("torchscript", "fp32")}
    assert meta.tags["model_library"] == "transformers" and 1_000 <= meta.metrics["parameters"] <= 100_000
    assert not (tmp_path / ".packaging").exists()


def test_existing_models_are_skipped_unless_forced(demo_store: Path, tmp_path: Path):
    tmp_path = tmp_path / "store"
    shutil.copytree(demo_store, tmp_path, symlinks=True)  # built already: the session's demo registry
    metadata = tmp_path / "lstm-price" / "v1.0.0" / "metadata.json"
    before = metadata.read_bytes()
    assert build_demo_registry(tmp_path, options=REBUILD, trained=trained_models()) == {}
    assert metadata.read_bytes() == before
    rebuilt = build_demo_registry(tmp_path, force=True, options=REBUILD, trained=trained_models())
    assert set(rebuilt) == {*DEMO_MODELS, GBDT_NAME, PATCHTST_NAME}  # the ensemble follows its members' production: kept as is
    assert metadata.read_bytes() != before  # new created_at / validation timestamps
    assert RegistryReader(tmp_path).resolve("lstm-price").version == "1.0.0"


def test_setup_demo_command_builds_the_registry(demo_store: Path, tmp_path: Path, capsys):
    """The session's demo registry is the command's work (tests/conftest.py runs `setup-demo` to build it)."""
    import argparse

    from prediction_service.commands import setup_demo

    out = setup_demo_output(demo_store)
    assert "lstm-price v1.0.0" in out and "price-sentiment v1.0.0" in out
    assert RegistryReader(demo_store).stages("cnn-lstm-direction")["production"] == "1.0.0"
    store = tmp_path / "store"
    shutil.copytree(demo_store, store, symlinks=True)
    parser = argparse.ArgumentParser()
    setup_demo.register(parser.add_subparsers())
    args = parser.parse_args(["setup-demo", "--store", str(store)])
    assert args.func(args) == 0
    assert "nothing new" in capsys.readouterr().out


async def test_gbdt_direction_is_a_lightgbm_model_served_from_raw_bars(tmp_path: Path):
    """The tree model of the demo: ONNX converted from LightGBM, validated against LightGBM, declaring the
    ohlcv_features step (window 1), so raw bars in give LightGBM's own probabilities out."""
    import lightgbm

    from prediction_service.commands.demo_registry import build_gbdt_direction
    from prediction_service.modelzoo import gbdt
    from prediction_service.modelzoo.datasets import bar_windows
    from prediction_service.modelzoo.synthetic import synthetic_ohlcv
    from prediction_service.preprocessing.bars import preprocess_bars
    from prediction_service.settings import Settings
    from tests.support.asgi import served_app

    version = build_gbdt_direction(tmp_path, options=FAST)
    assert version is not None and build_gbdt_direction(tmp_path, options=FAST) is None  # present: skipped
    meta = RegistryReader(tmp_path).resolve(GBDT_NAME).metadata
    assert [(a.format, a.precision) for a in meta.artifacts] == [("onnx", "fp32")]
    assert meta.signature.bars == gbdt.bars_step() and meta.signature.labels == ["down", "flat", "up"]
    report = meta.validation.details["variants"]["onnx-fp32"]
    assert report["top1_agreement"] == 1.0 and report["max_abs_error"] < 1e-5
    assert set(meta.benchmarks) == {"onnx-fp32"}

    step = meta.signature.bars
    bars = bar_windows(synthetic_ohlcv(step.min_bars + 4, seed=17), 4, step.min_bars)
    async with served_app(Settings(model_store=tmp_path)) as (_, http):
        response = await http.post(f"/v1/models/{GBDT_NAME}/predict", json={"bars": bars.tolist()})
    assert response.status_code == 200, response.text
    body = response.json()
    native = lightgbm.Booster(model_file=str(version.path / gbdt.MODEL_FILE))
    expected = native.predict(preprocess_bars(step, bars).reshape(4, -1))
    np.testing.assert_allclose(np.array(body["outputs"]["probabilities"]), expected, atol=1e-5)
    assert [p["label"] for p in body["predictions"]] == [["down", "flat", "up"][i] for i in expected.argmax(axis=1)]
