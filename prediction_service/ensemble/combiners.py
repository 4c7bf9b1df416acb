"""The fixed, shipped set of ensemble combiners: pure numpy functions whose parameters (never code) come
from an ensemble's metadata. The Triton combiner step (packaging/triton_combiner_model.py) computes the
same formula; a test holds the two equal.

``weighted_price_sentiment`` (step_version 1), per row::

    s          = P(positive_label) - P(negative_label)                  sentiment score in [-1, 1]
    adjusted   = baseline * (1 + sentiment_scale * s)                   the sentiment-derived forecast
    prediction = price_weight * price + sentiment_weight * adjusted
    agree      = s == 0 or sign(s) == sign(price - baseline)
    confidence = max(probabilities) * (agree_confidence if agree else disagree_confidence)

``price`` is the price member's forecast (the demo LSTM predicts next close / last close, so ``baseline``
1.0 means "no change"); ``probabilities`` are the sentiment member's class scores.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

OUTPUTS = ("prediction", "confidence", "price", "sentiment_score")
"""What an ensemble answers, in this order: the combined forecast, its confidence, and both components."""


class WeightedPriceSentiment(BaseModel):
    """Weighted average of the price forecast and a sentiment-derived adjustment of the baseline."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["weighted_price_sentiment"] = "weighted_price_sentiment"
    step_version: Literal[1] = 1
    """Version of the shipped formula; a changed formula gets a new number."""
    price_weight: float = Field(0.7, ge=0.0, le=1.0)
    sentiment_weight: float = Field(0.3, ge=0.0, le=1.0)
    """The two weights sum to 1."""
    baseline: float = Field(1.0, gt=0.0)
    """The price forecast that means "no change" (1.0 for a next/last close ratio)."""
    sentiment_scale: float = Field(0.01, ge=0.0, le=1.0)
    """How far a fully positive (negative) headline moves the sentiment forecast above (below) the baseline."""
    positive_label: str = "positive"
    negative_label: str = "negative"
    agree_confidence: float = Field(1.0, ge=0.0, le=1.0)
    """Factor on the sentiment classifier's top score when price and sentiment point the same way."""
    disagree_confidence: float = Field(0.5, ge=0.0, le=1.0)
    """Factor when they point opposite ways."""

    @model_validator(mode="after")
    def _weights_sum_to_one(self) -> "WeightedPriceSentiment":
        if abs(self.price_weight + self.sentiment_weight - 1.0) > 1e-9:
            raise ValueError(f"price_weight + sentiment_weight must be 1, got "
                             f"{self.price_weight} + {self.sentiment_weight}")
        return self

    def label_indices(self, labels: list[str] | tuple[str, ...]) -> tuple[int, int]:
        """Where the positive and negative scores sit among the sentiment member's labels."""
        missing = [label for label in (self.positive_label, self.negative_label) if label not in labels]
        if missing:
            raise ValueError(f"the sentiment member's labels {list(labels)} lack {missing}")
        return list(labels).index(self.positive_label), list(labels).index(self.negative_label)

    def combine(self, price: np.ndarray, probabilities: np.ndarray, labels: list[str] | tuple[str, ...]) -> "Combined":
        """``price`` [rows] or [rows, 1]; ``probabilities`` [rows, classes]; float64 out, one value per row."""
        positive, negative = self.label_indices(labels)
        price = np.asarray(price, dtype=np.float64).reshape(-1)
        scores = np.asarray(probabilities, dtype=np.float64)
        s = scores[:, positive] - scores[:, negative]
        adjusted = self.baseline * (1.0 + self.sentiment_scale * s)
        prediction = self.price_weight * price + self.sentiment_weight * adjusted
        agree = (s == 0.0) | (np.sign(s) == np.sign(price - self.baseline))
        confidence = scores.max(axis=1) * np.where(agree, self.agree_confidence, self.disagree_confidence)
        return Combined(prediction, confidence, price, s)


Combiner = WeightedPriceSentiment
"""Every shipped combiner (one so far); metadata picks one by ``kind``."""


@dataclass(frozen=True)
class Combined:
    prediction: np.ndarray
    confidence: np.ndarray
    price: np.ndarray
    sentiment_score: np.ndarray

    def outputs(self) -> dict[str, np.ndarray]:
        """[rows, 1] float64 tensors keyed by OUTPUTS (regression-shaped, like any model's)."""
        return {name: getattr(self, name).reshape(-1, 1) for name in OUTPUTS}
