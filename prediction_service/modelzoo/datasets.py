"""Synthetic data shaped as each architecture's inputs, for training and for packaging validation sets."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .features import compute_features, normalize_ohlcv_window
from .synthetic import synthetic_headlines, synthetic_ohlcv
from ..tokenizer import Tokenizer

VOCAB_PATH = Path(__file__).parent / "assets" / "sentiment_vocab.txt"
DIRECTION_THRESHOLD = 0.005
DIRECTION_HORIZON = 5


@dataclass(frozen=True)
class Dataset:
    inputs: dict[str, np.ndarray]
    targets: np.ndarray
    """float32 [N, 1] for regression, int64 [N] class ids for classification."""

    def __len__(self) -> int:
        return len(self.targets)


def default_tokenizer() -> Tokenizer:
    return Tokenizer.from_file(VOCAB_PATH)


def price_dataset(n: int, seed: int = 0, seq_len: int = 60) -> Dataset:
    """Normalised OHLCV windows -> next close / last close."""
    series = synthetic_ohlcv(n + seq_len + 1, seed=seed)
    windows = np.stack([normalize_ohlcv_window(series[i : i + seq_len]) for i in range(n)])
    targets = (series[seq_len : seq_len + n, 3] / series[seq_len - 1 : seq_len - 1 + n, 3]).astype(np.float32)
    return Dataset({"ohlcv": windows}, targets[:, None])


def direction_dataset(n: int, seed: int = 0, seq_len: int = 60) -> Dataset:
    """Feature windows -> direction of the next few steps (0 down, 1 flat, 2 up)."""
    warmup = 50
    series = synthetic_ohlcv(warmup + n + seq_len + DIRECTION_HORIZON, seed=seed)
    features = compute_features(series)
    close = series[:, 3]
    windows, labels = [], []
    for i in range(warmup, warmup + n):
        end = i + seq_len - 1
        windows.append(features[i : end + 1])
        change = close[end + DIRECTION_HORIZON] / close[end] - 1.0
        labels.append(0 if change < -DIRECTION_THRESHOLD else 2 if change > DIRECTION_THRESHOLD else 1)
    return Dataset({"features": np.stack(windows)}, np.asarray(labels, dtype=np.int64))


def sentiment_dataset(n: int, seed: int = 0, max_length: int = 64, tokenizer: Tokenizer | None = None) -> Dataset:
    texts, labels = synthetic_headlines(n, seed=seed)
    input_ids, attention_mask = (tokenizer or default_tokenizer()).encode_batch(texts, max_length, truncate=True)
    return Dataset({"input_ids": input_ids, "attention_mask": attention_mask}, labels)


_DATASETS = {
    "lstm_price": lambda n, seed, config: price_dataset(n, seed, config.get("seq_len", 60)),
    "cnn_lstm_direction": lambda n, seed, config: direction_dataset(n, seed, config.get("seq_len", 60)),
    "sentiment_transformer": lambda n, seed, config: sentiment_dataset(n, seed, config.get("max_length", 64)),
}


def dataset_for(architecture: str, n: int, seed: int = 0, config: dict | None = None) -> Dataset:
    """Synthetic dataset matching a model zoo architecture's signature."""
    return _DATASETS[architecture](n, seed, config or {})
