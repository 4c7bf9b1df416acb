"""Triton called directly with tritonclient vs through TritonAdapter.predict: same model, same server, same run.

    python bench/triton_bench.py [--seconds 10] [--concurrency 32] [--rows 1] [--protocol http|grpc|both]
                                 [--http-url 127.0.0.1:8010 --grpc-url 127.0.0.1:8011 --repository DIR]

Starts the nvidia-pytriton tritonserver on free loopback ports unless --http-url points at a running one
(then --repository must be that server's model repository). Registers the toy price model (ONNX,
python backend + ONNX Runtime) in a temporary registry, loads it through the adapter, then runs a
closed loop of --concurrency callers for --seconds per side (ABBA order, half each time). Prints
throughput, p50, p99 of each and the adapter/direct ratios, which show what the adapter costs on top of tritonclient.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tritonclient.grpc.aio as grpcclient
import tritonclient.http.aio as httpclient

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from prediction_service.adapters.triton import TritonAdapter  # noqa: E402
from prediction_service.commands.servers.triton import LocalTriton  # noqa: E402
from prediction_service.packaging.triton_repository import entry_name  # noqa: E402
from prediction_service.settings import Settings, TritonSettings  # noqa: E402
from tests.support.triton_models import price_batch, register_price_version  # noqa: E402


@dataclass
class Phase:
    label: str
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0

    @property
    def throughput(self) -> float:
        return len(self.latencies_ms) / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")

    def line(self) -> str:
        return (f"{self.label:<22} {self.throughput:8.1f} req/s   p50 {self.percentile(50):7.2f} ms   "
                f"p99 {self.percentile(99):7.2f} ms   ok {len(self.latencies_ms)}  errors {self.errors}")


async def closed_loop(label: str, call: Callable[[], Awaitable[object]], concurrency: int, seconds: float,
                      warmup_seconds: float) -> Phase:
    async def loop(until: float, phase: Phase | None) -> None:
        while time.monotonic() < until:
            started = time.perf_counter()
            try:
                await call()
            except Exception as exc:  # noqa: BLE001 - a bench counts failures and keeps going
                if phase is not None:
                    phase.errors += 1
                    if phase.errors == 1:
                        print(f"  first error in {label}: {exc!r}", flush=True)
                continue
            if phase is not None:
                phase.latencies_ms.append((time.perf_counter() - started) * 1000.0)

    warm_until = time.monotonic() + warmup_seconds
    await asyncio.gather(*(loop(warm_until, None) for _ in range(concurrency)))
    phase = Phase(label)
    began = time.monotonic()
    await asyncio.gather(*(loop(began + seconds, phase) for _ in range(concurrency)))
    phase.seconds = time.monotonic() - began
    return phase


async def abba(calls: dict, concurrency: int, seconds: float, warmup: float) -> dict[str, Phase]:
    """Each call for half of ``seconds`` in ABBA order, so neither side profits from running second
    (warm caches, load drift); the halves are added up per label."""
    totals = {label: Phase(label) for label in calls}
    for label in [*calls, *reversed(calls)]:
        print(f"running {label}: concurrency {concurrency}, {seconds / 2:g}s", flush=True)
        part = await closed_loop(label, calls[label], concurrency, seconds / 2, warmup)
        print("  " + part.line(), flush=True)
        totals[label].latencies_ms += part.latencies_ms
        totals[label].errors += part.errors
        totals[label].seconds += part.seconds
    return totals


def direct_call(protocol: str, url: str, model: str, batch: dict[str, np.ndarray]):
    module = grpcclient if protocol == "grpc" else httpclient
    binary = {} if protocol == "grpc" else {"binary_data": True}
    client = module.InferenceServerClient(url)

    async def call() -> np.ndarray:
        inputs = []
        for name, array in batch.items():
            tensor = module.InferInput(name, list(array.shape), "FP32")
            tensor.set_data_from_numpy(array, **binary)
            inputs.append(tensor)
        outputs = [module.InferRequestedOutput("prediction", **binary)]
        result = await client.infer(model, inputs, outputs=outputs)
        return result.as_numpy("prediction")

    return client, call


async def bench_protocol(protocol: str, args: argparse.Namespace, http_url: str, grpc_url: str,
                         repository: Path, registry: Path, version) -> list[Phase]:
    settings = Settings(model_store=registry, triton=TritonSettings(
        server_url=http_url, server_grpc_url=grpc_url, use_grpc=protocol == "grpc",
        model_repository=repository, max_batch_size=args.max_batch_size,
    ))
    adapter = TritonAdapter(settings)
    await adapter.load(version)
    batch = price_batch(args.rows)
    client, direct = direct_call(protocol, grpc_url if protocol == "grpc" else http_url,
                                 entry_name(version.key), batch)
    try:
        np.testing.assert_allclose(await direct(), (await adapter.predict(version.key, batch))["prediction"])
        calls = {f"{protocol} tritonclient": direct,
                 f"{protocol} TritonAdapter": lambda: adapter.predict(version.key, batch)}
        return list((await abba(calls, args.concurrency, args.seconds, args.warmup)).values())
    finally:
        await client.close()
        await adapter.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rows", type=int, default=1, help="rows per request")
    parser.add_argument("--max-batch-size", type=int, default=32, help="Triton max_batch_size")
    parser.add_argument("--protocol", choices=["http", "grpc", "both"], default="both")
    parser.add_argument("--http-url")
    parser.add_argument("--grpc-url")
    parser.add_argument("--repository", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="triton-bench-")))
        if args.http_url:
            if args.repository is None:
                parser.error("--repository is required with --http-url (the running server's repository)")
            http_url, grpc_url, repository = args.http_url, args.grpc_url or args.http_url, args.repository
        else:
            server = stack.enter_context(LocalTriton(work / "repo"))
            http_url, grpc_url, repository = server.http_url, server.grpc_url, server.model_repository
            print(f"started tritonserver: http {http_url}, grpc {grpc_url}", flush=True)
        version = register_price_version(work / "registry", "bench-price", "1.0.0", work / "onnx")
        protocols = ["http", "grpc"] if args.protocol == "both" else [args.protocol]
        results = []
        for protocol in protocols:
            results.append(asyncio.run(bench_protocol(protocol, args, http_url, grpc_url, repository,
                                                      work / "registry", version)))

    print(f"\nTriton bench: toy price model (python backend + ONNX Runtime), rows/request {args.rows}, "
          f"concurrency {args.concurrency}, {args.seconds}s per phase")
    for direct, adapted in results:
        print(direct.line())
        print(adapted.line())
        print(f"{'adapter/direct':<22} throughput x{adapted.throughput / direct.throughput:.3f}   "
              f"p50 x{adapted.percentile(50) / direct.percentile(50):.3f}   "
              f"p99 x{adapted.percentile(99) / direct.percentile(99):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
