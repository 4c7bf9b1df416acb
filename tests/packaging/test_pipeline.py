"""Each model zoo model packaged end to end (fp32/fp16/int8) into a real tmp registry."""

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from prediction_service.errors import Conflict, InvalidInput
from prediction_service.architectures import build_model, signature_for
from prediction_service.modelzoo.datasets import VOCAB_PATH, dataset_for
from prediction_service.packaging.pipeline import (
    PackagingOptions,
    PackagingRequest,
    PackagingResult,
    package_model,
)
from prediction_service.packaging.validation import Tolerances
from prediction_service.registry import RegistryReader
from prediction_service.registry.fsutil import sha256_file
from tests.zoo_models import trained_models

ARCHITECTURES = ["lstm_price", "cnn_lstm_direction", "sentiment_transformer"]
OPTIONS = PackagingOptions(fp16=True, int8=True, benchmark_runs=5, validation_rows=48)


def _request(architecture: str, name: str, version: str = "1.0.0") -> PackagingRequest:
    config = trained_models()[architecture].config
    return PackagingRequest(
        name=name, version=version, signature=signature_for(architecture, config),
        architecture=architecture, architecture_config=config,
        extra_files={"vocab.txt": VOCAB_PATH} if architecture == "sentiment_transformer" else {},
    )


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("registry")


@pytest.fixture(scope="module")
def packaged(store) -> dict[str, PackagingResult]:
    results = {}
    for architecture in ARCHITECTURES:
        trained = trained_models()[architecture]
        inputs = dataset_for(architecture, OPTIONS.validation_rows, seed=21, config=trained.config).inputs
        results[architecture] = package_model(trained.model, _request(architecture, architecture.replace("_", "-")),
                                              store, OPTIONS, validation_inputs=inputs)
    return results


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_metadata_lists_every_artifact_with_its_hash(packaged, store, architecture):
    version = RegistryReader(store).get(architecture.replace("_", "-"), "1.0.0")
    meta = version.metadata
    assert {(a.file, a.format, a.precision) for a in meta.artifacts} == {
        ("model.onnx", "onnx", "fp32"), ("model.pt", "torchscript", "fp32"),
        ("state_dict.pt", "state_dict", "fp32"), ("model.fp16.onnx", "onnx", "fp16"),
        ("model.int8.onnx", "onnx", "int8"),
    }
    for artifact in meta.artifacts:
        path = version.artifact_path(artifact)
        assert sha256_file(path) == artifact.sha256 and path.stat().st_size == artifact.size_bytes
    assert meta.signature == signature_for(architecture, trained_models()[architecture].config)
    assert meta.validation.passed and meta.validation.kind == "numeric_parity"
    assert set(meta.validation.details["variants"]) == {
        "onnx-fp32", "torchscript-fp32", "state_dict-fp32", "onnx-fp16", "onnx-int8"}
    assert meta.validation.details["rejected"] == []
    assert set(meta.benchmarks) == {"onnx-fp32", "torchscript-fp32", "onnx-fp16", "onnx-int8"}
    for bench in meta.benchmarks.values():
        assert bench["latency_ms_p99"] >= bench["latency_ms_p50"] > 0 and bench["throughput_rows_per_s"] > 0
    assert (version.path / "vocab.txt").is_file() == (architecture == "sentiment_transformer")
    assert not (store / ".packaging").exists()


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_onnx_runtime_matches_pytorch_on_fresh_data(packaged, architecture, precision):
    version = packaged[architecture].version
    trained = trained_models()[architecture]
    data = dataset_for(architecture, 40, seed=77, config=trained.config)  # not the validation rows
    signature = version.signature
    with torch.no_grad():
        expected = trained.model(*[torch.from_numpy(data.inputs[s.name]) for s in signature.inputs]).numpy()
    onnx_file = version.artifact_path(version.artifact(("onnx",), precision))
    assert version.artifact(("onnx",), precision).precision == precision
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    for rows in (1, 7, 40):  # dynamic batch axis
        (got,) = session.run(None, {k: v[:rows] for k, v in data.inputs.items()})
        assert got.dtype == np.float32  # fp16 keeps float32 I/O
        tolerance = Tolerances().for_precision(precision)
        assert np.abs(got - expected[:rows]).max() <= tolerance.max_abs_error
    if signature.task == "classification":
        agreement = (got.argmax(1) == expected.argmax(1)).mean()
        assert agreement >= tolerance.min_top1_agreement


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_torchscript_and_state_dict_artifacts_reproduce_the_model(packaged, architecture):
    version = packaged[architecture].version
    trained = trained_models()[architecture]
    data = dataset_for(architecture, 5, seed=78, config=trained.config)
    args = [torch.from_numpy(data.inputs[s.name]) for s in version.signature.inputs]
    scripted = torch.jit.load(str(version.artifact_path(version.artifact(("torchscript",)))))
    rebuilt = build_model(version.metadata.architecture, version.metadata.architecture_config)
    state = torch.load(version.artifact_path(version.artifact(("state_dict",))), weights_only=True)
    rebuilt.load_state_dict(state)
    with torch.no_grad():
        expected = trained.model(*args)
        torch.testing.assert_close(scripted(*args), expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(rebuilt(*args), expected)


def test_an_existing_version_is_refused_before_any_work(packaged, store):
    trained = trained_models()["lstm_price"]
    with pytest.raises(Conflict):
        package_model(trained.model, _request("lstm_price", "lstm-price"), store, OPTIONS)


def test_a_text_model_needs_its_tokenizer_file(store):
    trained = trained_models()["sentiment_transformer"]
    request = _request("sentiment_transformer", "no-vocab").model_copy(update={"extra_files": {}})
    with pytest.raises(InvalidInput, match="vocab.txt"):
        package_model(trained.model, request, store, OPTIONS)
    assert not (store / "no-vocab").exists()
