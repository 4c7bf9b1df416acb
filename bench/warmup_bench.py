"""First request after a load, with and without warm-up, for every zoo model and in-process runtime.

    python bench/warmup_bench.py [--store model_store] [--repeats 5] [--steady 30]

Each repeat: a fresh adapter loads the production version (warm-up off, then on), then one request
(batch 1) is timed, then --steady more give the steady p50. Prints per runtime and model the median
and worst first-request latency (the worst is usually the process's first TorchScript run, when the
JIT itself initializes), the steady p50, the median ratio, and the load time (warm-up included).
Adapter-level (no HTTP) and no batching delay, so the figures are the model's, not the server's.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from serve_bench import ensure_store  # noqa: E402

from prediction_service.adapters.simple import SimpleAdapter  # noqa: E402
from prediction_service.adapters.torchscript import TorchScriptAdapter  # noqa: E402
from prediction_service.registry import RegistryReader  # noqa: E402
from prediction_service.settings import Settings, WarmupSettings  # noqa: E402

MODELS = ("lstm-price", "cnn-lstm-direction", "sentiment-transformer")
RUNTIMES = {
    "simple/onnx": (SimpleAdapter, ("onnx",)),
    "simple/torchscript": (SimpleAdapter, ("torchscript",)),
    "torchscript (compiled)": (TorchScriptAdapter, None),
}


async def one_load(runtime: str, settings: Settings, name: str, steady: int) -> tuple[float, float, float]:
    """(load ms, first request ms, steady p50 ms) for one fresh adapter."""
    adapter_class, formats = RUNTIMES[runtime]
    adapter = adapter_class(settings)
    if formats:
        adapter.formats = formats
    try:
        version = RegistryReader(settings.model_store).resolve(name)
        started = time.perf_counter()
        await adapter.load(version)
        load_ms = (time.perf_counter() - started) * 1000
        request = version.signature.synthetic_inputs(1, seed=99)
        timings = []
        for _ in range(1 + steady):
            started = time.perf_counter()
            await adapter.predict(version.key, request)
            timings.append((time.perf_counter() - started) * 1000)
        return load_ms, timings[0], statistics.median(timings[1:])
    finally:
        await adapter.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steady", type=int, default=30)
    args = parser.parse_args()
    store = ensure_store(args.store)
    # No batching delay: the figures are the model's own latency.
    base = Settings(model_store=store).model_copy(deep=True)
    base.batching.max_queue_delay_ms = 0.0
    print(f"{'runtime':<24}{'model':<24}{'warm-up':<9}{'first ms':>10}{'worst first':>13}{'steady p50':>12}"
          f"{'first/steady':>14}{'load ms':>10}")
    for runtime in RUNTIMES:
        for name in MODELS:
            for enabled in (False, True):
                settings = base.model_copy(update={"warmup": WarmupSettings(enabled=enabled)})
                runs = [await one_load(runtime, settings, name, args.steady) for _ in range(args.repeats)]
                load = statistics.median(r[0] for r in runs)
                first = statistics.median(r[1] for r in runs)
                worst = max(r[1] for r in runs)
                steady = statistics.median(r[2] for r in runs)
                print(f"{runtime:<24}{name:<24}{'on' if enabled else 'off':<9}{first:>10.2f}{worst:>13.2f}"
                      f"{steady:>12.2f}{first / steady:>13.1f}x{load:>10.0f}", flush=True)
    print(f"\nmedians of {args.repeats} fresh loads; warm-up = {WarmupSettings().batch_sizes} rows x "
          f"{WarmupSettings().iterations} runs; batch-1 requests straight to the adapter (no HTTP)")


if __name__ == "__main__":
    asyncio.run(main())
