"""The price + sentiment ensemble through one request vs its two members called separately by the client
(concurrently, then combined client side), against one real server on loopback; bounded in time.

    python bench/ensemble_bench.py [--store DIR] [--seconds 5] [--concurrency 8] [--rounds 2]

Registers the ensemble (lstm-price + sentiment-transformer, production) in the demo registry when missing.
Prints req/s (complete predictions: one ensemble answer, or both member answers), p50 and p99 per round
(order alternates), then the medians.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

import aiohttp
import numpy as np
import orjson

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from loadgen import LoadResult, median  # noqa: E402
from serve_bench import ensure_store, process  # noqa: E402

from prediction_service.ensemble import EnsembleMember, EnsembleRegistry, WeightedPriceSentiment  # noqa: E402
from tests.support.server import free_port  # noqa: E402

ENSEMBLE = "price-sentiment"
TEXT = "Shares rally after strong earnings beat"


def ensure_ensemble(store: Path) -> None:
    registry = EnsembleRegistry(store)
    if ENSEMBLE in registry.names():
        return
    registry.register(ENSEMBLE, "1.0.0", [EnsembleMember(role="price", model="lstm-price"),
                                          EnsembleMember(role="sentiment", model="sentiment-transformer")],
                      WeightedPriceSentiment(), actor="bench")
    registry.promote(ENSEMBLE, "1.0.0", actor="bench")


async def closed_loop(label: str, call, concurrency: int, seconds: float, warmup_seconds: float = 1.0) -> LoadResult:
    """``call(session) -> bool`` is one complete prediction; N clients, each one call at a time."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency * 2)) as session:
        warm_until = time.monotonic() + warmup_seconds
        async def warm():
            while time.monotonic() < warm_until:
                await call(session)
        await asyncio.gather(*(warm() for _ in range(concurrency)))
        result = LoadResult(label, seconds)
        stop_at = time.monotonic() + seconds
        async def worker():
            while time.monotonic() < stop_at:
                started = time.perf_counter()
                ok = await call(session)
                result.statuses[200 if ok else 500] += 1
                if ok:
                    result.latencies_ms.append((time.perf_counter() - started) * 1000.0)
        began = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        result.seconds = time.monotonic() - began
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    store = ensure_store(args.store)
    ensure_ensemble(store)

    window = np.random.default_rng(0).normal(100.0, 1.0, size=(60, 5)).round(3)
    window[:, 4] = 1e5
    bars = [window.tolist()]
    port = free_port()
    base = f"http://127.0.0.1:{port}/v1/models"
    headers = {"content-type": "application/json"}
    ensemble_body = orjson.dumps({"inputs": {"bars": bars, "text": [TEXT]}})
    price_body, text_body = orjson.dumps({"bars": bars}), orjson.dumps({"text": [TEXT]})
    combiner = WeightedPriceSentiment()

    async def post(session, url, body):
        async with session.post(url, data=body, headers=headers) as response:
            return response.status, await response.read()

    async def ensemble(session) -> bool:
        status, _ = await post(session, f"{base}/{ENSEMBLE}/predict", ensemble_body)
        return status == 200

    async def members(session) -> bool:
        (s1, b1), (s2, b2) = await asyncio.gather(post(session, f"{base}/lstm-price/predict", price_body),
                                                  post(session, f"{base}/sentiment-transformer/predict", text_body))
        if s1 != 200 or s2 != 200:
            return False
        price, sentiment = orjson.loads(b1)["outputs"]["price"], orjson.loads(b2)["outputs"]["probabilities"]
        combiner.combine(np.array(price), np.array(sentiment), ["negative", "neutral", "positive"])
        return True

    rounds = []
    with process([sys.executable, "-m", "prediction_service", "serve", "--store", str(store), "--port", str(port),
                  "--workers", "1", "--log-level", "warning"], f"http://127.0.0.1:{port}/health/ready",
                 env={"SERVER_GRPC_PORT": "0", "AUDIT_ENABLED": "false"}):
        for round_no in range(args.rounds):
            order = [("ensemble endpoint", ensemble), ("members separately", members)]
            if round_no % 2:
                order.reverse()
            measured = {}
            for label, call in order:
                measured[label] = asyncio.run(closed_loop(f"{label} (round {round_no + 1})", call,
                                                          args.concurrency, args.seconds))
                print(measured[label].line(), flush=True)
            rounds.append(measured)

    print(f"\nprice + sentiment, concurrency {args.concurrency}, {args.seconds:.0f} s per phase, {args.rounds} rounds, "
          f"loopback, {os.cpu_count()} cores, 1 worker")
    for label in ("ensemble endpoint", "members separately"):
        results = [r[label] for r in rounds]
        print(f"{label:<20} median {median([r.throughput for r in results]):7.1f} req/s   "
              f"p50 {median([r.percentile(50) for r in results]):6.2f} ms   "
              f"p99 {median([r.percentile(99) for r in results]):6.2f} ms")


if __name__ == "__main__":
    main()
