"""Declared OHLCV steps (prediction_service/preprocessing/bars.py): a batch of bar windows window by window vs at once.

For batch 1, 32 and 256 of 110-bar windows (the CNN-LSTM's ``ohlcv_features`` step: 60 steps x 110 features
after 50 bars of indicator history) and of 60-bar windows (the LSTM's ``ohlcv_window`` normalisation), prints
p50 latency and windows/s of
- per-window: the step's function called once per window, the way preprocess_bars ran a batch before;
- vectorised: preprocess_bars on the whole batch (numpy over the batch axis), what training and serving run.
Both give the same array (checked here too). One process, one thread of numpy work.
Usage: ``python bench/bars_bench.py [--runs 50] [--batches 1,32,256]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prediction_service.preprocessing.bars import check_bars, compute_features, normalize_ohlcv_window, preprocess_bars  # noqa: E402
from prediction_service.modelzoo.datasets import bar_windows, direction_bars_step, price_bars_step  # noqa: E402
from prediction_service.modelzoo.synthetic import synthetic_ohlcv  # noqa: E402
from prediction_service.signature import BarsPreprocessing  # noqa: E402


def per_window(step: BarsPreprocessing, bars: np.ndarray) -> np.ndarray:
    """The batch window by window: validated once, then the feature function per window."""
    windows = check_bars(bars, step)
    if step.kind == "ohlcv_window":
        return np.stack([normalize_ohlcv_window(window) for window in windows])
    return np.stack([compute_features(window, step.indicator_windows, step.macd, step.clip, last=step.window)
                     for window in windows])


def _p50_ms(run: Callable[[], np.ndarray], runs: int) -> float:
    run()  # warm-up
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        run()
        samples.append(time.perf_counter() - started)
    return float(np.median(samples)) * 1000.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=50, help="timed runs per batch size (at least 5 at batch 256)")
    parser.add_argument("--batches", default="1,32,256")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    steps = {"ohlcv_features (CNN-LSTM, 110 bars -> 60 x 110)": direction_bars_step(),
             "ohlcv_window (LSTM, 60 bars -> 60 x 5)": price_bars_step()}
    print(f"{'step':<48} {'batch':>5} {'per-window p50 ms':>18} {'windows/s':>10} "
          f"{'vectorised p50 ms':>18} {'windows/s':>10} {'speed-up':>9}")
    for label, step in steps.items():
        series = synthetic_ohlcv(max(batches) + step.min_bars, seed=7)
        for batch in batches:
            bars = bar_windows(series, batch, step.min_bars)
            np.testing.assert_array_equal(per_window(step, bars), preprocess_bars(step, bars))
            runs = max(5, args.runs // max(1, batch // 32))
            loop = _p50_ms(lambda: per_window(step, bars), runs)
            vectorised = _p50_ms(lambda: preprocess_bars(step, bars), runs)
            print(f"{label:<48} {batch:>5} {loop:>18.3f} {batch / loop * 1000:>10.0f} "
                  f"{vectorised:>18.3f} {batch / vectorised * 1000:>10.0f} {loop / vectorised:>8.1f}x")


if __name__ == "__main__":
    main()
