"""config.pbtxt generation: parsed back with Triton's own ModelConfig protobuf, for every platform."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from prediction_service.packaging.triton_config import (
    TritonConfigOptions,
    TritonPlatform,
    choose_platform,
    render_config,
    warmup_files,
)
from prediction_service.signature import ModelSignature, TensorSpec

SIGNATURE = ModelSignature(
    inputs=[
        TensorSpec(name="features", dtype="float32", shape=(-1, 60, 5)),
        TensorSpec(name="token_ids", dtype="int64", shape=(-1, -1)),
    ],
    outputs=[
        TensorSpec(name="logits", dtype="float32", shape=(-1, 3)),
        TensorSpec(name="score", dtype="float64", shape=(-1,)),
    ],
    max_batch_size=16,
)


def parse(text: str) -> model_config_pb2.ModelConfig:
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def test_python_backend_config_drops_batch_dim_and_maps_types() -> None:
    config = parse(render_config("lstm-price__1.0.0", SIGNATURE, TritonConfigOptions(max_batch_size=32)))

    assert config.name == "lstm-price__1.0.0"
    assert config.backend == "python" and config.platform == ""
    assert config.max_batch_size == 16  # the signature's limit is lower than the settings'
    features, token_ids = config.input
    assert (features.name, list(features.dims)) == ("features", [60, 5])
    assert features.data_type == model_config_pb2.TYPE_FP32
    assert list(token_ids.dims) == [-1] and token_ids.data_type == model_config_pb2.TYPE_INT64
    logits, score = config.output
    assert list(logits.dims) == [3]
    assert list(score.dims) == [1] and list(score.reshape.shape) == []
    assert score.data_type == model_config_pb2.TYPE_FP64
    assert config.parameters["onnx_file"].string_value == "model.onnx"


def test_dynamic_batching_and_instances_follow_options() -> None:
    options = TritonConfigOptions(
        max_batch_size=8, preferred_batch_sizes=(4, 8), max_queue_delay_microseconds=250, instance_count=2
    )
    config = parse(render_config("m__1", SIGNATURE, options))

    assert config.max_batch_size == 8
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 8]
    assert config.dynamic_batching.max_queue_delay_microseconds == 250
    (group,) = config.instance_group
    assert group.count == 2 and group.kind == model_config_pb2.ModelInstanceGroup.KIND_CPU


def test_default_preferred_sizes_are_max_and_half() -> None:
    config = parse(render_config("m__1", SIGNATURE, TritonConfigOptions(max_batch_size=16)))
    assert list(config.dynamic_batching.preferred_batch_size) == [8, 16]


def test_no_batching_keeps_full_shapes_and_omits_batcher() -> None:
    config = parse(render_config("m__1", SIGNATURE, TritonConfigOptions(max_batch_size=0)))

    assert config.max_batch_size == 0
    assert list(config.input[0].dims) == [-1, 60, 5]
    assert not config.HasField("dynamic_batching")


def test_fixed_leading_dim_disables_batching() -> None:
    fixed = ModelSignature(
        inputs=[TensorSpec(name="x", dtype="float32", shape=(1, 4))],
        outputs=[TensorSpec(name="y", dtype="float32", shape=(1, 2))],
    )
    config = parse(render_config("m__1", fixed, TritonConfigOptions(max_batch_size=32)))
    assert config.max_batch_size == 0 and list(config.input[0].dims) == [1, 4]


@pytest.mark.parametrize(
    ("platform", "expected"),
    [(TritonPlatform.ONNXRUNTIME, "onnxruntime_onnx"), (TritonPlatform.LIBTORCH, "pytorch_libtorch")],
)
def test_native_platforms_set_platform_not_backend(platform: TritonPlatform, expected: str) -> None:
    config = parse(render_config("m__1", SIGNATURE, TritonConfigOptions(platform=platform)))

    assert config.platform == expected and config.backend == ""
    assert "onnx_file" not in config.parameters


def test_warmup_entries_name_data_files_that_match_their_dims() -> None:
    options = TritonConfigOptions(max_batch_size=32, warmup_batch_sizes=(1, 8, 64), warmup_iterations=3)
    config = parse(render_config("m__1", SIGNATURE, options))
    assert [(w.name, w.batch_size, w.count) for w in config.model_warmup] == [
        ("batch_1", 1, 3), ("batch_8", 8, 3), ("batch_16", 16, 3)]  # 64 capped by the signature's max
    files = warmup_files(SIGNATURE)
    for warm in config.model_warmup:
        features, tokens = warm.inputs["features"], warm.inputs["token_ids"]
        assert list(features.dims) == [60, 5] and list(tokens.dims) == [4]  # dynamic dim -> 4
        assert len(files[features.input_data_file]) == 60 * 5 * 4 and len(files[tokens.input_data_file]) == 4 * 8
    assert not parse(render_config("m__1", SIGNATURE, TritonConfigOptions(max_batch_size=32))).model_warmup


def test_preferred_sizes_beyond_max_are_refused() -> None:
    with pytest.raises(ValueError, match="preferred_batch_sizes"):
        TritonConfigOptions(max_batch_size=4, preferred_batch_sizes=(8,))


def _backends(tmp_path: Path, *names: str) -> Path:
    for name in names:
        (tmp_path / name).mkdir()
    return tmp_path


def test_choose_platform_prefers_native_backends_present(tmp_path: Path) -> None:
    full_image = _backends(tmp_path, "onnxruntime", "pytorch", "python")
    assert choose_platform(full_image, {"onnx", "torchscript"}) is TritonPlatform.ONNXRUNTIME
    assert choose_platform(full_image, {"torchscript"}) is TritonPlatform.LIBTORCH


def test_choose_platform_falls_back_to_python_backend(tmp_path: Path) -> None:
    pytriton_only = _backends(tmp_path, "python")
    assert choose_platform(pytriton_only, {"onnx", "torchscript"}) is TritonPlatform.PYTHON_ONNX
    assert choose_platform(None, {"onnx"}) is TritonPlatform.PYTHON_ONNX
    with pytest.raises(ValueError, match="export an ONNX artifact"):
        choose_platform(pytriton_only, {"torchscript"})


def test_a_model_that_sets_its_batch_delay_gets_it_in_triton_too() -> None:
    waiting = SIGNATURE.model_copy(update={"batch_delay_ms": 3.0})
    options = TritonConfigOptions(max_batch_size=8, max_queue_delay_microseconds=0)
    assert parse(render_config("m__1", waiting, options)).dynamic_batching.max_queue_delay_microseconds == 3000
    assert parse(render_config("m__1", SIGNATURE, options)).dynamic_batching.max_queue_delay_microseconds == 0
