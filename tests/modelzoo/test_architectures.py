import io

import numpy as np
import pytest
import torch

from prediction_service.errors import InvalidInput
from prediction_service.architectures import ARCHITECTURES, build_model, signature_for
from prediction_service.modelzoo.datasets import dataset_for
from prediction_service.modelzoo.training import TrainingPlan, train


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_model_outputs_match_its_signature(name):
    signature = signature_for(name)
    data = dataset_for(name, 4, seed=0)
    assert set(data.inputs) == {s.name for s in signature.inputs}
    for spec in signature.inputs:
        assert data.inputs[spec.name].dtype == np.dtype(spec.dtype)
        assert data.inputs[spec.name].shape[1:] == spec.row_shape
    model = build_model(name)
    with torch.no_grad():
        out = model(*[torch.from_numpy(data.inputs[s.name]) for s in signature.inputs]).numpy()
    assert out.shape == (4, *signature.outputs[0].row_shape)
    if signature.task == "classification":
        np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)
        assert len(signature.labels) == out.shape[1]


def test_sentiment_signature_declares_its_tokenizer():
    signature = signature_for("sentiment_transformer")
    assert signature.text.tokenizer == "vocab.txt" and signature.text.max_length == 64
    assert signature.labels == ["negative", "neutral", "positive"]
    assert signature_for("cnn_lstm_direction").labels == ["down", "flat", "up"]


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_state_dict_round_trip_with_weights_only(name):
    original = build_model(name)
    buffer = io.BytesIO()
    torch.save(original.state_dict(), buffer)
    buffer.seek(0)
    rebuilt = build_model(name)
    rebuilt.load_state_dict(torch.load(buffer, weights_only=True))
    data = dataset_for(name, 3, seed=1)
    args = [torch.from_numpy(v) for v in data.inputs.values()]
    with torch.no_grad():
        torch.testing.assert_close(original(*args), rebuilt(*args))


def test_unknown_architecture_and_bad_config_raise_invalid_input():
    with pytest.raises(InvalidInput, match="unknown architecture"):
        build_model("resnet")
    with pytest.raises(InvalidInput, match="invalid config"):
        build_model("lstm_price", {"hiden_size": 8})


def test_training_is_deterministic():
    plan = TrainingPlan("lstm_price", {"hidden_size": 8}, steps=5, batch_size=8, train_rows=64)
    first, second = train(plan), train(plan)
    assert first.final_loss == second.final_loss
    for a, b in zip(first.model.state_dict().values(), second.model.state_dict().values()):
        assert torch.equal(a, b)
