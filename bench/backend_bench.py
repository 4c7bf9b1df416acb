"""The service's overhead over a remote backend, same model, same run: the LSTM through
``prediction-service`` (HTTP, SERVING_ADAPTER_TYPE=triton|torchserve) vs the same backend called
directly over HTTP (Triton's v2 REST API, TorchServe's inference API), concurrency 32, loopback.

    python bench/backend_bench.py --backend triton [--seconds 8] [--rounds 2] [--store model_store]
    python bench/backend_bench.py --backend torchserve

Prints throughput, p50 and p99 of each path per round (order alternates) and the median ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from loadgen import median, run_load  # noqa: E402
from serve_bench import ensure_store, process  # noqa: E402

from prediction_service.registry import ModelKey  # noqa: E402
from tests.support.server import free_port  # noqa: E402

KEY = ModelKey("lstm-price", "1.0.0")


def start_backend(kind: str, work: Path):
    if kind == "triton":
        from prediction_service.commands.servers.triton import LocalTriton

        server = LocalTriton(work / "triton-repo").start()
        env = {"SERVING_ADAPTER_TYPE": "triton", "TRITON_SERVER_URL": server.http_url,
               "TRITON_SERVER_GRPC_URL": server.grpc_url, "TRITON_MODEL_REPOSITORY": str(server.model_repository)}
        return server, env
    from prediction_service.commands.servers.torchserve import LocalTorchServe

    server = LocalTorchServe(work / "ts-store", work / "ts-work", token_auth=False).start()
    env = {"SERVING_ADAPTER_TYPE": "torchserve", "TORCHSERVE_INFERENCE_URL": server.inference_url,
           "TORCHSERVE_MANAGEMENT_URL": server.management_url, "TORCHSERVE_MODEL_STORE": str(server.model_store)}
    return server, env


def direct_request(kind: str, server, window: list) -> tuple[str, dict]:
    if kind == "triton":
        from prediction_service.packaging.triton_repository import entry_name

        url = f"http://{server.http_url}/v2/models/{entry_name(KEY)}/infer"
        flat = np.asarray(window, dtype=np.float32).ravel().tolist()
        return url, {"inputs": [{"name": "ohlcv", "shape": [1, 60, 5], "datatype": "FP32", "data": flat}]}
    from prediction_service.packaging.torchserve_mar import served_model_name

    return f"{server.inference_url}/predictions/{served_model_name(KEY)}", {"inputs": {"ohlcv": [window]}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=["triton", "torchserve"], required=True)
    parser.add_argument("--store", type=Path)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    store = ensure_store(args.store)
    work = Path(tempfile.mkdtemp(prefix=f"bench-{args.backend}-"))
    window = np.random.default_rng(0).normal(1.0, 0.01, size=(60, 5)).astype(np.float32).round(5).tolist()

    backend, env = start_backend(args.backend, work)
    port = free_port()
    service_url = f"http://127.0.0.1:{port}/v1/models/lstm-price/predict"
    try:
        with process([sys.executable, "-m", "prediction_service", "serve", "--store", str(store), "--port", str(port),
                      "--log-level", "warning"], f"http://127.0.0.1:{port}/health/ready", env=env):
            direct_url, direct_payload = direct_request(args.backend, backend, window)
            rounds = []
            for round_no in range(args.rounds):
                order = [("service", service_url, {"instance": window}), ("direct", direct_url, direct_payload)]
                if round_no % 2:
                    order.reverse()
                measured = {}
                for label, url, payload in order:
                    measured[label] = asyncio.run(run_load(url, payload, concurrency=args.concurrency,
                                                           seconds=args.seconds,
                                                           label=f"{label} {args.backend} (round {round_no + 1})"))
                    print(measured[label].line(), flush=True)
                rounds.append((measured["service"], measured["direct"]))
    finally:
        backend.stop()
        shutil.rmtree(work, ignore_errors=True)

    print(f"\nLSTM 60x5 on {args.backend}, concurrency {args.concurrency}, {args.seconds:.0f} s per phase, "
          f"{args.rounds} rounds, {os.cpu_count()} cores")
    print(f"service/direct throughput: median {median([s.throughput / d.throughput for s, d in rounds]):.2f}   "
          f"p50: {median([s.percentile(50) / d.percentile(50) for s, d in rounds]):.2f}   "
          f"p99: {median([s.percentile(99) / d.percentile(99) for s, d in rounds]):.2f}")


if __name__ == "__main__":
    main()
