"""System shared memory vs binary HTTP, from a co-located client, on the demo's lstm-price.

    python bench/shared_memory_bench.py [--seconds 5] [--warmup 1] [--rounds 3] [--rows 32,256] [--store DIR]

One server (one worker, the demo registry built in a temp dir unless --store names one that has
lstm-price), one tritonclient.http client on the same host in a closed loop (c=1: a strategy waiting on
each answer). Per row count, two ways of sending the same [rows, 60, 5] float32 window and reading the
[rows, ...] answer back:
  binary HTTP:   the tensors in the request and response bodies (the binary tensor data extension);
  shared memory: the input written into a registered /dev/shm region before each request (the client's
                 copy is counted), the output written by the server into another region and copied out.
Both answers are checked equal before anything is timed. Rounds alternate the order; prints per-round
p50/p99 (ms) and rows/s, the medians over rounds, and shared memory / binary ratios.

Client and server share this machine's cores: the 1-min load average is printed before and after.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from serve_bench import ensure_store  # noqa: E402

from prediction_service.registry import RegistryReader  # noqa: E402
from tests.support.server import launch  # noqa: E402

MODEL = "lstm-price"


class Case:
    """One row count: its window, and a request function per mode returning the model's output."""

    def __init__(self, client: httpclient.InferenceServerClient, rows: int, input_name: str, output_name: str,
                 output_shape: tuple[int, ...]):
        self.rows = rows
        rng = np.random.default_rng(rows)
        self.window = rng.normal(1.0, 0.01, size=(rows, 60, 5)).astype(np.float32)
        self.client, self.input_name, self.output_name = client, input_name, output_name
        self.out_bytes = int(np.prod(output_shape)) * 4
        tag = uuid.uuid4().hex[:8]
        self.in_region = shm.create_shared_memory_region(f"bench-in-{tag}", f"/bench-in-{tag}", self.window.nbytes)
        self.out_region = shm.create_shared_memory_region(f"bench-out-{tag}", f"/bench-out-{tag}", self.out_bytes)
        client.register_system_shared_memory(f"bench-in-{tag}", f"/bench-in-{tag}", self.window.nbytes)
        client.register_system_shared_memory(f"bench-out-{tag}", f"/bench-out-{tag}", self.out_bytes)
        self.shm_input = httpclient.InferInput(input_name, list(self.window.shape), "FP32")
        self.shm_input.set_shared_memory(f"bench-in-{tag}", self.window.nbytes)
        self.shm_output = httpclient.InferRequestedOutput(output_name)
        self.shm_output.set_shared_memory(f"bench-out-{tag}", self.out_bytes)
        self.binary_output = httpclient.InferRequestedOutput(output_name, binary_data=True)

    def binary(self) -> np.ndarray:
        tensor = httpclient.InferInput(self.input_name, list(self.window.shape), "FP32")
        tensor.set_data_from_numpy(self.window, binary_data=True)
        return self.client.infer(MODEL, [tensor], outputs=[self.binary_output]).as_numpy(self.output_name)

    def shared_memory(self) -> np.ndarray:
        shm.set_shared_memory_region(self.in_region, [self.window])
        result = self.client.infer(MODEL, [self.shm_input], outputs=[self.shm_output])
        shape = result.get_output(self.output_name)["shape"]
        return shm.get_contents_as_numpy(self.out_region, np.float32, shape).copy()

    def close(self) -> None:
        for region in (self.in_region, self.out_region):
            shm.destroy_shared_memory_region(region)


def measure(call: Callable[[], np.ndarray], rows: int, seconds: float, warmup: float) -> tuple[float, float, float]:
    """p50 ms, p99 ms, rows/s of a closed loop of ``call``."""
    end = time.perf_counter() + warmup
    while time.perf_counter() < end:
        call()
    latencies = []
    start = time.perf_counter()
    end = start + seconds
    while (now := time.perf_counter()) < end:
        call()
        latencies.append(time.perf_counter() - now)
    elapsed = time.perf_counter() - start
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    return statistics.median(latencies) * 1000, p99 * 1000, len(latencies) * rows / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rows", default="32,256")
    args = parser.parse_args()
    store = ensure_store(args.store)
    version = RegistryReader(store).resolve(MODEL, stage="production")
    input_name, output_spec = version.signature.inputs[0].name, version.signature.outputs[0]
    print(f"load average before: {os.getloadavg()[0]:.2f}", flush=True)
    server = launch(store, env={"WARMUP_ENABLED": "true"}, workers=1)
    cases: list[Case] = []
    try:
        client = httpclient.InferenceServerClient(server.url.removeprefix("http://"), network_timeout=60.0)
        for rows in (int(r) for r in args.rows.split(",")):
            shape = (rows, *[d for d in output_spec.shape[1:]])
            case = Case(client, rows, input_name, output_spec.name, shape)
            cases.append(case)
            np.testing.assert_array_equal(case.binary(), case.shared_memory())  # same answer both ways
        figures: dict[tuple[int, str], list[tuple[float, float, float]]] = {}
        for round_index in range(args.rounds):
            for case in cases:
                modes = [("binary HTTP", case.binary), ("shared memory", case.shared_memory)]
                for label, call in modes if round_index % 2 == 0 else modes[::-1]:
                    result = measure(call, case.rows, args.seconds, args.warmup)
                    figures.setdefault((case.rows, label), []).append(result)
                    print(f"round {round_index + 1}  {case.rows:>4} rows  {label:<14} p50 {result[0]:7.2f} ms  "
                          f"p99 {result[1]:7.2f} ms  {result[2]:9.0f} rows/s", flush=True)
        print("\nmedians over rounds")
        for case in cases:
            medians = {label: tuple(statistics.median(r[i] for r in figures[(case.rows, label)]) for i in range(3))
                       for label in ("binary HTTP", "shared memory")}
            for label, (p50, p99, rate) in medians.items():
                print(f"  {case.rows:>4} rows  {label:<14} p50 {p50:7.2f} ms  p99 {p99:7.2f} ms  {rate:9.0f} rows/s")
            b, s = medians["binary HTTP"], medians["shared memory"]
            print(f"  {case.rows:>4} rows  shared memory / binary: p50 x{s[0] / b[0]:.2f}  p99 x{s[1] / b[1]:.2f}  "
                  f"rows/s x{s[2] / b[2]:.2f}")
    finally:
        for case in cases:
            case.close()
        server.stop()
        print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
