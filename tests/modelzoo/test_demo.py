from pathlib import Path

import numpy as np
import onnxruntime as ort

from prediction_service.commands.demo_registry import DEMO_MODELS, build_demo_registry
from prediction_service.preprocessing.tokenizer import Tokenizer
from prediction_service.packaging.pipeline import PackagingOptions
from prediction_service.registry import RegistryReader
from tests.zoo_models import trained_models

FAST = PackagingOptions(fp16=True, int8=True, benchmark_runs=3, validation_rows=32)


def test_demo_registry_has_three_models_in_production(tmp_path: Path):
    registered = build_demo_registry(tmp_path, options=FAST, trained=trained_models())
    assert set(registered) == set(DEMO_MODELS)
    reader = RegistryReader(tmp_path)
    assert reader.model_names() == sorted(DEMO_MODELS)
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
    assert not (tmp_path / ".packaging").exists()


def test_existing_models_are_skipped_unless_forced(tmp_path: Path):
    build_demo_registry(tmp_path, options=FAST, trained=trained_models())
    metadata = tmp_path / "lstm-price" / "v1.0.0" / "metadata.json"
    before = metadata.read_bytes()
    assert build_demo_registry(tmp_path, options=FAST, trained=trained_models()) == {}
    assert metadata.read_bytes() == before
    rebuilt = build_demo_registry(tmp_path, force=True, options=FAST, trained=trained_models())
    assert set(rebuilt) == set(DEMO_MODELS)
    assert metadata.read_bytes() != before  # new created_at / validation timestamps
    assert RegistryReader(tmp_path).resolve("lstm-price").version == "1.0.0"


def test_setup_demo_command_builds_the_registry(tmp_path: Path, capsys):
    import argparse

    from prediction_service.commands import setup_demo

    parser = argparse.ArgumentParser()
    setup_demo.register(parser.add_subparsers())
    args = parser.parse_args(["setup-demo", "--store", str(tmp_path)])
    assert args.func(args) == 0
    assert "lstm-price v1.0.0" in capsys.readouterr().out
    assert RegistryReader(tmp_path).stages("cnn-lstm-direction")["production"] == "1.0.0"
    args = parser.parse_args(["setup-demo", "--store", str(tmp_path)])
    assert args.func(args) == 0
    assert "nothing new" in capsys.readouterr().out
