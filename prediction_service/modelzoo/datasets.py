"""Synthetic data shaped as each architecture's inputs, for training and for packaging validation sets."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .synthetic import synthetic_headlines, synthetic_ohlcv
from ..preprocessing.bars import preprocess_bars
from ..signature import BarsPreprocessing
from ..preprocessing.tokenizer import Tokenizer

VOCAB_PATH = Path(__file__).parent / "assets" / "sentiment_vocab.txt"
DIRECTION_THRESHOLD = 0.005
DIRECTION_HORIZON = 5
DIRECTION_WARMUP = 50
"""Bars of indicator history before each CNN-LSTM window (the longest indicator window)."""


@dataclass(frozen=True)
class Dataset:
    inputs: dict[str, np.ndarray]
    targets: np.ndarray
    """float32 [N, 1] for regression, int64 [N] class ids for classification."""

    def __len__(self) -> int:
        return len(self.targets)


def default_tokenizer() -> Tokenizer:
    return Tokenizer.from_file(VOCAB_PATH)


def price_bars_step(seq_len: int = 60) -> BarsPreprocessing:
    """The pre-processing the LSTM price model is trained with, declared in its registered signature."""
    return BarsPreprocessing(kind="ohlcv_window", input="ohlcv", window=seq_len)


def direction_bars_step(seq_len: int = 60) -> BarsPreprocessing:
    """The pre-processing the CNN-LSTM direction model is trained with (110 features per step)."""
    return BarsPreprocessing(kind="ohlcv_features", input="features", window=seq_len, warmup=DIRECTION_WARMUP)


def bar_windows(series: np.ndarray, n: int, length: int) -> np.ndarray:
    """The ``n`` consecutive windows of ``length`` bars of ``series``: ``[n, length, 5]``."""
    return np.lib.stride_tricks.sliding_window_view(series, length, axis=0)[:n].transpose(0, 2, 1)


def price_dataset(n: int, seed: int = 0, seq_len: int = 60) -> Dataset:
    """Normalised OHLCV windows -> next close / last close (the window made by :func:`price_bars_step`)."""
    series = synthetic_ohlcv(n + seq_len + 1, seed=seed)
    windows = preprocess_bars(price_bars_step(seq_len), bar_windows(series, n, seq_len))
    targets = (series[seq_len : seq_len + n, 3] / series[seq_len - 1 : seq_len - 1 + n, 3]).astype(np.float32)
    return Dataset({"ohlcv": windows}, targets[:, None])


def direction_dataset(n: int, seed: int = 0, seq_len: int = 60) -> Dataset:
    """Feature windows -> direction of the next few steps (0 down, 1 flat, 2 up). Each window's features
    come from its own ``seq_len + warmup`` bars through :func:`direction_bars_step`, exactly as the server
    computes them from a request's bars."""
    step = direction_bars_step(seq_len)
    series = synthetic_ohlcv(step.min_bars + n + DIRECTION_HORIZON, seed=seed)
    windows = preprocess_bars(step, bar_windows(series, n, step.min_bars))
    close = series[:, 3]
    ends = np.arange(n) + step.min_bars - 1
    change = close[ends + DIRECTION_HORIZON] / close[ends] - 1.0
    labels = np.where(change < -DIRECTION_THRESHOLD, 0, np.where(change > DIRECTION_THRESHOLD, 2, 1))
    return Dataset({"features": windows}, labels.astype(np.int64))


def sentiment_dataset(n: int, seed: int = 0, max_length: int = 64, tokenizer: Tokenizer | None = None) -> Dataset:
    texts, labels = synthetic_headlines(n, seed=seed)
    input_ids, attention_mask = (tokenizer or default_tokenizer()).encode_batch(texts, max_length, truncate=True)
    return Dataset({"input_ids": input_ids, "attention_mask": attention_mask}, labels)


_DATASETS = {
    "lstm_price": lambda n, seed, config: price_dataset(n, seed, config.get("seq_len", 60)),
    "cnn_lstm_direction": lambda n, seed, config: direction_dataset(n, seed, config.get("seq_len", 60)),
    "sentiment_transformer": lambda n, seed, config: sentiment_dataset(n, seed, config.get("max_length", 64)),
}


_BARS_STEPS = {
    "lstm_price": lambda config: price_bars_step(config.get("seq_len", 60)),
    "cnn_lstm_direction": lambda config: direction_bars_step(config.get("seq_len", 60)),
}


def bars_step_for(architecture: str, config: dict | None = None) -> BarsPreprocessing | None:
    """The declared bars pre-processing the architecture's zoo dataset is built with (None: not bars)."""
    make = _BARS_STEPS.get(architecture)
    return make(config or {}) if make is not None else None


def dataset_for(architecture: str, n: int, seed: int = 0, config: dict | None = None) -> Dataset:
    """Synthetic dataset matching a model zoo architecture's signature."""
    return _DATASETS[architecture](n, seed, config or {})
