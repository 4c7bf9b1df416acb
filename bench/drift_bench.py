"""What input drift monitoring costs per request: DRIFT_ENABLED=false against on.

    python bench/drift_bench.py [--requests 20000] [--store DIR]

Like bench/app_cost.py (whose app builder it uses): the service's ASGI app in process, 32 concurrent tasks, /v1
JSON predictions of the demo's lstm-price ([1, 60, 5]: 60 feature rows of 5 features per request), CPU
microseconds per request over every thread. The requests cycle through 64 different random windows, so the
features are continuous and the refresh runs its KS tests too. "on" learns its reference from the first 500
requests (during the warm-up) and refreshes PSI and KS every second (30 times as often as the default
DRIFT_INTERVAL_SECONDS), so the thread work of the refresh is counted at more than its usual rate; "no refresh"
prices the observer alone (the append to the window on the event loop). Each variant
runs once, in a fresh process; the ratio is taken within the run.
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
from app_cost import asgi_post  # noqa: E402  one ASGI request, as app_cost measures it

MODEL = "lstm-price"
CONCURRENCY = 32
BODIES = 64
VARIANTS = {
    "drift off": {"DRIFT_ENABLED": "false"},
    "drift on, no refresh in the run": {"DRIFT_ENABLED": "true", "DRIFT_INTERVAL_SECONDS": "3600"},
    "drift on, refresh every 1 s": {"DRIFT_ENABLED": "true", "DRIFT_INTERVAL_SECONDS": "1",
                                    "DRIFT_REFERENCE_REQUESTS": "500"},
}


def _run_variant(variant: str, store: Path, requests: int) -> None:
    """In the child process: one variant, printed as JSON on the last line."""
    import numpy as np
    import orjson

    import app_cost

    os.environ.update(VARIANTS[variant])
    with tempfile.TemporaryDirectory(prefix="drift-bench-") as work:
        app, version = app_cost._app("service v1", store, Path(work))
        spec = version.signature.inputs[0]
        rng = np.random.default_rng(0)
        bodies = [orjson.dumps({"instance": rng.normal(0, 1, spec.shape[1:]).astype(np.float32).tolist()})
                  for _ in range(BODIES)]
        us, bad, features = asyncio.run(_drive(app, bodies, f"/v1/models/{MODEL}/predict", requests))
    print(json.dumps({"us": us, "bad": bad, "features": features}))


async def _drive(app, bodies: list[bytes], path: str, requests: int) -> tuple[float, int, int]:
    statuses: list[int] = []

    async def one(body: bytes) -> None:
        statuses.append(await asgi_post(app, path, body))

    async def worker(start: int, count: int) -> None:
        for i in range(count):
            await one(bodies[(start + i) % len(bodies)])

    async with app.router.lifespan_context(app):
        await asyncio.gather(*(worker(w, 100) for w in range(CONCURRENCY)))  # warm-up (and the reference)
        await asyncio.sleep(1.5)  # one refresh: the reference is learned before the measured part
        statuses.clear()
        started = time.process_time()
        await asyncio.gather(*(worker(w, requests // CONCURRENCY) for w in range(CONCURRENCY)))
        spent = time.process_time() - started
        drift = app.state.service.drift
        features = 0
        if drift is not None:  # what the refresh computed: proof the "on" run did the work it is charged for
            report = await drift.report(MODEL)
            features = sum(len(v.features) for v in report.versions)
    bad = sum(1 for status in statuses if status != 200)
    return spent / len(statuses) * 1e6, bad, features


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--store", type=Path, help="registry with lstm-price (default: build the demo registry)")
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        _run_variant(args.variant, args.store, args.requests)
        return
    from serve_bench import ensure_store

    store = ensure_store(args.store)
    print(f"1-min load average {os.getloadavg()[0]:.2f}", flush=True)
    results = {}
    for variant in VARIANTS:
        out = subprocess.run([sys.executable, __file__, "--variant", variant, "--store", str(store),
                              "--requests", str(args.requests)], capture_output=True, text=True, timeout=900)
        if out.returncode != 0:
            raise SystemExit(f"{variant} failed:\n{out.stderr[-3000:]}")
        results[variant] = json.loads(out.stdout.strip().splitlines()[-1])
    off = results["drift off"]["us"]
    print(f"\n{'/v1 lstm-price (in process, one run)':<36}{'CPU us/req':>11}{'x off':>7}{'features':>10}")
    for variant, figures in results.items():
        flag = f"   !! {figures['bad']} non-200" if figures["bad"] else ""
        print(f"{variant:<36}{figures['us']:11.1f}{figures['us'] / off:7.2f}{figures['features']:10d}{flag}")


if __name__ == "__main__":
    main()
