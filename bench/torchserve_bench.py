"""TorchServe called directly (aiohttp) vs through TorchServeAdapter.predict, same model, same server.

    python bench/torchserve_bench.py [--seconds 5] [--concurrency 32] [--rows 1]

Starts a local TorchServe (token auth on, as in production), registers a tiny scripted LSTM through
the adapter, then runs each client for a bounded duration and prints throughput, p50 and p99.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import numpy as np
import orjson
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prediction_service.adapters.torchserve import TorchServeAdapter  # noqa: E402
from prediction_service.commands.servers.torchserve import LocalTorchServe  # noqa: E402
from prediction_service.packaging.torchserve_mar import served_model_name  # noqa: E402
from prediction_service.registry import VersionMetadata  # noqa: E402
from prediction_service.registry.writer import ArtifactSource, register_version  # noqa: E402
from prediction_service.settings import Settings, TorchServeSettings  # noqa: E402
from prediction_service.signature import ModelSignature, TensorSpec  # noqa: E402

SEQ_LEN, FEATURES = 16, 5


class BenchLstm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(FEATURES, 32, batch_first=True)
        self.head = nn.Linear(32, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        sequence, _ = self.lstm(features)
        return self.head(sequence[:, -1, :])


def register_model(root: Path, work: Path):
    artifact = work / "model.pt"
    torch.jit.script(BenchLstm().eval()).save(str(artifact))
    signature = ModelSignature(
        inputs=[TensorSpec(name="features", dtype="float32", shape=(-1, SEQ_LEN, FEATURES))],
        outputs=[TensorSpec(name="prediction", dtype="float32", shape=(-1, 1))],
    )
    metadata = VersionMetadata(name="bench-lstm", version="1.0.0", signature=signature,
                               artifacts=[{"file": "model.pt", "format": "torchscript", "sha256": "0" * 64,
                                           "size_bytes": 0}])
    return register_version(root, metadata, [ArtifactSource(artifact, "torchscript")])


async def run_for(seconds: float, concurrency: int, call) -> list[float]:
    latencies: list[float] = []
    stop_at = time.monotonic() + seconds

    async def client() -> None:
        while time.monotonic() < stop_at:
            started = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - started)

    await asyncio.gather(*[client() for _ in range(concurrency)])
    return latencies


def summary(label: str, latencies: list[float], seconds: float) -> float:
    ordered = sorted(latencies)
    throughput = len(ordered) / seconds
    p50 = statistics.median(ordered) * 1e3
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1e3
    print(f"{label:<28} {throughput:9.1f} req/s   p50 {p50:7.2f} ms   p99 {p99:7.2f} ms   (n={len(ordered)})")
    return throughput


async def bench(args: argparse.Namespace, server: LocalTorchServe, root: Path, version) -> None:
    settings = Settings(model_store=root, torchserve=TorchServeSettings(
        inference_url=server.inference_url, management_url=server.management_url, model_store=server.model_store,
        key_file=server.key_file, batch_size=args.batch_size, max_batch_delay=args.max_batch_delay,
        default_workers=1, max_workers=1, timeout_seconds=10.0))
    adapter = TorchServeAdapter(settings)
    await adapter.load(version)
    features = np.random.default_rng(0).standard_normal((args.rows, SEQ_LEN, FEATURES)).astype(np.float32)
    url = f"{server.inference_url}/predictions/{served_model_name(version.key)}"
    headers = {"Content-Type": "application/json",
               "Authorization": f"Bearer {server.keys()['inference']}"}

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        async def direct() -> None:
            body = orjson.dumps({"inputs": {"features": features}}, option=orjson.OPT_SERIALIZE_NUMPY)
            async with session.post(url, data=body, headers=headers) as response:
                response.raise_for_status()
                orjson.loads(await response.read())

        async def through_adapter() -> None:
            await adapter.predict(version.key, {"features": features})

        await run_for(args.warmup, args.concurrency, direct)  # warm-up: worker JIT profiling, connections
        await run_for(args.warmup, args.concurrency, through_adapter)
        print(f"concurrency {args.concurrency}, {args.rows} row(s)/request, {args.seconds}s each, "
              f"TorchServe batch_size {args.batch_size}, max_batch_delay {args.max_batch_delay} ms, 1 worker")
        # Alternate the two clients so drift (JIT warm-up, neighbours on the CPU) hits both alike.
        for round_number in range(1, args.rounds + 1):
            print(f"round {round_number}")
            direct_rps = summary("TorchServe direct (aiohttp)",
                                 await run_for(args.seconds, args.concurrency, direct), args.seconds)
            adapter_rps = summary("TorchServeAdapter.predict",
                                  await run_for(args.seconds, args.concurrency, through_adapter), args.seconds)
            print(f"adapter / direct throughput ratio: {adapter_rps / direct_rps:.3f}")
        print(f"largest server-side batch seen: "
              f"{(await adapter.describe(version.key))['max_observed_server_batch_requests']} requests")
    await adapter.unload(version.key)
    await adapter.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rows", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-batch-delay", type=int, default=5)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="ts-bench-") as tmp:
        work = Path(tmp)
        version = register_model(work / "registry", work)
        with LocalTorchServe(work / "store", work / "ts", token_auth=True) as server:
            asyncio.run(bench(args, server, work / "registry", version))


if __name__ == "__main__":
    main()
