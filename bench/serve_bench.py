"""The service vs a naive FastAPI + PyTorch-eager server, same LSTM, same run, loopback, concurrency 32.

    python bench/serve_bench.py [--store model_store] [--seconds 10] [--rounds 3] [--concurrency 32] [--workers 1]

Builds the demo registry in a temp dir when --store has no lstm-price. Prints throughput, p50 and p99
of each server per round (the order alternates) and the median ratios. Both servers run one process
each unless --workers says otherwise; the load generator shares the machine with them.
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

from loadgen import median, run_load  # noqa: E402

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
        stop_process(proc)


def stop_process(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()


def ensure_store(store: Path | None) -> Path:
    from prediction_service.commands.demo_registry import build_demo_registry

    if store is None:
        store = Path(tempfile.mkdtemp(prefix="bench-store-"))
    if not (store / "lstm-price" / "production").exists():
        print(f"building the demo registry in {store} ...", flush=True)
        build_demo_registry(store)
    return store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    store = ensure_store(args.store)

    window = np.random.default_rng(0).normal(1.0, 0.01, size=(60, 5)).astype(np.float32).round(5).tolist()
    payload = {"instance": window}
    service_port, naive_port = free_port(), free_port()
    service_url = f"http://127.0.0.1:{service_port}/v1/models/lstm-price/predict"
    naive_url = f"http://127.0.0.1:{naive_port}/predict"
    rounds: list[tuple] = []
    with process([sys.executable, "-m", "prediction_service", "serve", "--store", str(store), "--port",
                  str(service_port), "--workers", str(args.workers), "--log-level", "warning"],
                 f"http://127.0.0.1:{service_port}/health/ready"), \
         process([sys.executable, str(REPO / "bench" / "naive_baseline.py"), "--store", str(store),
                  "--port", str(naive_port)], naive_url):
        for round_no in range(args.rounds):
            # Alternate which server goes first: slow drifts of a shared machine hit both alike.
            order = [("service", service_url), ("naive", naive_url)]
            if round_no % 2:
                order.reverse()
            measured = {}
            for label, url in order:
                measured[label] = asyncio.run(run_load(url, payload, concurrency=args.concurrency,
                                                       seconds=args.seconds, label=f"{label} (round {round_no + 1})"))
                print(measured[label].line(), flush=True)
            rounds.append((measured["service"], measured["naive"]))

    throughput_ratios = [svc.throughput / naive.throughput for svc, naive in rounds]
    p99_ratios = [svc.percentile(99) / naive.percentile(99) for svc, naive in rounds]
    print(f"\nLSTM 60x5, concurrency {args.concurrency}, {args.seconds:.0f} s per phase, {args.rounds} rounds, "
          f"loopback, {os.cpu_count()} cores, service workers {args.workers}")
    print(f"prediction-service    median {median([s.throughput for s, _ in rounds]):8.1f} req/s   "
          f"p50 {median([s.percentile(50) for s, _ in rounds]):6.2f} ms   p99 {median([s.percentile(99) for s, _ in rounds]):6.2f} ms")
    print(f"naive FastAPI + eager median {median([n.throughput for _, n in rounds]):8.1f} req/s   "
          f"p50 {median([n.percentile(50) for _, n in rounds]):6.2f} ms   p99 {median([n.percentile(99) for _, n in rounds]):6.2f} ms")
    print(f"throughput ratio service/naive: median {median(throughput_ratios):.2f}x "
          f"(rounds: {', '.join(f'{r:.2f}' for r in throughput_ratios)})")
    print(f"p99 ratio service/naive:        median {median(p99_ratios):.2f} "
          f"(rounds: {', '.join(f'{r:.2f}' for r in p99_ratios)})")


if __name__ == "__main__":
    main()
