"""The declared OHLCV steps (prediction_service/preprocessing/bars.py): the training data and the server run the same
function, so the features a model is served equal the ones it was trained on; bad bars say what was wanted."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pydantic import ValidationError

from prediction_service.preprocessing.bars import compute_features, preprocess_bars
from prediction_service.errors import InvalidInput
from prediction_service.types import RawInput
from prediction_service.modelzoo.datasets import (bar_windows, bars_step_for, direction_bars_step,
                                                  direction_dataset, price_bars_step, price_dataset)
from prediction_service.modelzoo.synthetic import synthetic_ohlcv
from prediction_service.serving.processing import ModelProcessing
from prediction_service.settings import LimitSettings
from prediction_service.signature import BarsPreprocessing, ModelSignature, TensorSpec
from prediction_service.architectures import signature_for


class _Version:
    """Just what ModelProcessing reads of a registry version."""

    def __init__(self, signature: ModelSignature):
        self.signature, self.path, self.name = signature, None, "m"


def _serving(architecture: str) -> ModelProcessing:
    signature = signature_for(architecture)
    signature = ModelSignature.model_validate({**signature.model_dump(), "bars": bars_step_for(architecture)})
    return ModelProcessing(_Version(signature), LimitSettings())


def test_served_cnn_lstm_features_equal_the_training_features_on_the_same_bars():
    step = direction_bars_step()
    n = 6
    series = synthetic_ohlcv(step.min_bars + n + 5, seed=0)  # what direction_dataset(n, seed=0) reads
    training = direction_dataset(n, seed=0).inputs["features"]
    bars = bar_windows(series, n, step.min_bars)
    served = _serving("cnn_lstm_direction").preprocess({RawInput.BARS: bars.tolist()})["features"]
    assert served.shape == (n, 60, 110) and served.dtype == np.float32
    np.testing.assert_array_equal(served, training)
    # more history than the step reads is allowed: the last min_bars bars count
    longer = np.concatenate([synthetic_ohlcv(bars.shape[1] + 40, seed=8)[None, :40].repeat(n, 0), bars], axis=1)
    np.testing.assert_array_equal(_serving("cnn_lstm_direction").preprocess({RawInput.BARS: longer})["features"],
                                  training)


def test_the_step_is_the_feature_code_on_each_window():
    step = direction_bars_step()
    window = synthetic_ohlcv(step.min_bars, seed=3)
    np.testing.assert_array_equal(preprocess_bars(step, window)[0], compute_features(window)[-60:])


def test_served_lstm_windows_equal_the_training_windows():
    series = synthetic_ohlcv(4 + 60 + 1, seed=2)
    training = price_dataset(4, seed=2).inputs["ohlcv"]
    served = _serving("lstm_price").preprocess({RawInput.BARS: bar_windows(series, 4, 60)})["ohlcv"]
    np.testing.assert_array_equal(served, training)
    one = _serving("lstm_price").preprocess({RawInput.BARS: series[:60].tolist()})["ohlcv"]  # one window, no batch dim
    np.testing.assert_array_equal(one, training[:1])


def _mixed_batch(step) -> np.ndarray:
    """Windows unlike each other in one batch: price levels from 0.01 to 5,000, a flat window with zero volume,
    and a gap; a feature leaking across windows (a cumulative sum, an EMA, a rolling max) would show."""
    windows = [synthetic_ohlcv(step.min_bars, seed=seed, start_price=price)
               for seed, price in enumerate([100.0, 5000.0, 0.01, 1.0, 42.0])]
    windows.append(np.tile([10.0, 10.0, 10.0, 10.0, 0.0], (step.min_bars, 1)))
    gap = synthetic_ohlcv(step.min_bars, seed=9)
    gap[step.min_bars // 2:, :4] *= 1.5
    return np.stack(windows + [gap])


@pytest.mark.parametrize("architecture", ["cnn_lstm_direction", "lstm_price"])
def test_a_batch_is_computed_at_once_and_equals_each_window_alone(architecture):
    step = bars_step_for(architecture)
    batch = _mixed_batch(step)
    together = preprocess_bars(step, batch)
    assert together.shape == (len(batch), step.window, step.n_features) and together.dtype == np.float32
    alone = np.concatenate([preprocess_bars(step, window) for window in batch])
    np.testing.assert_array_equal(together, alone)
    # and the batch order does not matter: a window's features depend on its own bars only
    np.testing.assert_array_equal(preprocess_bars(step, batch[::-1]), together[::-1])


def test_compute_features_takes_a_batch_of_windows():
    series = [synthetic_ohlcv(130, seed=seed, start_price=price) for seed, price in [(1, 100.0), (2, 5000.0)]]
    batch = compute_features(np.stack(series))
    assert batch.shape == (2, 130, 110)
    for row, window in zip(batch, series):
        np.testing.assert_array_equal(row, compute_features(window))
    with pytest.raises(InvalidInput, match="batch"):
        compute_features(np.ones((2, 3, 130, 5)))


@pytest.mark.parametrize("bars, says", [
    (np.ones((1, 30, 5)), "at least 110 bars"),
    (np.ones((1, 120, 4)), "5 columns"),
    (np.ones((120, 6)), "got shape [120, 6]"),
    (np.where(np.arange(5) == 3, np.nan, 1.0) * np.ones((1, 120, 5)), "NaN or Inf"),
    (np.full((1, 120, 5), np.inf), "NaN or Inf"),
    (np.full((1, 120, 5), -1.0), "positive prices"),
    ([[1.0, 2.0], [1.0]], "rectangular"),
    ([["a", "b", "c", "d", "e"]] * 120, "numbers"),
])
def test_bad_bars_say_what_was_expected(bars, says):
    with pytest.raises(InvalidInput) as caught:
        _serving("cnn_lstm_direction").preprocess({RawInput.BARS: bars})
    assert says in caught.value.message
    if "rectangular" not in says:
        assert caught.value.details["expected"]["min_bars"] == 110


def test_bars_are_bounded_by_the_row_limit():
    processing = ModelProcessing(_Version(_serving("lstm_price").signature), LimitSettings(max_batch_rows=3))
    with pytest.raises(InvalidInput, match="limit of 3"):
        processing.preprocess({RawInput.BARS: [[[1.0] * 5] * 60] * 4})
    assert processing.preprocess({RawInput.BARS: [[[1.0] * 5] * 60] * 3})["ohlcv"].shape == (3, 60, 5)


def test_off_loop_for_features_and_big_window_batches_only():
    features, window = _serving("cnn_lstm_direction"), _serving("lstm_price")
    assert features.runs_off_loop({RawInput.BARS: [[[1.0] * 5] * 110]})
    assert not window.runs_off_loop({RawInput.BARS: [[1.0] * 5] * 60})
    assert window.runs_off_loop({RawInput.BARS: np.ones((64, 60, 5))})
    assert not window.runs_off_loop({"ohlcv": np.ones((64, 60, 5))})


def test_a_model_without_a_bars_step_refuses_bars():
    plain = ModelProcessing(_Version(signature_for("lstm_price")), LimitSettings())
    with pytest.raises(InvalidInput, match="does not take bars"):
        plain.preprocess({RawInput.BARS: np.ones((1, 60, 5))})


def test_the_step_must_fit_the_input_it_fills():
    spec = TensorSpec(name="features", dtype="float32", shape=(-1, 60, 110))
    out = [TensorSpec(name="p", dtype="float32", shape=(-1, 3))]
    ModelSignature(inputs=[spec], outputs=out, bars=direction_bars_step())
    with pytest.raises(ValidationError, match="makes"):
        ModelSignature(inputs=[spec], outputs=out, bars=direction_bars_step(30))
    with pytest.raises(ValidationError, match="only input"):
        ModelSignature(inputs=[spec], outputs=out, bars=price_bars_step())
    with pytest.raises(ValidationError):
        BarsPreprocessing(kind="python_code", input="features", window=60)  # only the shipped steps
    with pytest.raises(ValidationError, match="window \\+ warmup >= 2"):
        BarsPreprocessing(kind="ohlcv_features", input="features", window=1)
    assert direction_bars_step().n_features == 110 and price_bars_step().n_features == 5


def test_metadata_without_a_bars_step_loads_unchanged_and_with_one_round_trips():
    old = {"inputs": [{"name": "ohlcv", "dtype": "float32", "shape": [-1, 60, 5]}],
           "outputs": [{"name": "price", "dtype": "float32", "shape": [-1, 1]}]}
    assert ModelSignature.model_validate(old).bars is None
    declared = ModelSignature.model_validate({**old, "bars": price_bars_step().model_dump()})
    again = ModelSignature.model_validate(json.loads(declared.model_dump_json()))
    assert again == declared and again.bars.kind == "ohlcv_window" and again.bars.min_bars == 60
