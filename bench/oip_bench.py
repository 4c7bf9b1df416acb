"""The service's Open Inference Protocol doors vs a real tritonserver: same ONNX model, same client, same run.

    python bench/oip_bench.py [--store model_store] [--seconds 10] [--warmup 2] [--concurrency 32]
                              [--workers 1] [--http-tensors binary|json] [--triton-max-batch-size 32]

Serves the demo registry's lstm-price (built in a temp dir unless --store has it) twice on loopback:
``python -m prediction_service serve`` (OIP REST on its HTTP port, OIP gRPC on --grpc-port) and the
nvidia-pytriton tritonserver with the repository entry the project's packaging generates (python backend
running the same model.onnx with ONNX Runtime: this Triton has no onnxruntime backend). Then
tritonclient (grpc.aio and http.aio) sends one row [1, 60, 5] float32 per request from --concurrency
callers in a closed loop: four targets, each for --seconds split into two halves run in ABBA order so
neither profits from going first. Prints req/s, p50, p99 per target and the service/tritonserver ratios.

Both servers and the load generator share this machine's cores (2 here): the client's Python process
takes a large share, so the figures compare the two servers under the same handicap; they are not the
capacity of either. Each server keeps its own batching defaults (service: BATCH_*, SIMPLE_INTRA_OP_THREADS;
Triton: dynamic batching up to --triton-max-batch-size, 500 us queue delay, 1 ONNX Runtime thread).
Every process started here is stopped on exit, Ctrl-C and errors included.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
import tritonclient.grpc.aio as grpcclient
import tritonclient.http.aio as httpclient

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from serve_bench import ensure_store  # noqa: E402
from triton_bench import Phase, abba  # noqa: E402

from prediction_service.commands.servers.triton import LocalTriton  # noqa: E402
from prediction_service.packaging.triton_config import TritonConfigOptions  # noqa: E402
from prediction_service.registry import ModelRegistry, ModelVersion  # noqa: E402
from tests.support.oip import publish, wait_grpc_ready  # noqa: E402
from tests.support.server import free_port, launch  # noqa: E402

MODEL = "lstm-price"


@dataclass(frozen=True)
class Target:
    label: str
    client: ModuleType
    url: str


def caller(target: Target, batch: dict[str, np.ndarray], outputs: list[str], binary: bool, **client_options):
    """(client, one inference): the same tritonclient code for every target, only the URL differs
    (``client_options``: the client's own, e.g. gRPC ``channel_args``)."""
    module = target.client
    tensor_format = {"binary_data": binary} if module is httpclient else {}
    client = module.InferenceServerClient(target.url, **client_options)

    async def call() -> dict[str, np.ndarray]:
        inputs = []
        for name, array in batch.items():
            tensor = module.InferInput(name, list(array.shape), "FP32")
            tensor.set_data_from_numpy(array, **tensor_format)
            inputs.append(tensor)
        requested = [module.InferRequestedOutput(name, **tensor_format) for name in outputs]
        result = await client.infer(MODEL, inputs, outputs=requested)
        return {name: result.as_numpy(name) for name in outputs}

    return client, call


async def run(targets: list[Target], version: ModelVersion, args: argparse.Namespace) -> dict[str, Phase]:
    batch = version.signature.synthetic_inputs(1)
    outputs = [spec.name for spec in version.signature.outputs]
    clients, calls = [], {}
    try:
        for target in targets:
            client, call = caller(target, batch, outputs, args.http_tensors == "binary")
            clients.append(client)
            calls[target.label] = call
        answers = {label: await call() for label, call in calls.items()}
        reference = answers[targets[-1].label]
        for label, answer in answers.items():  # a bench of wrong answers would be worthless
            for name in outputs:
                np.testing.assert_allclose(answer[name], reference[name], rtol=1e-4, atol=1e-4, err_msg=label)
        return await abba(calls, args.concurrency, args.seconds, args.warmup)
    finally:
        for client in clients:
            await client.close()


def ratio_line(label: str, ours: Phase, theirs: Phase) -> str:
    return (f"{label:<22} throughput x{ours.throughput / theirs.throughput:.3f}   "
            f"p50 x{ours.percentile(50) / theirs.percentile(50):.3f}   "
            f"p99 x{ours.percentile(99) / theirs.percentile(99):.3f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path, help="registry with lstm-price (default: build the demo registry)")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per target (1..600)")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before each half")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--workers", type=int, default=1, help="service worker processes")
    parser.add_argument("--http-tensors", choices=["binary", "json"], default="binary",
                        help="how tritonclient.http sends and asks for tensors")
    parser.add_argument("--triton-max-batch-size", type=int, default=32)
    args = parser.parse_args()
    if not 1 <= args.seconds <= 600 or not 1 <= args.concurrency <= 1024 or not 0 <= args.warmup <= 60:
        parser.error("--seconds 1..600, --concurrency 1..1024, --warmup 0..60")
    logging.basicConfig(level=logging.WARNING)
    load_before = os.getloadavg()[0]  # other work on these cores skews every figure: say how much there was

    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="oip-bench-")))
        store = ensure_store(args.store or work / "store")
        version = ModelRegistry(store).resolve(MODEL, stage="production")
        grpc_port = free_port()
        service = launch(store, env={"SERVER_GRPC_PORT": str(grpc_port)}, workers=args.workers,
                         log_path=work / "service.log")
        stack.callback(service.stop)
        asyncio.run(wait_grpc_ready(f"127.0.0.1:{grpc_port}", service.log))
        print(f"started the service: http {service.url}, grpc 127.0.0.1:{grpc_port}", flush=True)
        triton = stack.enter_context(LocalTriton(work / "triton-repo"))
        options = TritonConfigOptions(max_batch_size=args.triton_max_batch_size)
        asyncio.run(publish(triton, version, options=options))
        print(f"started tritonserver: http {triton.http_url}, grpc {triton.grpc_url}", flush=True)
        targets = [
            Target("service OIP gRPC", grpcclient, f"127.0.0.1:{grpc_port}"),
            Target("service OIP REST", httpclient, f"127.0.0.1:{service.port}"),
            Target("tritonserver gRPC", grpcclient, triton.grpc_url),
            Target("tritonserver REST", httpclient, triton.http_url),
        ]
        phases = asyncio.run(run(targets, version, args))

    print(f"\nOIP bench: {MODEL} [1, 60, 5] float32, one row per request, tritonclient aio, concurrency "
          f"{args.concurrency}, {args.seconds:g}s per target, HTTP tensors {args.http_tensors}, loopback, "
          f"{os.cpu_count()} cores shared by the client and both servers, service workers {args.workers}, "
          f"1-min load average {load_before:.2f} before / {os.getloadavg()[0]:.2f} after")
    for phase in phases.values():
        print(phase.line())
    service_grpc, service_rest, triton_grpc, triton_rest = phases.values()
    print(ratio_line("gRPC service/triton", service_grpc, triton_grpc))
    print(ratio_line("REST service/triton", service_rest, triton_rest))
    return 0


if __name__ == "__main__":
    sys.exit(main())
