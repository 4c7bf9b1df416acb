"""Priority lanes: what a live strategy waits while a research flood saturates the same model.

    python bench/priority_bench.py [--seconds 10] [--store DIR]

One run, on 127.0.0.1, the demo's lstm-price served by one worker (default settings: BATCH_PRIORITY_LEVELS=3,
BATCH_DEFAULT_PRIORITY=1, two run slots, batches of up to 32 rows):

- live alone ("quiet"): one closed-loop client (c=1: a strategy waiting on each answer), one 60-bar window per
  /v1 request and no priority named (the default: 1, the highest);
- flood alone: 16 connections, each sending 32-row requests at priority 3 in a closed loop, as a backfill
  sends bulk tensors: Open Inference Protocol REST with binary tensor data (``parameters.priority``; /v1 JSON
  bodies of 32 windows, ~190 KB each, would meet LIMIT_LARGE_JSON_BYTES_PER_SECOND's 429s first);
- live + flood, lanes: both at once, the live client's latency and the flood's throughput;
- live + flood, one lane: the same, the flood at priority 1 too (one FIFO queue, as before priority lanes).

The flood runs in a process of its own (aiohttp), so it never delays the live client's event loop; the live
client measures only while the flood is running (after its warm-up). Every figure is one run on a machine
whose cores the clients share with the server. Prints p50/p99 and throughput, and the ratios the targets are
set on: live p50 within 1.5x of quiet and p99 within 2x; the flood keeps at least 70 % of its solo throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import aiohttp  # noqa: E402
import numpy as np  # noqa: E402
import orjson  # noqa: E402

from loadgen import LoadResult, client_gc_paused, run_load  # noqa: E402
from serve_bench import ensure_store  # noqa: E402
from tests.support.server import launch  # noqa: E402

MODEL = "lstm-price"
FLOOD_CONNECTIONS, FLOOD_ROWS, FLOOD_PRIORITY = 16, 32, 3
FLOOD_WARMUP_S = 2.0
HEADER_LENGTH = "Inference-Header-Content-Length"
TARGETS = {"p50": 1.5, "p99": 2.0, "flood": 0.70}


def oip_binary(name: str, batch: np.ndarray, priority: int) -> tuple[bytes, dict[str, str]]:
    """An OIP REST infer request with ``batch`` as binary tensor data, and its headers."""
    raw = np.ascontiguousarray(batch, dtype=np.float32).tobytes()
    header = orjson.dumps({"inputs": [{"name": name, "datatype": "FP32", "shape": list(batch.shape),
                                       "parameters": {"binary_data_size": len(raw)}}],
                           "parameters": {"priority": priority}})
    return header + raw, {"content-type": "application/octet-stream", HEADER_LENGTH: str(len(header))}


def flood(url: str, body: bytes, headers: dict[str, str], seconds: float, warm: mp.Event, out: mp.Queue) -> None:
    """In its own process: FLOOD_CONNECTIONS closed loops; ``warm`` is set once they have run
    FLOOD_WARMUP_S, then they are counted for ``seconds``."""

    async def main() -> LoadResult:
        connector = aiohttp.TCPConnector(limit=FLOOD_CONNECTIONS)
        result = LoadResult("flood", seconds)
        async with aiohttp.ClientSession(connector=connector) as session:
            measure_from = time.monotonic() + FLOOD_WARMUP_S
            stop_at = measure_from + seconds

            async def one_loop() -> None:
                while (began := time.monotonic()) < stop_at:
                    started = time.perf_counter()
                    async with session.post(url, data=body, headers=headers) as response:
                        await response.read()
                    if began >= measure_from:  # requests sent in the measured window count
                        result.statuses[response.status] += 1
                        if response.status == 200:
                            result.latencies_ms.append((time.perf_counter() - started) * 1000.0)

            async def signal() -> None:
                await asyncio.sleep(FLOOD_WARMUP_S)
                warm.set()

            with client_gc_paused():
                await asyncio.gather(signal(), *(one_loop() for _ in range(FLOOD_CONNECTIONS)))
        return result

    out.put(asyncio.run(main()))


def live(url: str, body: dict, seconds: float, think_ms: float = 0.0) -> LoadResult:
    return asyncio.run(run_load(url, body, concurrency=1, seconds=seconds, warmup_seconds=0.5, label="live",
                                think_ms=think_ms))


def with_flood(live_url: str, live_body: dict | None, flood_url: str, flood_request: tuple[bytes, dict],
               seconds: float, think_ms: float = 0.0) -> tuple[LoadResult | None, LoadResult]:
    """The flood for ``seconds`` (after its warm-up), and the live client meanwhile (None: no live client)."""
    context = mp.get_context("spawn")
    warm, out = context.Event(), context.Queue()
    process = context.Process(target=flood, args=(flood_url, *flood_request, seconds + 1.0, warm, out))
    process.start()
    try:
        if not warm.wait(60):
            raise RuntimeError("the flood did not start")
        measured = live(live_url, live_body, seconds, think_ms) if live_body is not None else None
        flooded = out.get(timeout=seconds + 60)
    finally:
        process.join(30)
        if process.is_alive():
            process.terminate()
    return measured, flooded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per figure")
    parser.add_argument("--store", type=Path, help="registry with lstm-price (default: build the demo registry)")
    parser.add_argument("--think-ms", type=float, default=0.0,
                        help="the live client waits this long after each answer (0: sends again at once); "
                             "a closed loop at full speed takes more of the shared cores the faster it is served")
    args = parser.parse_args()
    from prediction_service.registry import RegistryReader

    store = ensure_store(args.store)
    version = RegistryReader(store).resolve(MODEL, stage="production")
    name = version.signature.inputs[0].name
    window = version.signature.synthetic_inputs(1)[name][0]
    live_body = {"instance": window.tolist()}
    rows = np.repeat(window[None], FLOOD_ROWS, axis=0)
    low, same = oip_binary(name, rows, FLOOD_PRIORITY), oip_binary(name, rows, 1)

    audit = Path(tempfile.mkdtemp(prefix="priority-bench-")) / "audit.sqlite3"
    server = launch(store, env={"AUDIT_DB_PATH": str(audit)}, workers=1)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the server on the way out
    try:
        url, flood_url = f"{server.url}/v1/models/{MODEL}/predict", f"{server.url}/v2/models/{MODEL}/infer"
        pace = f", the live client waiting {args.think_ms:g} ms after each answer" if args.think_ms else ""
        print(f"{MODEL}, 1 worker, {args.seconds:g} s per figure{pace}, one run; {os.cpu_count()} cores shared by the "
              f"clients and the server (1-min load average {os.getloadavg()[0]:.2f})", flush=True)
        quiet = live(url, live_body, args.seconds, args.think_ms)
        print(f"  {quiet.line()}", flush=True)
        _, solo = with_flood(url, None, flood_url, low, args.seconds)
        print(f"  {solo.line()}", flush=True)
        laned_live, laned_flood = with_flood(url, live_body, flood_url, low, args.seconds, args.think_ms)
        print(f"  {laned_live.line()}\n  {laned_flood.line()}", flush=True)
        fifo_live, fifo_flood = with_flood(url, live_body, flood_url, same, args.seconds, args.think_ms)
        print(f"  {fifo_live.line()}\n  {fifo_flood.line()}", flush=True)
    finally:
        server.stop()
        shutil.rmtree(audit.parent, ignore_errors=True)

    def row(label: str, result: LoadResult, flooded: LoadResult | None) -> str:
        p50, p99 = result.percentile(50), result.percentile(99)
        cells = f"{label:<30} {p50:9.2f} {p99:9.2f} {p50 / quiet.percentile(50):8.2f} {p99 / quiet.percentile(99):8.2f}"
        if flooded is None:
            return cells
        return f"{cells} {flooded.throughput * FLOOD_ROWS:12.0f} {flooded.throughput / solo.throughput:9.2f}"

    print(f"\n{'live client (c=1)':<30} {'p50 ms':>9} {'p99 ms':>9} {'x p50':>8} {'x p99':>8} "
          f"{'flood rows/s':>12} {'x solo':>9}")
    print(row("quiet (no flood)", quiet, None))
    print(f"{'flood alone (priority 3)':<30} {'':>9} {'':>9} {'':>8} {'':>8} "
          f"{solo.throughput * FLOOD_ROWS:12.0f} {1.0:9.2f}")
    print(row("flood at priority 3 (lanes)", laned_live, laned_flood))
    print(row("flood at priority 1 (one lane)", fifo_live, fifo_flood))
    p50_x = laned_live.percentile(50) / quiet.percentile(50)
    p99_x = laned_live.percentile(99) / quiet.percentile(99)
    kept = laned_flood.throughput / solo.throughput
    verdict = lambda ok: "met" if ok else "MISSED"  # noqa: E731
    print(f"\ntargets: live p50 x{p50_x:.2f} (<= x{TARGETS['p50']}: {verdict(p50_x <= TARGETS['p50'])}), "
          f"p99 x{p99_x:.2f} (<= x{TARGETS['p99']}: {verdict(p99_x <= TARGETS['p99'])}), "
          f"flood x{kept:.2f} of solo (>= x{TARGETS['flood']}: {verdict(kept >= TARGETS['flood'])})")
    errors = {label: sum(n for s, n in r.statuses.items() if s != 200)
              for label, r in (("quiet", quiet), ("flood alone", solo), ("lanes live", laned_live),
                               ("lanes flood", laned_flood), ("one lane live", fifo_live),
                               ("one lane flood", fifo_flood))}
    if any(errors.values()):
        print(f"!! non-200 answers: {errors}")


if __name__ == "__main__":
    main()
