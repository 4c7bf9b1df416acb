"""Hundreds of per-symbol family members under a memory budget: register N small members (an MLP with 4 MB of
weights each, family-tagged, in production), serve them with SIMPLE_CACHE_SIZE_MB, and cycle POST /v1/forecast
over the symbols with a Zipf-skewed choice (a few symbols are hot, most are cold). Prints the server's resident
memory against the budget plus the process baseline (the server with no member loaded), how often a request
found its member loaded (hit rate, from the load count), and latency p50 / p99 for hits and all requests.

    .venv/bin/python bench/family_bench.py --members 300 --budget-mb 256 --requests 3000
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import psutil
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from prediction_service.registry import ValidationReport, VersionMetadata  # noqa: E402
from prediction_service.registry.writer import ArtifactSource, register_version, set_stage_link  # noqa: E402
from prediction_service.signature import ModelSignature, TensorSpec  # noqa: E402
from tests.support.server import launch  # noqa: E402

SIGNATURE = ModelSignature(inputs=[TensorSpec(name="x", dtype="float32", shape=(-1, 16))],
                           outputs=[TensorSpec(name="y", dtype="float32", shape=(-1, 1))])


def export_member(path: Path) -> Path:
    model = nn.Sequential(nn.Linear(16, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 1)).eval()
    torch.onnx.export(model, (torch.zeros(1, 16),), str(path), input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}}, dynamo=False)
    return path


def build_store(root: Path, members: int) -> list[str]:
    onnx = export_member(root.parent / "member.onnx")
    symbols = [f"S{i:04d}" for i in range(members)]
    for i, symbol in enumerate(symbols):
        name = f"mlp-{symbol.lower()}-1m"
        meta = VersionMetadata(name=name, version="1.0.0", signature=SIGNATURE,
                               tags={"symbol": symbol, "timeframe": "1m", "model_type": "mlp"},
                               validation=ValidationReport(passed=True, kind="smoke"))
        register_version(root, meta, [ArtifactSource(onnx, "onnx")])
        set_stage_link(root, name, "production", "1.0.0")
        if (i + 1) % 50 == 0:
            print(f"registered {i + 1}/{members} members", flush=True)
    return symbols


def rss_of(pid: int) -> int:
    return psutil.Process(pid).memory_info().rss


def loads(metrics: str) -> float:
    return sum(float(v) for v in re.findall(r'^prediction_model_loads_total\{[^}]*result="ok"[^}]*\} (\S+)$', metrics, re.M))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--members", type=int, default=300)
    parser.add_argument("--budget-mb", type=float, default=256.0)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--zipf", type=float, default=1.2, help="Zipf exponent of the symbol choice")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="family-bench-") as tmp:
        store = Path(tmp) / "store"
        store.mkdir()
        symbols = build_store(store, args.members)
        server = launch(store, env={"SIMPLE_CACHE_SIZE_MB": str(args.budget_mb), "SIMPLE_MAX_MODELS_IN_MEMORY":
                                    str(args.members + 10), "AUDIT_ENABLED": "false", "WARMUP_ENABLED": "false"})
        try:
            baseline = rss_of(server.process.pid)
            ranks = np.arange(1, len(symbols) + 1, dtype=float)
            weights = ranks ** -args.zipf
            rng = np.random.default_rng(7)
            order = rng.choice(len(symbols), size=args.requests, p=weights / weights.sum())
            row = [0.1] * 16
            latencies, peak = [], baseline
            with httpx.Client(base_url=server.url, timeout=60) as http:
                loads_before = loads(http.get("/metrics").text)
                for i, index in enumerate(order):
                    started = time.perf_counter()
                    answer = http.post("/v1/forecast", json={"symbol": symbols[index], "timeframe": "1m",
                                                             "model_type": "mlp", "instance": row})
                    latencies.append((time.perf_counter() - started) * 1000)
                    if answer.status_code != 200:
                        raise SystemExit(f"request {i}: {answer.status_code} {answer.text[:200]}")
                    if i % 50 == 0:
                        peak = max(peak, rss_of(server.process.pid))
                peak = max(peak, rss_of(server.process.pid))
                member_loads = loads(http.get("/metrics").text) - loads_before
                memory = http.get("/v1/stats").json()["model_memory"]
        finally:
            server.stop()
    lat = np.array(latencies)
    budget = args.budget_mb * 2**20
    print(f"\n{args.members} members, {args.requests} requests (Zipf {args.zipf}), budget {args.budget_mb:g} MB")
    print(f"server RSS: baseline {baseline / 2**20:.0f} MB, peak {peak / 2**20:.0f} MB "
          f"(budget + baseline {(budget + baseline) / 2**20:.0f} MB: "
          f"{'within' if peak <= budget + baseline else 'OVER'}); models now hold "
          f"{memory['total_bytes'] / 2**20:.0f} MB in {len(memory['by_version'])} versions")
    print(f"hit rate: {1 - member_loads / args.requests:.3f} ({member_loads:.0f} loads for {args.requests} requests)")
    print(f"latency p50 {np.percentile(lat, 50):.2f} ms, p99 {np.percentile(lat, 99):.2f} ms, "
          f"max {lat.max():.1f} ms")


if __name__ == "__main__":
    main()
