"""Variants that do not match the PyTorch model are rejected, named with their worst inputs, never registered."""

import argparse
from pathlib import Path

import numpy as np
import pytest
import torch

from prediction_service.commands import package as package_command
from prediction_service.errors import ValidationFailed
from prediction_service.architectures import signature_for
from prediction_service.packaging.pipeline import PackagingOptions, PackagingRequest, package_model
from prediction_service.packaging.sources import load_source
from prediction_service.packaging.validation import Tolerances, VariantTolerance, compare
from prediction_service.registry import RegistryReader
from prediction_service.signature import ModelSignature, TensorSpec
from tests.zoo_models import trained_models

OUTLIER_MODEL = Path(__file__).parent / "models" / "outlier_model.py"
FAST = PackagingOptions(fp16=True, int8=True, benchmark_runs=3, validation_rows=32)


def _run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    package_command.register(parser.add_subparsers())
    args = parser.parse_args(["package", *argv])
    return args.func(args)


def test_int8_variant_that_drifts_is_rejected_and_not_registered(tmp_path: Path):
    source = load_source(OUTLIER_MODEL, None, {})
    request = PackagingRequest(name="outlier", version="1.0.0", signature=source.signature)
    inputs = source.validation_inputs(32)
    result = package_model(source.model, request, tmp_path, FAST, validation_inputs=inputs)

    (rejected,) = result.rejected
    assert rejected.variant == "onnx-int8" and not rejected.passed
    assert any(f.startswith("max abs error") for f in rejected.failures)
    worst = rejected.worst_inputs
    assert len(worst) == Tolerances().worst_inputs
    assert [w.max_abs_error for w in worst] == sorted((w.max_abs_error for w in worst), reverse=True)
    assert worst[0].max_abs_error == pytest.approx(rejected.max_abs_error)
    assert worst[0].max_abs_error > Tolerances().int8.max_abs_error and 0 <= worst[0].index < 32

    version = RegistryReader(tmp_path).get("outlier", "1.0.0")
    assert all(a.precision != "int8" for a in version.metadata.artifacts)
    assert not (version.path / "model.int8.onnx").exists()
    details = version.metadata.validation.details
    assert [r["variant"] for r in details["rejected"]] == ["onnx-int8"]
    assert details["rejected"][0]["worst_inputs"][0]["index"] == worst[0].index
    assert "onnx-int8" not in version.metadata.benchmarks and "onnx-fp16" in version.metadata.benchmarks


def test_required_fp32_export_failing_registers_nothing(tmp_path: Path):
    trained = trained_models()["cnn_lstm_direction"]
    impossible = VariantTolerance(max_abs_error=1e-30, mean_abs_error=1e-30, min_top1_agreement=1.0)
    options = FAST.model_copy(update={"tolerances": Tolerances(fp32=impossible)})
    request = PackagingRequest(name="too-tight", version="1.0.0", signature=signature_for("cnn_lstm_direction"),
                               architecture="cnn_lstm_direction", architecture_config=trained.config)
    with pytest.raises(ValidationFailed) as info:
        package_model(trained.model, request, tmp_path, options)
    assert info.value.details["variant"] == "onnx-fp32"
    assert len(info.value.details["validation"]["worst_inputs"]) == 5
    assert not (tmp_path / "too-tight" / "v1.0.0").exists()
    assert not (tmp_path / ".packaging").exists()


def test_compare_names_worst_rows_and_top1_agreement():
    signature = ModelSignature(inputs=[TensorSpec(name="x", dtype="float32", shape=(-1, 2))],
                               outputs=[TensorSpec(name="p", dtype="float32", shape=(-1, 3))],
                               task="classification")
    reference = {"p": np.array([[0.1, 0.2, 0.7]] * 4, dtype=np.float32)}
    candidate = {"p": reference["p"].copy()}
    candidate["p"][2] = [0.8, 0.1, 0.1]   # flips the class: error 0.7
    candidate["p"][1, 0] += 0.05
    report = compare(reference, candidate, signature, "onnx-int8", "onnx", "int8",
                     Tolerances(worst_inputs=2))
    assert not report.passed
    assert report.top1_agreement == pytest.approx(0.75)
    assert [(w.index, w.top1_agrees) for w in report.worst_inputs] == [(2, False), (1, True)]
    assert report.worst_inputs[0].max_abs_error == pytest.approx(0.7, abs=1e-6)
    assert any("top-1 agreement 0.750 < 0.970" in f for f in report.failures)


def test_cli_packages_a_model_file_and_prints_the_rejection(tmp_path: Path, capsys):
    code = _run_cli(str(OUTLIER_MODEL), "--name", "outlier-cli", "--version", "0.1.0", "--int8", "--fp16",
                    "--store", str(tmp_path), "--benchmark-runs", "3", "--validation-rows", "16")
    out = capsys.readouterr().out
    assert code == 0
    assert "onnx-int8" in out and "REJECTED: max abs error" in out and "worst inputs: #" in out
    assert "onnx-fp16" in out and "accepted" in out
    version = RegistryReader(tmp_path).get("outlier-cli", "0.1.0")
    assert {a.precision for a in version.metadata.artifacts} == {"fp32", "fp16"}


def test_cli_packages_a_state_dict_checkpoint_into_a_zoo_architecture(tmp_path: Path, capsys):
    trained = trained_models()["lstm_price"]
    checkpoint = tmp_path / "weights.pt"
    torch.save(trained.model.state_dict(), checkpoint)
    store = tmp_path / "store"
    code = _run_cli(str(checkpoint), "--name", "lstm-from-pt", "--version", "2.0.0", "--store", str(store),
                    "--architecture", "lstm_price", "--config", '{"hidden_size": 32}', "--benchmark-runs", "3")
    assert code == 0, capsys.readouterr().err
    meta = RegistryReader(store).get("lstm-from-pt", "2.0.0").metadata
    assert meta.architecture == "lstm_price" and meta.architecture_config == {"hidden_size": 32}
    assert "onnx-fp32" in capsys.readouterr().out


def test_cli_reports_bad_sources_without_a_traceback(tmp_path: Path, capsys):
    checkpoint = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(1)}, checkpoint)
    assert _run_cli(str(checkpoint), "--name", "x", "--version", "1", "--store", str(tmp_path)) == 1
    assert "needs --architecture" in capsys.readouterr().err
    assert _run_cli(str(checkpoint), "--name", "x", "--version", "1", "--store", str(tmp_path),
                    "--architecture", "lstm_price") == 1
    assert "does not fit architecture" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
