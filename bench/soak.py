"""Soak test (not in CI): drive the real server for a while at moderate concurrency.

Prints the server's resident memory at start and end (from /v1/stats: summed over workers), throughput,
client-side p50/p99 latency and errors by status, with a progress line every 10 s.

    python bench/soak.py --store model_store --model price-lstm --seconds 180 --concurrency 8
    python bench/soak.py --url http://127.0.0.1:8000 --model price-lstm --seconds 300
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import aiohttp
import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--url", help="an already running server")
    target.add_argument("--store", help="start a server on a copy of this registry (loopback, free port)")
    parser.add_argument("--model", required=True)
    parser.add_argument("--seconds", type=float, default=180.0, help="how long to drive it (bounded)")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--workers", type=int, default=1, help="with --store: uvicorn workers")
    parser.add_argument("--rows", type=int, default=1, help="instances per request")
    args = parser.parse_args(argv)
    if not 0 < args.seconds <= 3600:
        parser.error("--seconds must be in (0, 3600]")
    return args


def start_server(store: Path, workers: int) -> tuple[subprocess.Popen, str, Path]:
    import socket

    work = Path(tempfile.mkdtemp(prefix="soak-"))
    copy = work / "store"
    shutil.copytree(store, copy, symlinks=True, ignore=shutil.ignore_patterns(".state"))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = open(work / "server.log", "wb")
    process = subprocess.Popen([sys.executable, "-m", "prediction_service", "serve", "--store", str(copy),
                                "--port", str(port), "--workers", str(workers), "--log-level", "warning"],
                               cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))
    return process, f"http://127.0.0.1:{port}", work


async def wait_ready(session: aiohttp.ClientSession, url: str, timeout: float = 120.0) -> None:
    until = time.monotonic() + timeout
    while time.monotonic() < until:
        try:
            async with session.get(f"{url}/health/ready") as response:
                if response.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.5)
    raise SystemExit(f"server at {url} not ready after {timeout:.0f} s")


async def request_body(session: aiohttp.ClientSession, url: str, model: str, rows: int) -> dict:
    async with session.get(f"{url}/v1/models/{model}") as response:
        if response.status != 200:
            raise SystemExit(f"model {model}: HTTP {response.status} {await response.text()}")
        signature = (await response.json())["signature"]
    if signature.get("text"):
        return {"text": ["Shares rally after strong earnings beat"] * rows}
    rng = np.random.default_rng(0)
    inputs = {}
    for spec in signature["inputs"]:
        shape = [rows] + [d if d > 0 else 8 for d in spec["shape"][1:]]
        inputs[spec["name"]] = rng.random(shape).astype("float32" if "float" in spec["dtype"] else "int64").tolist()
    return {"inputs": inputs}


async def rss(session: aiohttp.ClientSession, url: str) -> int:
    async with session.get(f"{url}/v1/stats") as response:
        return (await response.json())["process_resident_memory_bytes"]


async def soak(url: str, args: argparse.Namespace) -> None:
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=args.concurrency * 2),
                                     timeout=timeout) as session:
        await wait_ready(session, url)
        body = await request_body(session, url, args.model, args.rows)
        predict = f"{url}/v1/models/{args.model}/predict"
        for _ in range(20):  # warm up before the first memory reading
            async with session.post(predict, json=body) as response:
                await response.read()
        rss_start = await rss(session, url)
        latencies: list[float] = []
        statuses: Counter[str] = Counter()
        started = time.monotonic()
        until = started + args.seconds

        async def loop() -> None:
            while time.monotonic() < until:
                sent = time.perf_counter()
                try:
                    async with session.post(predict, json=body) as response:
                        await response.read()
                        statuses[str(response.status)] += 1
                        if response.status == 200:
                            latencies.append(time.perf_counter() - sent)
                except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                    statuses[type(exc).__name__] += 1

        async def progress() -> None:
            while time.monotonic() < until:
                await asyncio.sleep(10)
                elapsed = time.monotonic() - started
                print(f"  {elapsed:6.0f} s  {sum(statuses.values()) / elapsed:8.1f} req/s  "
                      f"rss {await rss(session, url) / 2**20:7.1f} MiB  {dict(statuses)}", flush=True)

        ticker = asyncio.create_task(progress())
        await asyncio.gather(*(loop() for _ in range(args.concurrency)))
        ticker.cancel()
        elapsed = time.monotonic() - started
        rss_end = await rss(session, url)

    total = sum(statuses.values())
    p50, p99 = (np.percentile(latencies, [50, 99]) * 1000) if latencies else (float("nan"), float("nan"))
    errors = {k: v for k, v in statuses.items() if k != "200"}
    print(f"model {args.model}: {elapsed:.0f} s at concurrency {args.concurrency}, {args.rows} row(s)/request")
    print(f"  requests   {total}  ({total / elapsed:.1f} req/s)")
    print(f"  latency    p50 {p50:.2f} ms  p99 {p99:.2f} ms  (client side, successful requests)")
    print(f"  errors     {sum(errors.values())}  {errors or ''}")
    print(f"  server RSS start {rss_start / 2**20:.1f} MiB  end {rss_end / 2**20:.1f} MiB  "
          f"(change {(rss_end - rss_start) / 2**20:+.1f} MiB)")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.url:
        asyncio.run(soak(args.url.rstrip("/"), args))
        return 0
    process, url, work = start_server(Path(args.store), args.workers)
    print(f"server pid {process.pid} at {url} (log {work / 'server.log'})", flush=True)
    try:
        asyncio.run(soak(url, args))
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(60)
        print(f"server exited with {code}")
        shutil.rmtree(work / "store", ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
