"""The demo LSTM (lstm-price) through Ray Serve (1 and 2 replicas) vs the standalone service, one run.

    python bench/ray_bench.py [--store model_store] [--seconds 10] [--concurrency 16] [--rate 200]

For each target: a closed loop (``--concurrency`` clients, as fast as they go: rps, p50, p99) and an open
loop at ``--rate`` requests/s (latency from each request's scheduled start, so a stalled server is not
flattered: p50, p99), then the seed-004 SLA check, p99 < 100 ms at 200 rps. The standalone service is
``python -m prediction_service serve`` (1 worker); Ray runs a local single node with Serve's proxy and
replicas of 0.5 CPU (the whole machine is shared by load generator, proxy and replicas). Both batch with
the service's own batcher inside the process that runs the model.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import aiohttp
import httpx
import orjson

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from loadgen import LoadResult, run_load  # noqa: E402
from serve_bench import ensure_store, process  # noqa: E402

from tests.support.server import free_port  # noqa: E402

PATH = "/v1/models/lstm-price/predict"
PAYLOAD = {"instance": [[1.0, 1.002, 0.998, 1.001, 1.0]] * 60}
SLA_P99_MS = 100.0


async def open_loop(url: str, rate: float, seconds: float, label: str) -> LoadResult:
    """``rate`` requests/s on a fixed schedule, whatever the answers' pace (no coordinated omission)."""
    body = orjson.dumps(PAYLOAD)
    result = LoadResult(label, seconds, statuses=Counter())
    # A pooled client, as trading systems run one: past 64 in flight requests wait in the pool (and count).
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as session:
        async def one(scheduled: float) -> None:
            await asyncio.sleep(max(0.0, scheduled - time.perf_counter()))
            try:
                async with session.post(url, data=body, headers={"content-type": "application/json"}) as resp:
                    await resp.read()
                    status = resp.status
            except aiohttp.ClientError:
                status = -1
            result.statuses[status] += 1
            if status == 200:
                result.latencies_ms.append((time.perf_counter() - scheduled) * 1000.0)

        start = time.perf_counter() + 0.1
        await asyncio.gather(*(one(start + i / rate) for i in range(int(rate * seconds))))
    return result


def measure(base: str, label: str, args: argparse.Namespace) -> list[LoadResult]:
    closed = asyncio.run(run_load(base + PATH, PAYLOAD, concurrency=args.concurrency, seconds=args.seconds,
                                  label=f"{label} closed c={args.concurrency}"))
    opened = asyncio.run(open_loop(base + PATH, args.rate, args.seconds, f"{label} open {args.rate:g} rps"))
    for result in (closed, opened):
        print(result.line(), flush=True)
    return [closed, opened]


def standalone(store: Path, args: argparse.Namespace) -> list[LoadResult]:
    port = free_port()
    env = {"MODEL_STORE": str(store), "SERVER_GRPC_PORT": "0", "BATCH_MAX_QUEUE_DELAY_MS": str(args.batch_delay_ms)}
    with process([sys.executable, "-m", "prediction_service", "serve", "--port", str(port), "--workers", "1",
                  "--log-level", "warning"], f"http://127.0.0.1:{port}/health/ready", env=env):
        return measure(f"http://127.0.0.1:{port}", "standalone serve", args)


def on_ray(store: Path, args: argparse.Namespace) -> list[LoadResult]:
    import ray
    from ray import serve

    from prediction_service.deploy.ray_serve import RayAppArgs, application

    os.environ["PYTHONPATH"] = str(REPO)
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=80 * 1024**2, log_to_driver=False,
             logging_level="warning")
    results = []
    try:
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        env = {"MODEL_STORE": str(store), "SERVER_GRPC_PORT": "0", "BATCH_MAX_QUEUE_DELAY_MS": str(args.batch_delay_ms)}
        for replicas in (1, 2):
            serve.run(application(RayAppArgs(env=env), num_replicas=replicas, max_ongoing_requests=64,
                                  ray_actor_options={"num_cpus": 0.5}), name="bench", route_prefix="/")
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 120
            while httpx.get(base + "/health/ready", timeout=10).status_code != 200:
                if time.monotonic() > deadline:
                    raise RuntimeError("Serve application not ready")
                time.sleep(0.5)
            results += measure(base, f"ray serve {replicas} replica{'s' if replicas > 1 else ''}", args)
        serve.delete("bench")
    finally:
        serve.shutdown()
        ray.shutdown()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--batch-delay-ms", type=float, default=2.0, help="BATCH_MAX_QUEUE_DELAY_MS for both")
    args = parser.parse_args()
    store = ensure_store(args.store)
    results = standalone(store, args) + on_ray(store, args)
    print(f"\nSLA (seed 004): p99 < {SLA_P99_MS:g} ms at {args.rate:g} rps, no errors")
    for result in results[1::2]:
        errors = sum(n for status, n in result.statuses.items() if status != 200)
        verdict = "PASS" if result.percentile(99) < SLA_P99_MS and errors == 0 else "FAIL"
        print(f"  {result.label:<34} p99 {result.percentile(99):7.2f} ms  errors {errors}  {verdict}")


if __name__ == "__main__":
    main()
