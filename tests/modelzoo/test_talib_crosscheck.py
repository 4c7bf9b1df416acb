"""bars.py's indicator code (numpy, float64) against TA-Lib's C library (the TA-Lib wheel bundles it), to 1e-9.

Where the two define an indicator alike the outputs are compared directly once TA-Lib's look-back has passed
(bars.py fills warm-up rows from the history so far; TA-Lib leaves them NaN). Where bars.py's documented
definition differs, the test rebuilds it from TA-Lib's primitives: RSI and ATR here are the simple-average
(Cutler) forms, not Wilder's smoothing; EMAs start from the first value, TA-Lib's from an SMA seed.
"""

from __future__ import annotations

import numpy as np
import pytest
import talib  # TA-Lib==0.8.2 in requirements-dev.txt: the wheel bundles the C library

from prediction_service.preprocessing import bars
from prediction_service.modelzoo.synthetic import synthetic_ohlcv

TOLERANCE = 1e-9
WINDOWS = bars.WINDOWS


@pytest.fixture(scope="module", params=[100.0, 5000.0], ids=["price-100", "price-5000"])
def series(request) -> np.ndarray:
    return synthetic_ohlcv(1500, seed=3, start_price=request.param)


def _close(ours: np.ndarray, theirs: np.ndarray, start: int) -> None:
    assert not np.isnan(theirs[start:]).any()
    np.testing.assert_allclose(ours[start:], theirs[start:], rtol=0, atol=TOLERANCE)


def _true_range(high, low, close) -> np.ndarray:
    prev = bars._shift(close, 1)
    return np.maximum(high - low, np.maximum(np.abs(high - prev), np.abs(low - prev)))


@pytest.mark.parametrize("window", WINDOWS)
def test_rolling_statistics_match_talib(series, window):
    _, high, low, close, _ = series.T
    full = window - 1  # first row with a full window
    _close(bars.rolling_mean(close, window), talib.SMA(close, window), full)
    _close(bars.rolling_std(close, window), talib.STDDEV(close, window, 1.0), full)
    _close(bars.rolling_max(high, window), talib.MAX(high, window), full)
    _close(bars.rolling_min(low, window), talib.MIN(low, window), full)
    _close(close / bars._shift(close, window) - 1.0, talib.ROCR(close, window) - 1.0, window)


@pytest.mark.parametrize("window", WINDOWS)
def test_bollinger_and_stochastics_match_talib(series, window):
    _, high, low, close, _ = series.T
    sma, std = bars.rolling_mean(close, window), bars.rolling_std(close, window)
    upper, middle, lower = talib.BBANDS(close, window, 2.0, 2.0, 0)
    _close(bars._div(close - (sma - 2 * std), 4 * std), (close - lower) / (upper - lower), window - 1)
    _close(4 * std / sma, (upper - lower) / middle, window - 1)
    hi, lo = bars.rolling_max(high, window), bars.rolling_min(low, window)
    fast_k, _ = talib.STOCHF(high, low, close, window, 1, 0)
    _close(bars._div(close - lo, hi - lo), fast_k / 100.0, window - 1)


@pytest.mark.parametrize("window", WINDOWS)
def test_rsi_and_atr_are_the_simple_average_forms_of_talib_primitives(series, window):
    _, high, low, close, _ = series.T
    true_range = talib.TRANGE(high, low, close)
    _close(_true_range(high, low, close), true_range, 1)
    _close(bars.rolling_mean(_true_range(high, low, close), window), talib.SMA(true_range, window), window)
    change = np.diff(close, prepend=close[0])
    gain, loss = talib.SMA(np.maximum(change, 0.0), window), talib.SMA(np.maximum(-change, 0.0), window)
    _close(bars.rsi(close, window), 100.0 - 100.0 / (1.0 + gain / (loss + bars._EPS)), window)
    # and it is not Wilder's RSI: a different indicator, which the docstring says
    assert np.abs(bars.rsi(close, window)[window:] - talib.RSI(close, window)[window:]).max() > 1.0


@pytest.mark.parametrize("span", sorted({*WINDOWS, 5, 9, 12, 26, 35}))
def test_ema_is_talibs_recursion(series, span):
    close = series[:, 3]
    # Same recursion and smoothing factor; only the seed differs: TA-Lib starts from the SMA of the first
    # ``span`` values at row span-1. Given that seed, bars.ema reproduces TA-Lib's output row for row.
    seeded = np.concatenate([[close[:span].mean()], close[span:]])
    _close(bars.ema(seeded, span), talib.EMA(close, span)[span - 1:], 0)


@pytest.mark.parametrize("fast, slow, signal", bars.MACD_SPANS)
def test_macd_matches_talib_once_the_seed_has_decayed(series, fast, slow, signal):
    close = series[:, 3]
    macd, macd_signal, hist = talib.MACD(close, fast, slow, signal)
    ours = bars.ema(close, fast) - bars.ema(close, slow)
    ours_signal = bars.ema(ours, signal)
    # The seeds' difference shrinks by (1 - 2/(span+1)) a row: after 1,000 rows it is far below 1e-9.
    settled = 1000
    _close(ours, macd, settled)
    _close(ours_signal, macd_signal, settled)
    _close(ours - ours_signal, hist, settled)


def test_returns_and_volatility_match_talib(series):
    close = series[:, 3]
    log_ret = np.log(close / bars._shift(close, 1))
    _close(log_ret, np.log(talib.ROCR(close, 1)), 1)
    for window in WINDOWS:
        _close(bars.rolling_std(log_ret, window), talib.STDDEV(log_ret, window, 1.0), window)


@pytest.mark.parametrize("length", [1, 3, 49, 120])
def test_rolling_std_warm_up_rows_use_the_rows_so_far(length):
    """TA-Lib leaves warm-up rows NaN; bars.py fills them with the std of what exists (pandas min_periods=1)."""
    x = synthetic_ohlcv(length, seed=8)[:, 3]
    for window in WINDOWS:
        expected = [x[max(0, t - window + 1): t + 1].std() for t in range(length)]
        np.testing.assert_allclose(bars.rolling_std(x, window), expected, rtol=0, atol=TOLERANCE)


def test_the_batched_primitives_match_talib_row_by_row():
    """bars.py computes a batch of windows at once (the batch axis first, time last); each row must still be
    TA-Lib's indicator of that row alone."""
    batch = np.stack([synthetic_ohlcv(1200, seed=seed, start_price=price)
                      for seed, price in [(3, 100.0), (4, 5000.0), (5, 0.5)]])
    high, low, close = batch[..., 1], batch[..., 2], batch[..., 3]
    for window in WINDOWS:
        full = window - 1
        sma, std = bars.rolling_mean(close, window), bars.rolling_std(close, window)
        hi, lo = bars.rolling_max(high, window), bars.rolling_min(low, window)
        for row in range(len(batch)):
            _close(sma[row], talib.SMA(close[row], window), full)
            _close(std[row], talib.STDDEV(close[row], window, 1.0), full)
            _close(hi[row], talib.MAX(high[row], window), full)
            _close(lo[row], talib.MIN(low[row], window), full)
    for fast, slow, signal in bars.MACD_SPANS:
        macd = bars.ema(close, fast) - bars.ema(close, slow)
        macd_signal = bars.ema(macd, signal)
        for row in range(len(batch)):
            want, want_signal, _ = talib.MACD(close[row], fast, slow, signal)
            _close(macd[row], want, 1000)  # the seeds' difference has decayed far below 1e-9 by then
            _close(macd_signal[row], want_signal, 1000)
