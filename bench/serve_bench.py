"""The service vs a naive FastAPI + PyTorch-eager server, same LSTM, same run, loopback, concurrency 32.

    python bench/serve_bench.py [--store model_store] [--seconds 15] [--concurrency 32] [--workers 1]

Builds the demo registry in a temp dir when --store has no lstm-price. Prints throughput, p50 and p99
of each server and the ratios. Both servers run one process each unless --workers says otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from loadgen import run_load  # noqa: E402

from tests.support.server import free_port  # noqa: E402


@contextmanager
def process(cmd: list[str], ready_url: str, env: dict | None = None, timeout: float = 120):
    proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(proc.stderr.read().decode()[-2000:])
            try:
                if httpx.get(ready_url, timeout=1).status_code in (200, 405):
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{cmd} not ready")
            time.sleep(0.2)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


def ensure_store(store: Path | None) -> Path:
    from prediction_service.modelzoo.demo import build_demo_registry

    if store is None:
        store = Path(tempfile.mkdtemp(prefix="bench-store-"))
    if not (store / "lstm-price" / "production").exists():
        print(f"building the demo registry in {store} ...", flush=True)
        build_demo_registry(store)
    return store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    store = ensure_store(args.store)

    window = np.random.default_rng(0).normal(1.0, 0.01, size=(60, 5)).astype(np.float32).round(5).tolist()
    payload = {"instance": window}
    results = []

    port = free_port()
    with process([sys.executable, "-m", "prediction_service", "serve", "--store", str(store), "--port", str(port),
                  "--workers", str(args.workers), "--log-level", "warning"],
                 f"http://127.0.0.1:{port}/health/ready"):
        results.append(asyncio.run(run_load(f"http://127.0.0.1:{port}/v1/models/lstm-price/predict", payload,
                                            concurrency=args.concurrency, seconds=args.seconds,
                                            label="prediction-service")))
    port = free_port()
    with process([sys.executable, str(REPO / "bench" / "naive_baseline.py"), "--store", str(store),
                  "--port", str(port)], f"http://127.0.0.1:{port}/predict"):
        results.append(asyncio.run(run_load(f"http://127.0.0.1:{port}/predict", payload,
                                            concurrency=args.concurrency, seconds=args.seconds,
                                            label="naive FastAPI + eager")))

    service, naive = results
    print(f"\nLSTM 60x5, concurrency {args.concurrency}, {args.seconds:.0f} s each, loopback, "
          f"{os.cpu_count()} cores, service workers {args.workers}")
    for result in results:
        print(result.line())
    print(f"throughput ratio service/naive: {service.throughput / naive.throughput:.2f}x   "
          f"p99 ratio service/naive: {service.percentile(99) / naive.percentile(99):.2f}")


if __name__ == "__main__":
    main()
