"""sentiment-minilm's int8 variant: statically quantized (attention projections, calibrated on headlines of
their own), it passes the same validation as every int8 variant, is registered, and keeps the fp32 model's
answers on headlines it has never seen (neither training, calibration nor validation rows)."""

from __future__ import annotations

import numpy as np

from prediction_service.commands.demo_registry import MINILM_NAME
from prediction_service.modelzoo import minilm_sentiment as minilm
from prediction_service.packaging.validation import Tolerances
from prediction_service.registry import RegistryReader
from prediction_service.execution.runtimes import OnnxRuntime

HELD_OUT_SEED = 2027
HELD_OUT_ROWS = 128


def test_the_int8_variant_is_static_validated_and_registered(minilm_store):
    version = RegistryReader(minilm_store).resolve(MINILM_NAME)
    assert ("onnx", "int8") in {(a.format, a.precision) for a in version.metadata.artifacts}
    assert (version.path / "model.int8.onnx").is_file()
    details = version.metadata.validation.details
    int8 = details["variants"]["onnx-int8"]
    assert int8["passed"] and not int8["failures"]
    assert int8["tolerance"] == Tolerances().int8.model_dump()  # the thresholds every model's int8 meets
    assert int8["top1_agreement"] >= Tolerances().int8.min_top1_agreement
    quantization = details["quantization"]
    assert quantization["method"] == "static" and quantization["format"] == "QDQ" and quantization["per_channel"]
    assert 0 < quantization["quantized_nodes"] and quantization["fp32_nodes"] > 0  # the FFN blocks stay fp32


def test_int8_agrees_with_fp32_on_held_out_headlines(minilm_store):
    version = RegistryReader(minilm_store).resolve(MINILM_NAME)
    inputs, _ = minilm.dataset(HELD_OUT_ROWS, seed=HELD_OUT_SEED)
    fp32 = OnnxRuntime(version.path / "model.onnx", version.signature, 1).run(inputs)["probabilities"]
    int8 = OnnxRuntime(version.path / "model.int8.onnx", version.signature, 1).run(inputs)["probabilities"]
    agreement = float(np.mean(fp32.argmax(axis=1) == int8.argmax(axis=1)))
    assert agreement >= Tolerances().int8.min_top1_agreement, agreement
