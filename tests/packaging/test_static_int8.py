"""The static (calibrated) int8 option of the packaging pipeline: a QDQ graph quantizing only the nodes a recipe
selects, activation ranges from calibration rows, validated and registered like any variant."""

from pathlib import Path

import onnx
import pytest

from prediction_service.architectures import signature_for
from prediction_service.errors import InvalidInput
from prediction_service.modelzoo.datasets import VOCAB_PATH, dataset_for
from prediction_service.packaging.pipeline import PackagingOptions, PackagingRequest, package_model
from prediction_service.packaging.quantize import StaticInt8Options
from prediction_service.registry import RegistryReader
from tests.zoo_models import trained_models

ARCHITECTURE = "sentiment_transformer"
RECIPE = StaticInt8Options(op_types=("MatMul", "Gemm"), exclude=(r"classifier|head",))
OPTIONS = PackagingOptions(int8=True, int8_static=RECIPE, torchscript=False, state_dict=False, benchmark_runs=0,
                           validation_rows=48)


def _request(name: str) -> PackagingRequest:
    config = trained_models()[ARCHITECTURE].config
    return PackagingRequest(name=name, version="1.0.0", signature=signature_for(ARCHITECTURE, config),
                            architecture=ARCHITECTURE, architecture_config=config,
                            extra_files={"vocab.txt": VOCAB_PATH})


def _rows(n: int, seed: int):
    return dataset_for(ARCHITECTURE, n, seed=seed, config=trained_models()[ARCHITECTURE].config).inputs


def _quantized_weights(path: Path) -> set[str]:
    """Nodes of the graph that read a weight through a DequantizeLinear (i.e. run on int8 weights)."""
    graph = onnx.load(str(path)).graph
    dequantized = {node.output[0] for node in graph.node if node.op_type == "DequantizeLinear"}
    return {node.name for node in graph.node
            if node.op_type in RECIPE.op_types and any(i in dequantized for i in node.input)}


def test_static_int8_is_calibrated_validated_and_registered(tmp_path: Path):
    trained = trained_models()[ARCHITECTURE]
    result = package_model(trained.model, _request("static-int8"), tmp_path, OPTIONS,
                           validation_inputs=_rows(48, seed=21), calibration_inputs=_rows(64, seed=99))
    (int8,) = [v for v in result.validations if v.variant == "onnx-int8"]
    assert int8.passed, int8.failures
    assert int8.tolerance == OPTIONS.tolerances.int8  # the same limits as any int8 variant

    version = RegistryReader(tmp_path).get("static-int8", "1.0.0")
    assert ("onnx", "int8") in {(a.format, a.precision) for a in version.metadata.artifacts}
    summary = version.metadata.validation.details["quantization"]
    assert summary["method"] == "static" and summary["format"] == "QDQ" and summary["calibration_rows"] == 64
    quantized = _quantized_weights(version.path / "model.int8.onnx")
    assert len(quantized) == summary["quantized_nodes"] > 0
    assert summary["fp32_nodes"] >= 1  # the head the recipe excludes
    assert not any("classifier" in name or "head" in name for name in quantized)


def test_static_int8_needs_calibration_rows_and_registers_nothing_without(tmp_path: Path):
    trained = trained_models()[ARCHITECTURE]
    with pytest.raises(InvalidInput, match="calibration_inputs"):
        package_model(trained.model, _request("no-calibration"), tmp_path, OPTIONS, validation_inputs=_rows(48, 21))
    assert RegistryReader(tmp_path).model_names() == []


def test_a_recipe_that_selects_no_node_is_refused(tmp_path: Path):
    trained = trained_models()[ARCHITECTURE]
    options = OPTIONS.model_copy(update={"int8_static": StaticInt8Options(nodes=("no-such-node",))})
    with pytest.raises(InvalidInput, match="selects no node"):
        package_model(trained.model, _request("no-node"), tmp_path, options, validation_inputs=_rows(48, 21),
                      calibration_inputs=_rows(32, 99))
    assert RegistryReader(tmp_path).model_names() == []
