"""OHLCV feature code for the model zoo: it lives in prediction_service/preprocessing/bars.py, the one module both the
training data and the server's declared pre-processing call (no training/serving skew)."""

from __future__ import annotations

from ..preprocessing.bars import (N_FEATURES, WINDOWS, compute_features, ema, feature_window, normalize_ohlcv_window,
                                  preprocess_bars, rolling_mean, rolling_std, rsi)

__all__ = ["N_FEATURES", "WINDOWS", "compute_features", "ema", "feature_window", "normalize_ohlcv_window",
           "preprocess_bars", "rolling_mean", "rolling_std", "rsi"]
