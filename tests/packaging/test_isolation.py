"""Crash-proof packaging (issue 27): each variant is built, validated and benchmarked in a child process, so a
variant that crashes, hangs or fails is rejected with the reason while the others register, and the command
exits 0 unless the primary variant (fp32 ONNX) failed.

The crash is real: the reported 2-layer LSTM with attention pooling makes ONNX Runtime segfault creating its
fp16 session. The other failures go through the worker's fault hook (PREDICTION_SERVICE_PACKAGING_FAULT), which
makes the real child process of one variant kill itself with SIGSEGV, hang or raise at the start of a phase.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from prediction_service.commands import package as package_command
from prediction_service.errors import ValidationFailed
from prediction_service.packaging.isolation import FAULT_ENV
from prediction_service.packaging.pipeline import PackagingOptions, PackagingRequest, package_model
from prediction_service.packaging.sources import load_source
from prediction_service.registry import RegistryReader

MODELS = Path(__file__).parent / "models"
ATTENTION_LSTM = MODELS / "attention_lstm.py"
OUTLIER_MODEL = MODELS / "outlier_model.py"
FAST = PackagingOptions(fp16=True, int8=True, benchmark_runs=3, validation_rows=16)


def _run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    package_command.register(parser.add_subparsers())
    args = parser.parse_args(["package", *argv])
    return args.func(args)


def _package(tmp_path: Path, name: str, options: PackagingOptions = FAST):
    source = load_source(OUTLIER_MODEL, None, {})
    request = PackagingRequest(name=name, version="1.0.0", signature=source.signature)
    return package_model(source.model, request, tmp_path, options, validation_inputs=source.validation_inputs(16))


def test_the_reported_fp16_segfault_rejects_that_variant_and_registers_the_rest(tmp_path: Path, capsys):
    code = _run_cli(str(ATTENTION_LSTM), "--name", "attention-lstm", "--version", "1.0.0", "--fp16", "--int8",
                    "--store", str(tmp_path), "--benchmark-runs", "3", "--validation-rows", "16")
    out = capsys.readouterr().out
    assert code == 0
    version = RegistryReader(tmp_path).get("attention-lstm", "1.0.0")
    if any(a.precision == "fp16" for a in version.metadata.artifacts):
        pytest.skip("this ONNX Runtime build did not crash on the fp16 attention LSTM on this CPU")
    (line,) = [line for line in out.splitlines() if line.startswith("onnx-fp16")]
    assert line.endswith("REJECTED: ONNX Runtime crashed (SIGSEGV) creating the session")
    assert {(a.format, a.precision) for a in version.metadata.artifacts} == {
        ("onnx", "fp32"), ("torchscript", "fp32"), ("onnx", "int8")}
    (rejected,) = version.metadata.validation.details["rejected"]
    assert rejected["variant"] == "onnx-fp16" and rejected["max_abs_error"] is None
    assert rejected["error"] == "ONNX Runtime crashed (SIGSEGV) creating the session"
    assert "onnx-fp16" not in version.metadata.benchmarks and "onnx-int8" in version.metadata.benchmarks


def test_a_crash_a_hang_and_an_error_each_reject_only_their_variant(tmp_path: Path, monkeypatch, caplog):
    monkeypatch.setenv(FAULT_ENV, "onnx-int8:validate:segv,onnx-fp16:build:hang,torchscript-fp32:open:error")
    caplog.set_level("INFO", logger="prediction_service.packaging")
    # every variant runs under this limit: room for the healthy ones on a busy machine, short for the hung one
    result = _package(tmp_path, "faulty", FAST.model_copy(update={"variant_timeout_s": 10.0}))

    reasons = {v.variant: v.error for v in result.rejected}
    assert reasons == {
        "torchscript-fp32": "torch failed loading the TorchScript archive: RuntimeError: injected fault in phase open",
        "onnx-fp16": "timed out after 10 s converting the graph to fp16 (killed)",
        "onnx-int8": "ONNX Runtime crashed (SIGSEGV) running the validation set",
    }
    version = RegistryReader(tmp_path).get("faulty", "1.0.0")
    assert [(a.format, a.precision) for a in version.metadata.artifacts] == [("onnx", "fp32")]
    assert set(version.metadata.benchmarks) == {"onnx-fp32"}
    # one progress line per variant, the rejected ones with their reason
    lines = [r.getMessage() for r in caplog.records if r.name == "prediction_service.packaging.pipeline"]
    assert any(line.startswith("[faulty:1.0.0] validate onnx-fp32: passed") for line in lines)
    for variant, reason in reasons.items():
        assert f"[faulty:1.0.0] {variant}: REJECTED: {reason}" in lines
    assert not (tmp_path / ".packaging").exists()


def test_the_primary_variant_crashing_registers_nothing(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.setenv(FAULT_ENV, "onnx-fp32:open:segv")
    with pytest.raises(ValidationFailed, match=r"onnx-fp32 .* ONNX Runtime crashed \(SIGSEGV\) creating the session"):
        _package(tmp_path, "no-primary")
    assert not (tmp_path / "no-primary").exists() and not (tmp_path / ".packaging").exists()

    code = _run_cli(str(OUTLIER_MODEL), "--name", "no-primary-cli", "--version", "1.0.0", "--store", str(tmp_path),
                    "--benchmark-runs", "0", "--validation-rows", "8")
    err = capsys.readouterr().err
    assert code == 1
    assert "onnx-fp32: REJECTED: ONNX Runtime crashed (SIGSEGV) creating the session" in err
    assert not (tmp_path / "no-primary-cli").exists()


def test_a_benchmark_crash_after_validation_still_rejects(tmp_path: Path, monkeypatch):
    monkeypatch.setenv(FAULT_ENV, "onnx-fp16:benchmark:abort")
    result = _package(tmp_path, "bench-crash", FAST.model_copy(update={"int8": False}))
    (rejected,) = result.rejected
    assert (rejected.variant, rejected.error) == ("onnx-fp16", "ONNX Runtime crashed (SIGABRT) benchmarking")
    assert {a.precision for a in result.version.metadata.artifacts} == {"fp32"}
