"""The shipped combiner computes the formula its docstring documents, and refuses parameters that break it."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from prediction_service.ensemble import WeightedPriceSentiment

LABELS = ["negative", "neutral", "positive"]


def test_weighted_price_sentiment_by_hand():
    combiner = WeightedPriceSentiment(price_weight=0.75, sentiment_weight=0.25, sentiment_scale=0.04,
                                      agree_confidence=1.0, disagree_confidence=0.5)
    price = np.array([[1.02], [0.99], [1.0]], dtype=np.float32)
    scores = np.array([[0.1, 0.2, 0.7], [0.1, 0.1, 0.8], [0.3, 0.4, 0.3]], dtype=np.float32)
    combined = combiner.combine(price, scores, LABELS).outputs()
    p, s = price.astype(np.float64).reshape(-1), scores.astype(np.float64)
    sentiment = s[:, 2] - s[:, 0]  # 0.6, 0.7, 0.0
    expected = 0.75 * p + 0.25 * (1.0 + 0.04 * sentiment)
    np.testing.assert_allclose(combined["prediction"].reshape(-1), expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(combined["sentiment_score"].reshape(-1), sentiment, atol=1e-12)
    # row 0: price up, sentiment positive -> agree; row 1: price down, sentiment positive -> disagree;
    # row 2: neutral sentiment counts as agreeing
    np.testing.assert_allclose(combined["confidence"].reshape(-1), [s[0].max(), 0.5 * s[1].max(), s[2].max()])
    assert all(array.shape == (3, 1) and array.dtype == np.float64 for array in combined.values())


@pytest.mark.parametrize("params, says", [
    ({"price_weight": 0.7, "sentiment_weight": 0.4}, "must be 1"),
    ({"price_weight": 1.2, "sentiment_weight": -0.2}, "less than or equal to 1"),
    ({"kind": "python_code"}, "weighted_price_sentiment"),
    ({"code": "import os"}, "Extra inputs are not permitted"),
])
def test_bad_parameters_are_refused(params, says):
    with pytest.raises(ValidationError, match=says):
        WeightedPriceSentiment(**params)


def test_labels_must_carry_positive_and_negative():
    with pytest.raises(ValueError, match="lack"):
        WeightedPriceSentiment().combine(np.ones((1, 1)), np.ones((1, 3)) / 3, ["down", "flat", "up"])
