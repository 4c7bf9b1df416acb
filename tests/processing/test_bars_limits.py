"""Raw bars are bounded before any work: bars per window and per request are checked from the request's shape
(413, the model never runs), and a large request is converted and computed off the event loop."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from prometheus_client import CollectorRegistry

from prediction_service.preprocessing import bars as bars_module
from prediction_service.errors import PayloadTooLarge
from prediction_service.types import RawInput
from prediction_service.modelzoo.datasets import bar_windows
from prediction_service.modelzoo.synthetic import synthetic_ohlcv
from prediction_service.serving.processing import ModelProcessing
from prediction_service.settings import LimitSettings, Settings
from prediction_service.signature import OHLCV_COLUMNS
from tests.support.asgi import served_app

PRICE = "/v1/models/lstm-price/predict"
LIMITS = LimitSettings(max_bars_per_window=200, max_bars_per_request=1000)


def _windows(windows: int, bars: int) -> list:
    return bar_windows(synthetic_ohlcv(bars + windows, seed=3), windows, bars).tolist()


def _columns(window: list) -> dict:
    return {name: [bar[i] for bar in window] for i, name in enumerate(OHLCV_COLUMNS)}


def _model_runs(metrics: CollectorRegistry, model: str) -> float:
    return metrics.get_sample_value("prediction_batch_rows_count", {"model": model}) or 0.0


@pytest.mark.parametrize("bars, says", [
    (_windows(2, 201), "201 bars; at most 200 per window"),           # rows, one window too long
    (_windows(1, 201)[0], "201 bars; at most 200 per window"),        # one window, no batch dim
    (_windows(6, 180), "1080 bars; at most 1000 per request"),        # each window fits, the request does not
    (_columns(_windows(1, 201)[0]), "201 bars; at most 200 per window"),    # named columns
    ([_columns(w) for w in _windows(6, 180)], "1080 bars; at most 1000 per request"),
])
async def test_bars_over_the_caps_are_413_before_the_model_runs(demo_store, bars, says):
    metrics = CollectorRegistry()
    settings = Settings(model_store=demo_store, limits=LIMITS)
    async with served_app(settings, metrics_registry=metrics) as (_, client):
        response = await client.post(PRICE, json={"bars": bars})
        assert response.status_code == 413, response.text
        error = response.json()["error"]
        assert error["code"] == "payload_too_large" and says in error["message"], error
        assert error["details"]["model_reads"] == 60
        assert _model_runs(metrics, "lstm-price") == 0
        within = await client.post(PRICE, json={"bars": _windows(5, 200)})  # at both caps exactly: served
        assert within.status_code == 200, within.text
        assert _model_runs(metrics, "lstm-price") == 1


def test_the_caps_are_read_from_the_shape_before_conversion():
    processing = ModelProcessing(_Version(), LIMITS)
    # not numbers at all: refused for its size, never converted (a conversion would say "numbers")
    with pytest.raises(PayloadTooLarge, match="per window"):
        processing.preprocess({RawInput.BARS: [[["x"] * 5] * 201]})
    assert not processing.runs_off_loop({RawInput.BARS: [[["x"] * 5] * 201]})  # refused inline, no thread


def test_large_bar_requests_run_off_the_loop_and_small_ones_inline():
    processing = ModelProcessing(_Version(), LimitSettings())
    assert not processing.runs_off_loop({RawInput.BARS: _windows(16, 60)})     # 960 bars: cheaper than a hop
    assert processing.runs_off_loop({RawInput.BARS: _windows(4, 1000)})       # 4,000 bars
    assert processing.runs_off_loop({RawInput.BARS: [_columns(w) for w in _windows(4, 1000)]})


class _Version:
    """Just what ModelProcessing reads of a registry version: lstm-price's signature."""

    def __init__(self):
        from prediction_service.architectures import signature_for
        from prediction_service.modelzoo.datasets import bars_step_for
        from prediction_service.signature import ModelSignature

        signature = signature_for("lstm_price")
        self.signature = ModelSignature.model_validate({**signature.model_dump(), "bars": bars_step_for("lstm_price")})
        self.path, self.name = None, "lstm-price"


@pytest.mark.parametrize("named", [False, True])
async def test_a_large_bars_request_is_converted_off_the_event_loop(demo_store, named):
    """The conversion runs on a worker thread, and the event loop keeps running while it does: a ticking task
    ticks between the conversion's start and its end."""
    loop_thread = threading.get_ident()
    ticks = 0
    seen: list[tuple[str, int, int]] = []  # (event, thread, ticks) of the bars conversion
    watched = {bars_module.check_bars.__code__: "check_bars", bars_module.bars_from_columns.__code__: "columns"}

    def profile(frame, event, arg):
        if event in ("call", "return") and frame.f_code in watched:
            seen.append((f"{watched[frame.f_code]} {event}", threading.get_ident(), ticks))
            if event == "call" and threading.get_ident() != loop_thread:
                # Hold the conversion until the loop has ticked: on a busy machine a short conversion could
                # otherwise end before the loop's thread is scheduled at all. On the loop's own thread the
                # ticks could not move, and the wait would time out.
                started, until = ticks, time.monotonic() + 10
                while ticks == started and time.monotonic() < until:
                    time.sleep(0.001)

    async def tick():
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    windows = _windows(24, 1000)  # 24,000 bars, within the default caps
    body = {"bars": [_columns(w) for w in windows] if named else windows}
    loop = asyncio.get_running_loop()
    # the profiler slows everything down: a deadline past the anonymous ceiling; it is on for the request only
    # (started under it, the app's model loads took tens of seconds)
    async with served_app(model_store=demo_store,
                          limits=LimitSettings(caller_deadline_ceiling_ms=30_000)) as (_, client):
        executor = ThreadPoolExecutor(max_workers=4, initializer=sys.setprofile, initargs=(profile,))
        loop.set_default_executor(executor)  # the threads asyncio.to_thread hands work to report their calls
        interval = sys.getswitchinterval()
        sys.setswitchinterval(1e-4)
        sys.setprofile(profile)  # the event loop's thread too: a conversion on it would show up as well
        ticker = asyncio.create_task(tick())
        try:
            response = await client.post(PRICE, json=body, headers={"X-Request-Deadline-Ms": "30000"})
        finally:
            sys.setprofile(None)
            sys.setswitchinterval(interval)
            ticker.cancel()
    assert response.status_code == 200, response.text
    assert len(response.json()["predictions"]) == 24
    assert all(thread != loop_thread for _, thread, _ in seen), seen  # never on the event loop's thread
    step = "columns" if named else "check_bars"  # what turns these lists into an array
    conversions = [(event, thread, at) for event, thread, at in seen if event.startswith(step)]
    assert [event for event, _, _ in conversions] == [f"{step} call", f"{step} return"]
    (_, _, started), (_, _, ended) = conversions
    assert ended > started, "the event loop did not run while the bars were converted"
