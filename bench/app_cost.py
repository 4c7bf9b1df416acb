"""What the application costs per request without an HTTP server: the floor of the front door's Python work.

    python bench/app_cost.py [--requests 20000] [--rounds 3] [--store DIR]

bench/cpu_per_request.py prices a door through uvicorn and sockets. This drives the same ASGI apps in
process instead (32 concurrent tasks, each request a prebuilt ASGI scope whose body arrives in one
message; the response is discarded), so what is left is the app's own work: parsing, validation,
admission, batching, ONNX Runtime, observers, encoding. Each variant runs in a fresh process:

- lean: bench/lean_server.py's Starlette app (orjson + ORT micro-batcher, no features),
- service v1: the service's app, every feature on (metrics, audit log on a fresh file, provenance, A/B lookup),
- service v1, audit off (AUDIT_ENABLED=false), to price the audit log,
- service OIP JSON: /v2/models/{name}/infer with a JSON tensor.

Prints CPU microseconds per request (all threads: the audit writer and ORT included), medians of
--rounds, and the ratios to lean. Subtracting these from bench/cpu_per_request.py's figures gives what
uvicorn and the sockets cost per request, the same for every app.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

MODEL = "lstm-price"
CONCURRENCY = 32
VARIANTS = ("lean", "service v1", "service v1, audit off", "service OIP JSON")


def _body_and_path(variant: str, batch) -> tuple[bytes, str]:
    import orjson

    if variant == "lean":
        return orjson.dumps({"instance": batch[0].tolist()}), "/predict"
    if variant == "service OIP JSON":
        return orjson.dumps({"inputs": [{"name": "ohlcv", "shape": list(batch.shape), "datatype": "FP32",
                                         "data": batch.ravel().tolist()}]}), f"/v2/models/{MODEL}/infer"
    return orjson.dumps({"instance": batch[0].tolist()}), f"/v1/models/{MODEL}/predict"


def _app(variant: str, store: Path, work: Path):
    from prediction_service.registry import RegistryReader

    version = RegistryReader(store).resolve(MODEL, stage="production")
    if variant == "lean":
        os.environ["LEAN_MODEL"] = str(version.artifact_path(version.artifact(("onnx",), "fp32")))
        import lean_server

        return lean_server.make_app(), version
    from prediction_service.api.app import create_app
    from prediction_service.settings import Settings

    os.environ.update({"MODEL_STORE": str(store), "AUDIT_DB_PATH": str(work / "audit.sqlite3")})
    if variant == "service v1, audit off":
        os.environ["AUDIT_ENABLED"] = "false"
    return create_app(Settings()), version


async def asgi_post(app, path: str, body: bytes) -> int:
    """One JSON POST straight into the ASGI app (no server, no client library): its status."""
    headers = [(b"host", b"127.0.0.1"), (b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode())]
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "", "query_string": b"",
             "headers": headers, "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000), "state": {}}
    delivered = False
    status = 0

    async def receive():
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # http.disconnect never comes: the client stays

    async def send(message):
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


async def _drive(app, body: bytes, path: str, requests: int) -> tuple[float, int]:
    statuses: list[int] = []

    async def one() -> None:
        statuses.append(await asgi_post(app, path, body))

    async def worker(count: int) -> None:
        for _ in range(count):
            await one()

    async with app.router.lifespan_context(app):
        await asyncio.gather(*(worker(100) for _ in range(CONCURRENCY)))  # warm-up
        statuses.clear()
        started = time.process_time()
        await asyncio.gather(*(worker(requests // CONCURRENCY) for _ in range(CONCURRENCY)))
        spent = time.process_time() - started
    bad = sum(1 for status in statuses if status != 200)
    return spent / len(statuses) * 1e6, bad


def _run_variant(variant: str, store: Path, requests: int) -> None:
    """In the child process: one variant, printed as JSON on the last line."""
    with tempfile.TemporaryDirectory(prefix="app-cost-") as work:
        app, version = _app(variant, store, Path(work))
        batch = next(iter(version.signature.synthetic_inputs(1).values()))
        body, path = _body_and_path(variant, batch)
        us, bad = asyncio.run(_drive(app, body, path, requests))
    print(json.dumps({"us": us, "bad": bad}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=40000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--store", type=Path, help="registry with lstm-price (default: build the demo registry)")
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        _run_variant(args.variant, args.store, args.requests)
        return
    from loadgen import median
    from serve_bench import ensure_store

    store = ensure_store(args.store)
    results: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
    for round_no in range(args.rounds):
        print(f"round {round_no + 1}/{args.rounds} (1-min load average {os.getloadavg()[0]:.2f})", flush=True)
        for variant in VARIANTS if round_no % 2 == 0 else reversed(VARIANTS):
            out = subprocess.run([sys.executable, __file__, "--variant", variant, "--store", str(store),
                                  "--requests", str(args.requests)], capture_output=True, text=True, timeout=900,
                                 env={**os.environ, "PYTHONPATH": str(REPO)})
            if out.returncode != 0:
                raise SystemExit(f"{variant} failed:\n{out.stderr[-3000:]}")
            figures = json.loads(out.stdout.strip().splitlines()[-1])
            flag = f"   !! {figures['bad']} non-200" if figures["bad"] else ""
            results[variant].append(figures["us"])
            print(f"  {variant:<34} {figures['us']:7.1f} us CPU / request{flag}", flush=True)
    lean = median(results["lean"])
    print(f"\n{'app (in process, no HTTP server)':<36}{'CPU us/req':>11}{'x lean':>8}   (medians of {args.rounds} rounds)")
    for variant, runs in results.items():
        print(f"{variant:<36}{median(runs):11.1f}{median(runs) / lean:8.2f}")


if __name__ == "__main__":
    main()
