"""One set of runtime classes: packaging validates each variant with the runtime, and the options, that
serve it, so the errors a validation report claims are the errors serving produces."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from prediction_service.adapters.simple import SimpleAdapter
from prediction_service.architectures import build_model, signature_for
from prediction_service.packaging.pipeline import (VALIDATION_DYNAMIC_DIM, VALIDATION_INT_HIGH, PackagingOptions,
                                                   PackagingRequest, package_model)
from prediction_service.packaging.validation import Tolerances, VariantTolerance, compare
from prediction_service.registry import RegistryReader
from prediction_service.registry.signature_inference import smoke_test
from prediction_service.execution.runtimes import OnnxRuntime, TorchRuntime
from prediction_service.settings import Settings

ROWS = 16
LOOSE = VariantTolerance(max_abs_error=10.0, mean_abs_error=10.0)  # keep every variant: this is about runtimes


@pytest.fixture(scope="module")
def packaged(tmp_path_factory):
    torch.manual_seed(0)
    architecture = "cnn_lstm_direction"
    model = build_model(architecture).eval()
    signature = signature_for(architecture)
    request = PackagingRequest(name="direction", version="1.0.0", signature=signature,
                               architecture=architecture)
    options = PackagingOptions(fp16=True, int8=True, benchmark_runs=0, validation_rows=ROWS,
                               tolerances=Tolerances(fp32=LOOSE, fp16=LOOSE, int8=LOOSE))
    store = tmp_path_factory.mktemp("runtimes") / "store"
    result = package_model(model, request, store, options)
    assert not result.rejected
    return model, RegistryReader(store).get("direction", "1.0.0")


def test_every_variant_was_validated_by_the_runtime_that_serves_it(packaged):
    model, version = packaged
    adapter = SimpleAdapter(Settings(model_store=version.path.parents[1]))
    reported = version.metadata.validation.details["variants"]
    signature = version.signature
    inputs = signature.synthetic_inputs(ROWS, dynamic_dim=VALIDATION_DYNAMIC_DIM, int_high=VALIDATION_INT_HIGH)
    reference = TorchRuntime(model, signature, threads=1).run(inputs)
    assert {f"{a.format}-{a.precision}" for a in version.metadata.artifacts} == set(reported)
    for artifact in version.metadata.artifacts:
        validation = reported[f"{artifact.format}-{artifact.precision}"]
        served = adapter.open_runtime(version, artifact)
        assert validation["runtime"] == served.options  # same class, same session options
        again = compare(reference, served.run(inputs), signature, "served", artifact.format, artifact.precision,
                        Tolerances())
        assert again.max_abs_error == pytest.approx(validation["max_abs_error"], rel=1e-6, abs=1e-9)


def test_onnx_sessions_take_the_thread_setting(packaged):
    _, version = packaged
    path = version.path / "model.onnx"
    options = OnnxRuntime(path, version.signature, threads=3).options
    assert (options["intra_op_threads"], options["inter_op_threads"], options["graph_optimization"]) == \
        (3, 1, "ORT_ENABLE_ALL")


def test_registry_smoke_run_uses_the_serving_runtime(packaged):
    _, version = packaged
    path: Path = version.path / "model.onnx"
    report = smoke_test(path, version.signature)
    assert report.details["runtime"] == OnnxRuntime(path, version.signature, threads=1).options["runtime"]


def test_synthetic_inputs_for_validation_vary_ids_and_masks():
    signature = signature_for("sentiment_transformer")
    plain = signature.synthetic_inputs(32, dynamic_dim=8)
    varied = signature.synthetic_inputs(32, dynamic_dim=8, int_high=5)
    ids, mask = signature.text.input_ids, signature.text.attention_mask
    assert (plain[ids] == 1).all() and (plain[mask] == 1).all()  # values every model accepts
    assert set(np.unique(varied[ids])) <= set(range(5)) and len(np.unique(varied[ids])) > 1
    lengths = varied[mask].sum(axis=1)
    assert (varied[mask] == (np.arange(varied[mask].shape[1]) < lengths[:, None])).all()  # prefix masks
    assert len(np.unique(lengths)) > 1
    again = signature.synthetic_inputs(32, dynamic_dim=8, int_high=5)
    assert all((again[name] == varied[name]).all() for name in varied)  # deterministic
