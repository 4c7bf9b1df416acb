"""The service's front doors vs a lean Python server and a real tritonserver: same ONNX LSTM, same run.

    python bench/front_door_bench.py [--seconds 10] [--warmup 2] [--rounds 3] [--workers 1,2] [--streams N]
                                     [--shapes 32x1,1x1,8x32]
    python bench/front_door_bench.py --overload [--seconds 10] [--warmup 2] [--rounds 3] [--workers 1,2]
    quick check:  --seconds 2 --rounds 1 --workers 1   /   --overload --seconds 3
    --store DIR serves a registry that has lstm-price (default: the demo registry, built in a temp dir)

Default mode: the demo registry's lstm-price, [rows, 60, 5] float32 per request, served by
(a) bench/lean_server.py (Starlette + orjson + ONNX Runtime micro-batcher, no features) and its gRPC twin
    bench/lean_grpc_server.py (grpc.aio ModelInfer, same batcher): what Python costs at least, per protocol,
(b) tritonserver (LocalTriton + the project's config, dynamic batching up to 32; HTTP OIP JSON and gRPC;
    started once, measured with the first worker count, compared with every count),
(c) the service: REST /v1 JSON, OIP REST JSON, OIP REST binary, OIP gRPC unary, OIP gRPC streaming,
with each worker count of --workers (lean and service). Every target's answer is checked against the lean
server's before any load. Then, per round (order reversed every other round), each target gets each load
shape of --shapes (CONCURRENCYxROWS: 32x1 many strategies at once, one row each; 1x1 one strategy waiting on
each answer, the latency a desk feels; 8x32 bulk requests of 32 rows) for --seconds after --warmup seconds:
HTTP from ``wrk -t1 -c<concurrency> --latency`` (Debian:
``apt-get install wrk``), gRPC from tritonclient.grpc.aio in a closed loop (unary: one channel, so one
connection, per worker, as SO_REUSEPORT spreads connections and not calls; streaming: 32 requests in
flight over --streams streams, default one per worker). Prints per-round figures, the medians of the
rounds per shape (rps counts 2xx only, rows/s = rps x rows; any non-2xx or error is flagged with !!) and the
ratios of the medians: service/lean, service/Triton.

--overload: REST /v1 JSON at 64 connections against the service with BATCH_MAX_QUEUE_SIZE=8
LIMIT_MAX_IN_FLIGHT=16 and against the service with default limits (both running, alternating): goodput
(2xx/s), rejection (429/503) latency p50/p99 and accepted (2xx) p99, from an aiohttp closed loop that keeps
every request's status and latency (wrk cannot split latency by status). The client is one Python process
on the same cores: its own event-loop delay is part of every latency it reports.

Load generators and servers share this machine's cores: the 1-min load average is printed before and
after. Every process started here is stopped on exit, Ctrl-C and errors. Helpers: bench/front_door_load.py.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import orjson
import tritonclient.http.aio as httpclient

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from front_door_load import Figures, HttpTarget, Opener, grpc_openers, overload_round, run_grpc, run_wrk  # noqa: E402
from loadgen import median  # noqa: E402
from serve_bench import ensure_store, process, stop_process  # noqa: E402

from prediction_service.commands.servers.triton import LocalTriton  # noqa: E402
from prediction_service.packaging.triton_config import TritonConfigOptions  # noqa: E402
from prediction_service.registry import ModelRegistry, ModelVersion  # noqa: E402
from tests.support.oip import publish, wait_grpc_ready  # noqa: E402
from tests.support.server import free_port, launch  # noqa: E402

MODEL, OVERLOAD_CONNECTIONS = "lstm-price", 64
DEFAULT_SHAPES = "32x1,1x1,8x32"
LOOP = asyncio.Runner()
"""One event loop for every async step: gRPC's asyncio channels keep callbacks on the loop they first ran on,
and a loop per step leaves them firing on closed loops."""
OVERLOAD_CONFIGS = {"default limits": {}, "queue 8, in-flight 16": {"BATCH_MAX_QUEUE_SIZE": "8",
                                                                    "LIMIT_MAX_IN_FLIGHT": "16"}}
HEADER_LENGTH = "Inference-Header-Content-Length"
TRITON = 0  # the worker-count key of tritonserver's figures (measured once, compared with every count)
RATIOS = [("service REST v1 JSON", "lean"), ("service REST v1 JSON", "Triton HTTP JSON"),
          ("service OIP REST JSON", "Triton HTTP JSON"), ("service OIP gRPC unary", "Triton gRPC"),
          ("service OIP gRPC stream", "Triton gRPC"), ("service OIP gRPC unary", "lean gRPC unary"),
          ("lean gRPC unary", "Triton gRPC"), ("lean", "Triton HTTP JSON")]


@dataclass(frozen=True)
class Shape:
    """A load: ``concurrency`` requests in flight, ``rows`` rows each."""

    concurrency: int
    rows: int

    @classmethod
    def parse(cls, text: str) -> "Shape":
        concurrency, rows = (int(part) for part in text.lower().split("x"))
        if not (1 <= concurrency <= 256 and 1 <= rows <= 32):
            raise ValueError(f"shape {text}: concurrency 1..256, rows 1..32 (Triton's max batch)")
        return cls(concurrency, rows)

    @property
    def name(self) -> str:
        return f"c{self.concurrency} x{self.rows} row{'s' if self.rows > 1 else ''}"


@dataclass
class Table:
    rounds: dict[tuple[str, int, Shape], list[Figures]] = field(default_factory=dict)

    def add(self, label: str, workers: int, shape: Shape, figures: Figures) -> None:
        self.rounds.setdefault((label, workers, shape), []).append(figures)
        flag = f"   !! {figures.bad} NON-2XX / ERRORS" if figures.bad else ""
        print(f"  {label:<24} w{workers or '-'} {shape.name:<12} {figures.rps:8.1f} req/s  "
              f"p50 {figures.p50:7.2f} ms  p99 {figures.p99:7.2f} ms{flag}", flush=True)

    def median(self, label: str, workers: int, shape: Shape) -> Figures | None:
        runs = self.rounds.get((label, workers, shape)) or self.rounds.get((label, TRITON, shape))
        if not runs:
            return None
        return Figures(median([r.rps for r in runs]), median([r.p50 for r in runs]),
                       median([r.p99 for r in runs]), sum(r.bad for r in runs))


def http_targets(lean: str, service: str, triton: str | None, version: ModelVersion,
                 batch: np.ndarray) -> list[HttpTarget]:
    name, output = version.signature.inputs[0].name, version.signature.outputs[0].name
    json_headers = {"Content-Type": "application/json"}
    one = len(batch) == 1
    v1_body = orjson.dumps({"instance": batch[0].tolist()} if one else {"instances": batch.tolist()})
    lean_key, v1_key = ("prediction", "predictions") if one else ("predictions", "predictions")
    oip_body = orjson.dumps({"inputs": [{"name": name, "shape": list(batch.shape), "datatype": "FP32",
                                         "data": batch.ravel().tolist()}]})
    tensor = httpclient.InferInput(name, list(batch.shape), "FP32")
    tensor.set_data_from_numpy(batch, binary_data=True)
    # no outputs named: tritonclient sets parameters.binary_data_output
    binary_body, json_size = httpclient.InferenceServerClient.generate_request_body([tensor])
    binary_headers = {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(json_size)}

    def oip_json(body: bytes, _headers: Mapping[str, str]) -> object:
        return orjson.loads(body)["outputs"][0]["data"]

    def oip_binary(body: bytes, headers: Mapping[str, str]) -> object:
        length = int(headers[HEADER_LENGTH]) if HEADER_LENGTH in headers else None
        return httpclient.InferenceServerClient.parse_response_body(body, header_length=length).as_numpy(output)

    oip = f"{service}/v2/models/{MODEL}/infer"
    targets = [
        HttpTarget("lean", f"{lean}/predict", v1_body, json_headers, lambda b, _: orjson.loads(b)[lean_key]),
        HttpTarget("service REST v1 JSON", f"{service}/v1/models/{MODEL}/predict", v1_body, json_headers,
                   lambda b, _: orjson.loads(b)[v1_key]),
        HttpTarget("service OIP REST JSON", oip, oip_body, json_headers, oip_json),
        HttpTarget("service OIP REST binary", oip, binary_body, binary_headers, oip_binary),
    ]
    if triton:
        targets.insert(1, HttpTarget("Triton HTTP JSON", f"{triton}/v2/models/{MODEL}/infer", oip_body,
                                     json_headers, oip_json))
    return targets


def http_answer(target: HttpTarget) -> np.ndarray:
    response = httpx.post(target.url, content=target.body, headers=target.headers, timeout=30)
    if response.status_code != 200:
        raise RuntimeError(f"{target.label}: HTTP {response.status_code}: {response.text[:500]}")
    return np.asarray(target.decode(response.content, response.headers), dtype=np.float64).ravel()


async def grpc_answer(open_: Opener) -> np.ndarray:
    call, close = await open_()
    try:
        return np.asarray(await call(), dtype=np.float64).ravel()
    finally:
        await close()


def verify(http: list[HttpTarget], grpc: dict[str, Opener]) -> None:
    """A bench of wrong answers is worthless: every target answers like the lean server, before any load."""
    reference = http_answer(http[0])
    answers = {t.label: http_answer(t) for t in http[1:]}
    answers |= {label: LOOP.run(grpc_answer(open_)) for label, open_ in grpc.items()}
    for label, answer in answers.items():
        np.testing.assert_allclose(answer, reference, rtol=1e-4, atol=1e-4, err_msg=label)
    print(f"  answers agree ({len(answers) + 1} targets): {reference[:4]}", flush=True)


def bench_workers(args: argparse.Namespace, workers: int, triton: LocalTriton | None, version: ModelVersion,
                  store: Path, work: Path, table: Table) -> None:
    """Lean server and service with ``workers`` workers (and ``triton`` when given): check, then load, each round."""
    with ExitStack() as stack:
        lean_port, grpc_port = free_port(), free_port()
        model = version.artifact_path(version.artifact(("onnx",), "fp32"))
        stack.enter_context(process([sys.executable, str(REPO / "bench" / "lean_server.py"), "--model", str(model),
                                     "--port", str(lean_port), "--workers", str(workers)],
                                    f"http://127.0.0.1:{lean_port}/predict"))
        lean_grpc = f"127.0.0.1:{free_port()}"
        for _ in range(workers):  # grpc sets SO_REUSEPORT: the processes share the port like uvicorn's workers
            lean_grpc_process = subprocess.Popen([sys.executable, str(REPO / "bench" / "lean_grpc_server.py"),
                                                  "--model", str(model), "--port", lean_grpc.rsplit(":", 1)[1]],
                                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            stack.callback(stop_process, lean_grpc_process)
        LOOP.run(wait_grpc_ready(lean_grpc))
        # The large-JSON budget is a policy against bodies that hold the GIL (32-row /v1 bodies are ~190 KB):
        # off here, so the 32-row loads measure the doors rather than the budget's 429s.
        service = launch(store, env={"SERVER_GRPC_PORT": str(grpc_port), "LIMIT_LARGE_JSON_BYTES_PER_SECOND": "0"},
                         workers=workers, log_path=work / f"service-w{workers}.log")
        stack.callback(service.stop)
        LOOP.run(wait_grpc_ready(f"127.0.0.1:{grpc_port}", service.log))
        print(f"\nworkers {workers}: lean :{lean_port}, service {service.url} + grpc :{grpc_port}", flush=True)
        loads = [(shape, *shape_targets(args, shape, workers, version, f"http://127.0.0.1:{lean_port}",
                                        service.url, lean_grpc, f"127.0.0.1:{grpc_port}", triton))
                 for shape in args.shapes]
        for round_no in range(args.rounds):
            print(f"round {round_no + 1}/{args.rounds}, workers {workers}", flush=True)
            for shape, http, grpc in loads:
                targets: list[HttpTarget | str] = [*http, *grpc]
                for target in targets if round_no % 2 == 0 else reversed(targets):
                    label = target.label if isinstance(target, HttpTarget) else target
                    key = TRITON if label.startswith("Triton") else workers
                    if isinstance(target, HttpTarget):
                        if args.warmup:
                            run_wrk(target, shape.concurrency, args.warmup, work)
                        figures = run_wrk(target, shape.concurrency, args.seconds, work)
                    else:
                        figures = LOOP.run(run_grpc(grpc[label], label, shape.concurrency, args.seconds,
                                                       args.warmup))
                    table.add(label, key, shape, figures)


def shape_targets(args: argparse.Namespace, shape: Shape, workers: int, version: ModelVersion, lean: str,
                  service: str, lean_grpc: str, service_grpc: str,
                  triton: LocalTriton | None) -> tuple[list[HttpTarget], dict[str, Opener]]:
    """Every target's request of ``shape.rows`` rows, checked against the lean server's answer."""
    batch = version.signature.synthetic_inputs(shape.rows)
    output = version.signature.outputs[0].name
    http = http_targets(lean, service, triton and f"http://{triton.http_url}", version, next(iter(batch.values())))
    # one connection per worker (a channel's calls share one connection, which one worker accepts)
    streams = args.streams or workers
    unary, streaming = grpc_openers(service_grpc, MODEL, batch, output, streams, channels=workers)
    grpc = {"lean gRPC unary": grpc_openers(lean_grpc, MODEL, batch, output, 1, channels=workers)[0],
            "service OIP gRPC unary": unary, "service OIP gRPC stream": streaming}
    if triton:
        grpc["Triton gRPC"] = grpc_openers(triton.grpc_url, MODEL, batch, output, 1)[0]
    print(f"  {shape.name}:", end="", flush=True)
    verify(http, grpc)
    return http, grpc


def report(table: Table, workers: list[int], shapes: list[Shape]) -> None:
    print(f"\n{'target':<26}{'workers':>7}  {'shape':<13}{'rps':>10}{'rows/s':>10}{'p50 ms':>9}{'p99 ms':>9}"
          f"{'non-2xx':>9}   rps per round")
    for (label, key, shape), runs in table.rounds.items():
        m = table.median(label, key, shape)
        print(f"{label:<26}{key or '-':>7}  {shape.name:<13}{m.rps:10.1f}{m.rps * shape.rows:10.0f}{m.p50:9.2f}"
              f"{m.p99:9.2f}{m.bad:9d}   {', '.join(f'{r.rps:.0f}' for r in runs)}"
              f"{'   !! NON-2XX / ERRORS' if m.bad else ''}")
    print("\nratios of the medians")
    for shape in shapes:
        for n in workers:
            for ours, theirs in RATIOS:
                a, b = table.median(ours, n, shape), table.median(theirs, n, shape)
                if a and b:
                    print(f"{ours + ' / ' + theirs:<50} w{n} {shape.name:<12} rps x{a.rps / b.rps:.2f}   "
                          f"p50 x{a.p50 / b.p50:.2f}   p99 x{a.p99 / b.p99:.2f}")


def overload(args: argparse.Namespace, store: Path, work: Path) -> None:
    """REST v1 JSON at 64 connections: tight limits beside default limits, same worker count, alternating."""
    window = np.random.default_rng(0).normal(1, 0.01, (60, 5)).astype(np.float32)
    body = orjson.dumps({"instance": window.tolist()})
    rounds: dict[tuple[str, int], list] = {}
    for workers in args.workers:
        with ExitStack() as stack:
            urls = {}
            for i, (name, env) in enumerate(OVERLOAD_CONFIGS.items()):
                service = launch(store, env=env, workers=workers, log_path=work / f"overload-{i}-w{workers}.log")
                stack.callback(service.stop)
                urls[name] = f"{service.url}/v1/models/{MODEL}/predict"
            for round_no in range(args.rounds):
                for name in urls if round_no % 2 == 0 else reversed(urls):
                    measured = overload_round(urls[name], body, OVERLOAD_CONNECTIONS, args.seconds, args.warmup)
                    rounds.setdefault((name, workers), []).append(measured)
                    print(f"  round {round_no + 1} w{workers} {name:<22} {measured.line()}", flush=True)
    print(f"\n{'service, REST v1 JSON, 64 conns':<32}{'workers':>7}{'goodput/s':>11}{'rejected/s':>11}"
          f"{'rej p50':>9}{'rej p99':>9}{'acc p99':>9}   medians of {args.rounds} round(s), ms")
    for (name, workers), runs in rounds.items():
        col = {attr: median([getattr(r, attr) for r in runs]) for attr in
               ("goodput", "rejected", "rejection_p50", "rejection_p99", "accepted_p99")}
        others = sum(sum(r.others.values()) for r in runs)
        print(f"{name:<32}{workers:>7}{col['goodput']:11.1f}{col['rejected']:11.1f}{col['rejection_p50']:9.2f}"
              f"{col['rejection_p99']:9.2f}{col['accepted_p99']:9.2f}{f'   !! {others} OTHER' if others else ''}")
    default, limited = OVERLOAD_CONFIGS
    for workers in args.workers:
        ratio = (median([r.goodput for r in rounds[(limited, workers)]])
                 / median([r.goodput for r in rounds[(default, workers)]]))
        print(f"goodput {limited} / {default}, w{workers}: x{ratio:.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path, help="registry with lstm-price (default: build the demo registry)")
    parser.add_argument("--seconds", type=int, default=10, help="measured seconds per target and round (1..600)")
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured seconds before each measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts of lean and service")
    parser.add_argument("--streams", type=int, help="gRPC streams the streaming target spreads over "
                        "(default: one per worker)")
    parser.add_argument("--shapes", default=DEFAULT_SHAPES,
                        help="comma-separated loads CONCURRENCYxROWS (default %(default)s)")
    parser.add_argument("--overload", action="store_true", help="the overload mode (see above)")
    args = parser.parse_args()
    args.workers = [int(n) for n in args.workers.split(",")]
    try:
        args.shapes = [Shape.parse(text) for text in args.shapes.split(",")]
    except ValueError as exc:
        parser.error(str(exc))
    if not 1 <= args.seconds <= 600 or not 0 <= args.warmup <= 60 or not 1 <= args.rounds <= 20:
        parser.error("--seconds 1..600, --warmup 0..60, --rounds 1..20")
    if shutil.which("wrk") is None and not args.overload:
        parser.error("wrk is not installed: apt-get install wrk")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a kill stops our servers too, like Ctrl-C
    load_before = os.getloadavg()[0]
    print(f"1-min load average before: {load_before:.2f} ({os.cpu_count()} cores)", flush=True)
    with ExitStack() as stack:
        stack.callback(LOOP.close)
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="front-door-bench-")))
        store = ensure_store(args.store or work / "store")
        if args.overload:
            overload(args, store, work)
        else:
            version = ModelRegistry(store).resolve(MODEL, stage="production")
            triton = stack.enter_context(LocalTriton(work / "triton-repo"))
            LOOP.run(publish(triton, version, options=TritonConfigOptions(max_batch_size=32)))
            print(f"started tritonserver: http {triton.http_url}, grpc {triton.grpc_url}", flush=True)
            table = Table()
            for i, workers in enumerate(args.workers):  # tritonserver: measured with the first count only
                bench_workers(args, workers, triton if i == 0 else None, version, store, work, table)
            print(f"\nfront door bench: {MODEL} [rows, 60, 5] float32, shapes "
                  f"{', '.join(shape.name for shape in args.shapes)}, {args.seconds}s after {args.warmup}s warm-up, "
                  f"{args.rounds} round(s), medians; loopback, {os.cpu_count()} cores shared by clients and servers")
            report(table, args.workers, args.shapes)
    print(f"1-min load average before {load_before:.2f} / after {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
