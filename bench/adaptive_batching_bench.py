"""Adaptive batching: what a lone request waits, and whether throughput under load holds.

    python bench/adaptive_batching_bench.py [--seconds 5] [--store DIR]

One run, all on loopback: the lean server (bench/lean_server.py: Starlette + orjson + ONNX Runtime), then
the service with BATCH_ADAPTIVE=false (a forming batch waits up to BATCH_MAX_QUEUE_DELAY_MS, 2 ms, for
company) and with BATCH_ADAPTIVE=true (a request that finds a run slot free runs at once), each on the
demo's lstm-price, one worker. Per target: one closed-loop client (c=1: a strategy waiting on each answer)
p50/p99, and 32 connections' throughput (aiohttp, bench/loadgen.py). Prints the figures and the ratios to
the lean server measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from loadgen import run_load  # noqa: E402
from serve_bench import ensure_store, process  # noqa: E402
from tests.support.server import free_port, launch  # noqa: E402

MODEL = "lstm-price"


def measure(url: str, payload: dict, seconds: float) -> tuple[float, float, float]:
    alone = asyncio.run(run_load(url, payload, concurrency=1, seconds=seconds, warmup_seconds=1.0))
    loaded = asyncio.run(run_load(url, payload, concurrency=32, seconds=seconds, warmup_seconds=1.0))
    return alone.percentile(50), alone.percentile(99), loaded.throughput


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--store", type=Path, help="registry with lstm-price (default: build the demo registry)")
    args = parser.parse_args()
    from prediction_service.registry import RegistryReader

    store = ensure_store(args.store)
    version = RegistryReader(store).resolve(MODEL, stage="production")
    window = version.signature.synthetic_inputs(1)[version.signature.inputs[0].name][0].tolist()
    rows: list[tuple[str, float, float, float]] = []
    with ExitStack() as stack:
        lean_port = free_port()
        model = version.artifact_path(version.artifact(("onnx",), "fp32"))
        stack.enter_context(process([sys.executable, str(REPO / "bench" / "lean_server.py"), "--model", str(model),
                                     "--port", str(lean_port), "--workers", "1"],
                                    f"http://127.0.0.1:{lean_port}/predict"))
        rows.append(("lean", *measure(f"http://127.0.0.1:{lean_port}/predict", {"instance": window}, args.seconds)))
        stack.close()
    for adaptive in ("false", "true"):
        audit = Path(tempfile.mkdtemp(prefix="adaptive-bench-")) / "audit.sqlite3"  # a fresh audit file per run
        service = launch(store, env={"BATCH_ADAPTIVE": adaptive, "AUDIT_DB_PATH": str(audit)}, workers=1)
        try:
            url = f"{service.url}/v1/models/{MODEL}/predict"
            rows.append((f"service, adaptive {adaptive}", *measure(url, {"instance": window}, args.seconds)))
        finally:
            service.stop()
            shutil.rmtree(audit.parent, ignore_errors=True)
    lean_p50, lean_rps = rows[0][1], rows[0][3]
    print(f"\n{MODEL}, 1 worker, {args.seconds:g} s per figure, one run (2 cores shared by client and server)")
    print(f"{'target':28} {'c=1 p50 ms':>10} {'p99 ms':>8} {'x lean p50':>10} {'c=32 rps':>9} {'x lean rps':>10}")
    for label, p50, p99, rps in rows:
        print(f"{label:28} {p50:10.2f} {p99:8.2f} {p50 / lean_p50:10.2f} {rps:9.0f} {rps / lean_rps:10.2f}")


if __name__ == "__main__":
    main()
