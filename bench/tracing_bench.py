"""What tracing costs per request: off (no OTEL_EXPORTER_OTLP_ENDPOINT), on, and on for callers that do not
sample; and, with --baseline DIR, the same app from a checkout without tracing (what "off" must match).

    python bench/tracing_bench.py [--requests 20000] [--rounds 3] [--store DIR] [--baseline DIR]

Like bench/app_cost.py (whose driver it uses): the service's ASGI app in process, 32 concurrent tasks, /v1 JSON
predictions of the demo's lstm-price, CPU microseconds per request over every thread (the span processor's
export thread and the audit writer included). Each variant runs in a fresh process, in alternating order per
round; traced variants send a ``traceparent`` (sampled, or not) and export over OTLP/HTTP to a receiver this
bench runs in its own process (tests/support/otlp.py), so decoding the exports is not counted. --baseline is a
checkout of the code before tracing (``git worktree add /tmp/base <commit>``), served by the same driver.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

MODEL = "lstm-price"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
VARIANTS = {"tracing off": None, "tracing on, sampled": "01", "tracing on, caller not sampled": "00"}
BASELINE = "before tracing (--baseline)"
TREE_ENV = "TRACING_BENCH_TREE"


def _run_variant(variant: str, store: Path, requests: int, endpoint: str) -> None:
    """In the child process: one variant, printed as JSON on the last line."""
    import app_cost  # it puts this checkout first on sys.path: the tree measured goes before it

    tree = os.environ.get(TREE_ENV)
    if tree:
        sys.path.insert(0, tree)
    import prediction_service

    served_from = str(Path(prediction_service.__file__).resolve().parents[1])
    flags = VARIANTS.get(variant)
    if flags is not None:
        os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = endpoint
    else:
        os.environ.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    headers = [(b"traceparent", f"00-{TRACE_ID}-00f067aa0ba902b7-{flags}".encode())] if flags else []
    with tempfile.TemporaryDirectory(prefix="tracing-bench-") as work:
        app, version = app_cost._app("service v1", store, Path(work))
        batch = next(iter(version.signature.synthetic_inputs(1).values()))
        body, path = app_cost._body_and_path("service v1", batch)
        us, bad = asyncio.run(_drive(app, body, path, requests, headers))
    print(json.dumps({"us": us, "bad": bad, "tree": served_from}))


async def _drive(app, body: bytes, path: str, requests: int, extra: list[tuple[bytes, bytes]]):
    import app_cost

    if not extra:
        return await app_cost._drive(app, body, path, requests)
    # app_cost's driver with the trace context header added to every request's scope
    headers = [(b"host", b"127.0.0.1"), (b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode()), *extra]
    return await app_cost._drive(_WithHeaders(app, headers), body, path, requests)


class _WithHeaders:
    """The app, with every request's headers replaced by ``headers`` (the trace context added)."""

    def __init__(self, app, headers):
        self.app, self.headers, self.router = app, headers, app.router

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            scope = {**scope, "headers": self.headers}
        await self.app(scope, receive, send)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--store", type=Path, help="registry with lstm-price (default: build the demo registry)")
    parser.add_argument("--baseline", type=Path, help="a checkout without tracing, measured with tracing off")
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--endpoint", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        _run_variant(args.variant, args.store, args.requests, args.endpoint)
        return
    from loadgen import median
    from serve_bench import ensure_store
    from tests.support.otlp import OtlpReceiver

    store = ensure_store(args.store)
    variants = ([BASELINE] if args.baseline else []) + list(VARIANTS)
    results: dict[str, list[float]] = {variant: [] for variant in variants}
    with OtlpReceiver() as receiver:
        for round_no in range(args.rounds):
            print(f"round {round_no + 1}/{args.rounds} (1-min load average {os.getloadavg()[0]:.2f})", flush=True)
            for variant in variants if round_no % 2 == 0 else reversed(variants):
                tree = args.baseline.resolve() if variant == BASELINE else REPO
                command = [sys.executable, __file__, "--variant",
                           "tracing off" if variant == BASELINE else variant, "--store", str(store),
                           "--requests", str(args.requests), "--endpoint", receiver.url]
                # the bench's modules (app_cost, loadgen) from here; the service from the tree measured
                env = {**os.environ, TREE_ENV: str(tree), "PYTHONPATH": str(tree)}
                out = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env, cwd=tree)
                if out.returncode != 0:
                    raise SystemExit(f"{variant} failed:\n{out.stderr[-3000:]}")
                figures = json.loads(out.stdout.strip().splitlines()[-1])
                if Path(figures["tree"]) != tree:
                    raise SystemExit(f"{variant} served {figures['tree']}, not {tree}")
                flag = f"   !! {figures['bad']} non-200" if figures["bad"] else ""
                results[variant].append(figures["us"])
                print(f"  {variant:<34} {figures['us']:7.1f} us CPU / request{flag}", flush=True)
        exported = len({span.span_id for span in receiver.received()})
    reference = median(results[variants[0]])
    print(f"\n{'/v1 lstm-price (in process)':<36}{'CPU us/req':>11}{'x first':>9}   (medians of {args.rounds} rounds; "
          f"{exported} spans received)")
    for variant, runs in results.items():
        print(f"{variant:<36}{median(runs):11.1f}{median(runs) / reference:9.2f}")


if __name__ == "__main__":
    main()
