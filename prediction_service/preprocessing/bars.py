"""The shipped OHLCV pre-processing steps: raw bars -> a model's input tensor.

One module, two callers: the model zoo builds its training and validation data with :func:`preprocess_bars`
and the server (processing.py) runs the same function on the ``bars`` a request carries, with the
parameters the model version declares (``ModelSignature.bars``, signature.py). So serving-time features
are the training-time features, bit for bit. Steps are a fixed, versioned set; nothing from the registry
is executed (numpy only).

Rolling statistics use the rows available so far during warm-up (like pandas ``min_periods=1``), so every
row is finite; divisions are guarded.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.ndimage import maximum_filter1d, minimum_filter1d

from ..errors import InvalidInput
from ..signature import OHLCV_COLUMNS, BarsPreprocessing

N_FEATURES = 110
WINDOWS = (5, 10, 20, 30, 50)
MACD_SPANS = ((12, 26, 9), (5, 35, 5))
CLIP = 50.0
_EPS = 1e-12

# Every primitive works along the last axis (time) and broadcasts over any leading axes, so one call computes
# a whole batch of windows: ``[T]`` or ``[batch, T]``. Per row the arithmetic is the same, in the same order, as
# for one window alone: elementwise ops, sequential cumulative sums and recursions, and reductions over the
# window axis only. A batch's features therefore equal each window's own, bit for bit
# (tests/modelzoo/test_bars.py).


def _div(num: np.ndarray, den: np.ndarray | float) -> np.ndarray:
    den = np.asarray(den, dtype=np.float64)
    safe = np.where(np.abs(den) < _EPS, _EPS, den)
    return num / safe


def _shift(x: np.ndarray, lag: int) -> np.ndarray:
    """x[..., t - lag], holding the first value during warm-up."""
    if lag <= 0:
        return x
    return np.concatenate([np.repeat(x[..., :1], lag, axis=-1), x[..., :-lag]], axis=-1)


def rolling_mean(x: np.ndarray, window: int) -> np.ndarray:
    """Mean of the last ``window`` values (the ones so far during warm-up), from one cumulative sum."""
    x = np.asarray(x, dtype=np.float64)
    cumsum = np.cumsum(x, axis=-1)
    out = np.empty_like(cumsum)
    warm = min(window, x.shape[-1])
    out[..., :warm] = cumsum[..., :warm] / np.arange(1, warm + 1)
    out[..., warm:] = (cumsum[..., warm:] - cumsum[..., :-warm]) / window
    return out


def rolling_std(x: np.ndarray, window: int) -> np.ndarray:
    """Population std of the last ``window`` values (the ones so far during warm-up), two-pass per window:
    the E[x^2] - E[x]^2 shortcut lost up to 1e-8 to cancellation on price levels (TA-Lib agrees to 1e-9)."""
    x = np.asarray(x, dtype=np.float64)
    out = np.empty_like(x)
    length = x.shape[-1]
    warm = min(window - 1, length)  # rows before the first full window: the std of the rows so far
    if warm:
        seen = np.tri(warm, dtype=bool)  # row t sees x[0..t]
        mean = np.cumsum(x[..., :warm], axis=-1) / np.arange(1, warm + 1)
        deviation = np.where(seen, x[..., None, :warm] - mean[..., :, None], 0.0)
        out[..., :warm] = np.sqrt((deviation * deviation).sum(axis=-1) / np.arange(1, warm + 1))
    if length >= window:
        full = np.lib.stride_tricks.sliding_window_view(x, window, axis=-1)
        deviation = full - full.mean(axis=-1, keepdims=True)
        out[..., warm:] = np.sqrt((deviation * deviation).mean(axis=-1))
    return out


def rolling_max(x: np.ndarray, window: int) -> np.ndarray:
    """Max of the last ``window`` values (the first value repeated before the start). A max is exact, so
    scipy's O(n) filter equals the max over every window."""
    return maximum_filter1d(x, size=window, axis=-1, mode="nearest", origin=(window - 1) // 2)


def rolling_min(x: np.ndarray, window: int) -> np.ndarray:
    return minimum_filter1d(x, size=window, axis=-1, mode="nearest", origin=(window - 1) // 2)


def _emas(x: np.ndarray, spans: tuple[int, ...]) -> np.ndarray:
    """EMAs of the rows of ``x`` (``[..., len(spans), T]``, one row per span, or ``[..., 1, T]``: one series
    for every span) -> ``[..., len(spans), T]``. One pass over time for all spans and windows at once: the
    recursion is sequential in t only."""
    x = np.asarray(x, dtype=np.float64)
    rows = np.broadcast_to(x, x.shape[:-2] + (len(spans), x.shape[-1]))
    alpha = 2.0 / (np.asarray(spans, dtype=np.float64) + 1.0)
    keep = np.broadcast_to(1.0 - alpha, rows.shape[:-1]).reshape(-1)
    alpha = np.broadcast_to(alpha, rows.shape[:-1]).reshape(-1)
    # time first and every series side by side: each step below is three flat vector operations
    steps = np.moveaxis(rows, -1, 0).reshape(rows.shape[-1], -1)
    out = np.empty(steps.shape)
    out[0] = steps[0]
    for t in range(1, len(steps)):
        out[t] = alpha * steps[t] + keep * out[t - 1]
    return np.moveaxis(out.reshape((rows.shape[-1],) + rows.shape[:-1]), 0, -1)


def ema(x: np.ndarray, span: int) -> np.ndarray:
    return _emas(np.asarray(x, dtype=np.float64)[..., None, :], (span,))[..., 0, :]


def rsi(close: np.ndarray, window: int) -> np.ndarray:
    change = np.diff(close, axis=-1, prepend=close[..., :1])
    gain = rolling_mean(np.maximum(change, 0.0), window)
    loss = rolling_mean(np.maximum(-change, 0.0), window)
    return 100.0 - 100.0 / (1.0 + _div(gain, loss + _EPS))


def compute_features(ohlcv: np.ndarray, windows: tuple[int, ...] = WINDOWS,
                     macd_spans: tuple[tuple[int, int, int], ...] = MACD_SPANS, clip: float = CLIP,
                     last: int | None = None) -> np.ndarray:
    """``[T, 5]`` open/high/low/close/volume -> ``[T, 110]`` float32 (with the default parameters), all
    finite; a batch ``[batch, T, 5]`` -> ``[batch, T, 110]``, each window computed from its own bars only
    (equal to calling this on each window alone). Warm-up rows use the history available so far.
    ``last``: return only the last that many rows (the same values, without assembling the others)."""
    ohlcv = np.asarray(ohlcv, dtype=np.float64)
    if ohlcv.ndim not in (2, 3) or ohlcv.shape[-1] != 5 or ohlcv.shape[-2] < 2:
        raise InvalidInput(f"ohlcv must be [T>=2, 5] (or a batch [batch, T>=2, 5]), got {list(ohlcv.shape)}")
    if not np.isfinite(ohlcv).all() or (ohlcv[..., :4] <= 0).any() or (ohlcv[..., 4] < 0).any():
        raise InvalidInput("ohlcv needs finite positive prices and non-negative volume")
    open_, high, low, close, volume = np.moveaxis(ohlcv, -1, 0)
    prev_close = _shift(close, 1)
    log_ret = np.log(close / prev_close)
    log_volume = np.log1p(volume)
    true_range = np.maximum(high - low, np.maximum(np.abs(high - prev_close), np.abs(low - prev_close)))
    hl_log_sq = np.log(high / low) ** 2
    # every EMA of the close in one pass over time (the indicator windows, MACD legs, crossovers)
    spans = tuple(sorted({*windows, *(s for fast, slow, _ in macd_spans for s in (fast, slow)), 5, 10, 20, 50}))
    close_emas = dict(zip(spans, np.moveaxis(_emas(close[..., None, :], spans), -2, 0)))
    std_log_ret = {w: rolling_std(log_ret, w) for w in sorted({*windows, 5, 10, 20, 50})}

    columns: list[np.ndarray] = [
        close / prev_close - 1.0,
        log_ret,
        (high - low) / close,
        (close - open_) / open_,
        (high - np.maximum(open_, close)) / close,
        (np.minimum(open_, close) - low) / close,
        log_volume - rolling_mean(log_volume, 50),
        np.diff(log_volume, axis=-1, prepend=log_volume[..., :1]),
    ]
    for w in windows:
        sma = rolling_mean(close, w)
        std = rolling_std(close, w)
        hi = rolling_max(high, w)
        lo = rolling_min(low, w)
        columns += [
            close / sma - 1.0,                              # SMA ratio
            close / close_emas[w] - 1.0,                    # EMA ratio
            std_log_ret[w],                                 # volatility
            close / _shift(close, w) - 1.0,                 # momentum
            rsi(close, w) / 100.0 - 0.5,                    # RSI, centred
            _div(close - (sma - 2 * std), 4 * std) - 0.5,   # Bollinger %b, centred
            4 * std / sma,                                  # Bollinger width
            log_volume - rolling_mean(log_volume, w),       # volume vs its average
            close / hi - 1.0,                               # distance to rolling high
            close / lo - 1.0,                               # distance to rolling low
            _div(close - lo, hi - lo) - 0.5,                # stochastic %K, centred
            rolling_mean(log_ret, w),                       # mean return
            rolling_mean(true_range, w) / close,            # ATR
            _div(close - sma, std),                         # z-score
            rolling_mean((high - low) / close, w),          # mean range
        ]
    macds = np.stack([close_emas[fast] - close_emas[slow] for fast, slow, _ in macd_spans], axis=-2)
    signals = _emas(macds, tuple(signal for _, _, signal in macd_spans))
    for i in range(len(macd_spans)):
        macd, macd_signal = macds[..., i, :], signals[..., i, :]
        columns += [macd / close, macd_signal / close, (macd - macd_signal) / close]
    columns += [_shift(log_ret, lag) for lag in range(1, 11)]
    columns += [
        close_emas[5] / close_emas[20] - 1.0,
        close_emas[10] / close_emas[50] - 1.0,
        rolling_mean(close, 5) / rolling_mean(close, 30) - 1.0,
        _div(std_log_ret[5], std_log_ret[20]) - 1.0,
        _div(std_log_ret[10], std_log_ret[50]) - 1.0,
        np.sqrt(rolling_mean(hl_log_sq, 10) / (4 * np.log(2))),  # Parkinson volatility
        np.sqrt(rolling_mean(hl_log_sq, 20) / (4 * np.log(2))),
        np.sqrt(np.maximum(rolling_mean(0.5 * hl_log_sq - (2 * np.log(2) - 1) * np.log(close / open_) ** 2, 20),
                           0.0)),                                # Garman-Klass volatility
        _div(log_volume - rolling_mean(log_volume, 20), rolling_std(log_volume, 20)),
        _div(log_volume - rolling_mean(log_volume, 50), rolling_std(log_volume, 50)),
        np.sign(log_ret) * (log_volume - rolling_mean(log_volume, 20)),  # signed volume surprise
    ]
    rows = slice(-last, None) if last else slice(None)
    features = np.stack([column[..., rows] for column in columns], axis=-1)
    # a code invariant, not an input check: BarsPreprocessing.n_features counts the same columns
    assert features.shape[-1] == 29 + 15 * len(windows) + 3 * len(macd_spans), features.shape
    # Ratios of near-constant windows can explode; clip so one odd row cannot dominate a batch.
    return np.clip(features, -clip, clip).astype(np.float32)


def feature_window(ohlcv: np.ndarray, seq_len: int = 60) -> np.ndarray:
    """The model input for the last ``seq_len`` steps: ``[seq_len, 110]`` float32."""
    if len(ohlcv) < seq_len:
        raise InvalidInput(f"need at least {seq_len} OHLCV rows, got {len(ohlcv)}")
    return compute_features(ohlcv, last=seq_len)


def normalize_ohlcv_window(window: np.ndarray) -> np.ndarray:
    """LSTM price model input: prices divided by the window's last close, volume by its mean. ``[n, 5]`` or a
    batch ``[batch, n, 5]``, each window normalised by its own last close and mean volume."""
    window = np.asarray(window, dtype=np.float64)
    prices = window[..., :4] / window[..., -1:, 3:4]
    volume = window[..., 4:5] / np.maximum(window[..., 4:5].mean(axis=-2, keepdims=True), _EPS)
    return np.concatenate([prices, volume], axis=-1).astype(np.float32)


# ---- the declared steps -------------------------------------------------------------------------------------


def expected_bars(step: BarsPreprocessing) -> dict[str, Any]:
    """What a ``bars`` request must look like, for error details and metadata."""
    return {"shape": [-1, f">={step.min_bars}", len(OHLCV_COLUMNS)], "columns": list(OHLCV_COLUMNS),
            "min_bars": step.min_bars, "dtype": "float32 or float64, finite; prices > 0, volume >= 0"}


def bars_extent(bars: Any) -> tuple[int, int] | None:
    """(windows, bars in the longest window) of a ``bars`` input, read from its outer lists' lengths or its
    array shape without converting anything (a few list lengths per window); None for a form no step takes
    (:func:`check_bars` then says what is wrong). Rows ``[n, 5]`` or named columns ``{"open": [...], ...}``
    are one window; ``[batch, n, 5]``, a list of named-column windows or columns of per-window lists, a batch."""
    if isinstance(bars, np.ndarray):
        return (bars.shape[0], bars.shape[1]) if bars.ndim == 3 else (1, bars.shape[0]) if bars.ndim == 2 else None
    if isinstance(bars, dict):
        columns = [bars[name] for name in OHLCV_COLUMNS if isinstance(bars.get(name), list)]
        if not columns:
            return None
        if any(column and isinstance(column[0], list) for column in columns):  # columns of per-window lists
            return max(len(column) for column in columns), max(_longest(column) for column in columns)
        return 1, max(len(column) for column in columns)
    if not isinstance(bars, list) or not bars:
        return None
    first = bars[0]
    if isinstance(first, dict):  # a batch of named-column windows
        extents = [bars_extent(window) for window in bars]
        return len(bars), max((extent[1] for extent in extents if extent is not None), default=0)
    if isinstance(first, list) and first and isinstance(first[0], list):  # [batch, n, 5]
        return len(bars), _longest(bars)
    return 1, len(bars)  # one window [n, 5]


def _longest(lists: list[Any]) -> int:
    return max((len(item) for item in lists if isinstance(item, list)), default=0)


def bars_from_columns(bars: dict[str, Any] | list[Any], max_rows: int | None = None) -> np.ndarray:
    """Named-column bars -> the row form (``[n_bars, 5]`` or ``[batch, n_bars, 5]``) the steps take.

    ``{"open": [...], "high": [...], "low": [...], "close": [...], "volume": [...]}`` is one window (or a batch
    when every column is a list of per-window lists); a list of such objects is a batch. Exactly the five
    columns, numbers only, equal lengths; what a window holds (NaN, prices, count) is then checked by
    :func:`check_bars` like any bars.
    """
    windows = bars if isinstance(bars, list) else [bars]
    if not windows:
        raise InvalidInput("empty batch: bars is empty", {"expected": {"columns": list(OHLCV_COLUMNS)}})
    if max_rows is not None and len(windows) > max_rows:  # before numpy sees them
        raise InvalidInput(f"{len(windows)} bar windows exceed the limit of {max_rows}",
                           {"rows": len(windows), "max_rows": max_rows})
    arrays = [_window_from_columns(window, index) for index, window in enumerate(windows)]
    if isinstance(bars, dict):
        return arrays[0]
    shapes = {array.shape for array in arrays}
    if len(shapes) != 1 or arrays[0].ndim != 2:
        raise InvalidInput("a batch of named-column windows needs one-dimensional columns of the same length in "
                           "every window", {"shapes": sorted(list(s) for s in shapes)})
    return np.stack(arrays)


def _window_from_columns(columns: Any, index: int) -> np.ndarray:
    expected = {"columns": list(OHLCV_COLUMNS), "form": {"open": "[...]", "high": "[...]", "low": "[...]",
                                                          "close": "[...]", "volume": "[...]"}}
    if not isinstance(columns, dict):
        raise InvalidInput(f"bars window {index}: named columns are an object of column -> numbers",
                           {"expected": expected})
    missing = [c for c in OHLCV_COLUMNS if c not in columns]
    unexpected = sorted(k for k in columns if k not in OHLCV_COLUMNS)
    if missing or unexpected:
        raise InvalidInput(f"bars window {index}: named columns must be exactly {', '.join(OHLCV_COLUMNS)}",
                           {"expected": expected, "missing": missing, "unexpected": unexpected})
    arrays = []
    for name in OHLCV_COLUMNS:
        try:
            array = np.asarray(columns[name])
        except (ValueError, TypeError):
            array = None
        if array is None or array.dtype.kind not in "fiu" or array.ndim not in (1, 2):
            raise InvalidInput(f"bars window {index}: column {name!r} must be an array of numbers",
                               {"expected": expected, "column": name})
        arrays.append(array)
    lengths = {name: list(array.shape) for name, array in zip(OHLCV_COLUMNS, arrays)}
    if len({tuple(shape) for shape in lengths.values()}) != 1:
        raise InvalidInput(f"bars window {index}: the columns differ in length", {"expected": expected,
                                                                                 "lengths": lengths})
    return np.stack(arrays, axis=-1)


def check_bars(bars: Any, step: BarsPreprocessing, max_rows: int | None = None) -> np.ndarray:
    """Request bars (one window ``[n, 5]`` or a batch ``[batch, n, 5]``) -> float64 ``[batch, min_bars, 5]``
    (the last ``min_bars`` of each row), or InvalidInput saying what was expected."""
    expected = expected_bars(step)
    if isinstance(bars, list) and max_rows is not None and len(bars) > max_rows \
            and bars and isinstance(bars[0], list) and bars[0] and isinstance(bars[0][0], list):
        raise InvalidInput(f"{len(bars)} bar windows exceed the limit of {max_rows}",  # before numpy sees them
                           {"rows": len(bars), "max_rows": max_rows})
    array = bars if isinstance(bars, np.ndarray) else _array_of_lists(bars)
    if array is None or array.dtype.kind not in "fiu":
        raise InvalidInput("bars must be a rectangular array of numbers [[open, high, low, close, volume], ...] "
                           "(one window) or a list of such windows", {"expected": expected})
    shape = list(array.shape)
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3 or array.shape[2] != len(OHLCV_COLUMNS):
        raise InvalidInput(f"bars need 5 columns per bar (open, high, low, close, volume), as [n_bars, 5] or "
                           f"[batch, n_bars, 5]; got shape {shape}", {"expected": expected, "got_shape": shape})
    rows, count = array.shape[0], array.shape[1]
    if rows == 0:
        raise InvalidInput("empty batch: bars is empty", {"expected": expected})
    if max_rows is not None and rows > max_rows:
        raise InvalidInput(f"{rows} bar windows exceed the limit of {max_rows}", {"rows": rows, "max_rows": max_rows})
    if count < step.min_bars:
        raise InvalidInput(f"this model needs at least {step.min_bars} bars per window "
                           f"({step.window} steps + {step.warmup} bars of indicator history); got {count}",
                           {"expected": expected, "got_bars": count})
    array = np.asarray(array[:, count - step.min_bars:], dtype=np.float64)
    if not np.isfinite(array).all():
        raise InvalidInput("bars contain NaN or Inf; every open, high, low, close and volume must be finite",
                           {"expected": expected})
    if (array[..., :4] <= 0).any() or (array[..., 4] < 0).any():
        raise InvalidInput("bars need positive prices (open, high, low, close) and non-negative volume",
                           {"expected": expected})
    return np.ascontiguousarray(array)


def _array_of_lists(bars: Any) -> np.ndarray | None:
    """JSON lists -> an array, a batch window by window: one conversion of a large batch is a single C call
    that holds the GIL throughout, while a thread converting window by window lets the event loop run between
    windows. None when the lists are not a rectangular array of numbers."""
    try:
        if isinstance(bars, list) and len(bars) > 1 and isinstance(bars[0], list) and bars[0] \
                and isinstance(bars[0][0], list):
            windows = [np.asarray(window) for window in bars]
            if any(w.dtype.kind not in "fiu" for w in windows) or len({w.shape for w in windows}) != 1:
                return None
            return np.stack(windows)
        return np.asarray(bars)
    except (ValueError, TypeError):
        return None


def preprocess_bars(step: BarsPreprocessing, bars: Any, max_rows: int | None = None) -> np.ndarray:
    """The declared step: bars -> float32 ``[batch, window, n_features]``, the model's input. Training data
    (modelzoo/datasets.py) and serving (processing.py) both call this."""
    windows = check_bars(bars, step, max_rows)
    if step.kind == "ohlcv_window":
        return normalize_ohlcv_window(windows)
    # the whole batch at once (vectorised over windows); each window still sees only its own bars
    return compute_features(windows, step.indicator_windows, step.macd, step.clip, last=step.window)
