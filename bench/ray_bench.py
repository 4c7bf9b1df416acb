"""The demo LSTM (lstm-price) through Ray Serve (1 and 2 replicas) vs the standalone service, one run.

    python bench/ray_bench.py [--store model_store] [--seconds 10] [--concurrency 16] [--rate 200]

For each target: a closed loop (``--concurrency`` clients, as fast as they go: rps, p50, p99) and an open
loop at ``--rate`` requests/s (latency from each request's scheduled start, so a stalled server is not
flattered: p50, p99), then the seed-004 SLA check, p99 < 100 ms at 200 rps. The standalone service is
``python -m prediction_service serve`` (1 worker); Ray runs a local single node with Serve's proxy and
replicas of 0.5 CPU (the whole machine is shared by load generator, proxy and replicas). Both batch with
the service's own batcher inside the process that runs the model.

Where the SLA limit is: for Serve with 1 and 2 replicas, a short step search of open-loop rates
(``--search-step`` rps steps up to ``--search-max``, ``--search-seconds`` each, then two bisections)
prints the highest rate tried at which p99 < 100 ms with no errors.

Which batcher (skip with ``--no-batching``): one replica each, at the seed's 32 rows / 10 ms, a closed
loop and an open loop at ``--batching-rate`` (below the proxy's limit, so latency compares), in
``--batching-rounds`` interleaved rounds (medians), against
  - the service's app (the product path: its own batcher, plus everything else the data plane does),
  - a lean deployment running lstm-price with the project's runtime (adapters/runtimes.py), v1 codec and
    signature validation, batched by the project's DynamicBatcher (execution/batching.py),
  - the same lean deployment batched by Serve's ``@serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01)``.
The two lean ones differ only in the batcher, so their gap is the batcher's; the product's gap to them is
the rest of the data plane (routing, provenance, metrics, audit). Rows per model run show how full the
batches were (the service's ``prediction_batch_rows``, the lean replicas' own counts).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import httpx
import orjson
from ray import serve

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from loadgen import LoadResult, run_load  # noqa: E402
from serve_bench import ensure_store, process  # noqa: E402

from prediction_service.adapters.runtimes import open_runtime  # noqa: E402
from prediction_service.adapters.simple import SimpleAdapter  # noqa: E402
from prediction_service.api.errors import error_response  # noqa: E402
from prediction_service.api.responses import FastJSONResponse  # noqa: E402
from prediction_service.v1.codec import decode_predict  # noqa: E402
from prediction_service.execution.batching import DynamicBatcher, batch_rows, merge, split  # noqa: E402
from prediction_service.errors import InvalidInput, PredictionServiceError  # noqa: E402
from prediction_service.serving.processing import ModelProcessing  # noqa: E402
from prediction_service.registry import RegistryReader  # noqa: E402
from prediction_service.settings import Settings  # noqa: E402
from tests.support.server import free_port  # noqa: E402

MODEL = "lstm-price"
PATH = f"/v1/models/{MODEL}/predict"
PAYLOAD = {"instance": [[1.0, 1.002, 0.998, 1.001, 1.0]] * 60}
SLA_P99_MS = 100.0
SEED_BATCH = {"BATCH_MAX_BATCH_SIZE": "32", "BATCH_MAX_QUEUE_DELAY_MS": "10"}  # deploy/ray/*.yaml


class LeanLstm:
    """lstm-price's production version as the service opens it (the adapters' runtime, sha256 unchecked),
    requests decoded and validated as /v1 does (v1 codec, the model's processing and signature), errors
    with the service's bodies. Subclasses batch; nothing else (no routing, metrics, audit, provenance)."""

    def __init__(self) -> None:
        settings = Settings()  # the replica's environment, as for the service's app
        version = RegistryReader(settings.model_store).resolve(MODEL, stage="production")
        artifact = version.artifact(SimpleAdapter.formats, settings.serving_precision.value)
        self.runtime = open_runtime(version, artifact, settings.simple.intra_op_threads)
        self.processing = ModelProcessing(version, settings.limits)
        self.max_rows = settings.limits.max_batch_rows
        self.batching = settings.batching
        self.version = version.version
        self._pool = ThreadPoolExecutor(max(2, settings.batching.concurrent_batches))  # as InProcessAdapter

    async def run(self, tensors, priority: int = 1):
        return await asyncio.get_running_loop().run_in_executor(self._pool, self.runtime.run, tensors)

    async def predict(self, tensors):
        raise NotImplementedError

    def batch_counts(self) -> tuple[int, int]:
        """(model runs, rows run) so far: how well the batcher filled its batches."""
        raise NotImplementedError

    async def __call__(self, request):
        if request.method == "GET":
            batches, rows = self.batch_counts()
            return FastJSONResponse({"batches": batches, "rows": rows})
        try:
            try:
                body = orjson.loads(await request.body())
            except orjson.JSONDecodeError as exc:
                raise InvalidInput(f"body is not JSON: {exc}") from exc
            raw = decode_predict(body, self.max_rows).inputs
            outputs = await self.predict(self.processing.preprocess(raw))
        except PredictionServiceError as exc:
            return error_response(exc)
        return FastJSONResponse({"model": MODEL, "version": self.version, "outputs": outputs,
                                 "predictions": self.processing.predictions(outputs)})


class ProjectBatched(LeanLstm):
    def __init__(self) -> None:
        super().__init__()
        self.batcher = DynamicBatcher(self.run, max_batch_size=self.batching.max_batch_size,
                                      max_queue_delay_ms=self.batching.max_queue_delay_ms,
                                      max_queue_size=self.batching.max_queue_size,
                                      max_concurrent_batches=self.batching.concurrent_batches, name=MODEL)

    async def predict(self, tensors):
        return await self.batcher.submit(tensors)

    def batch_counts(self) -> tuple[int, int]:
        stats = self.batcher.stats
        return stats.batches, stats.rows


class ServeBatched(LeanLstm):
    batches = rows = 0

    async def predict(self, tensors):
        return await self.predict_batch(tensors)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01)
    async def predict_batch(self, requests: list):
        # Serve hands the queued calls' arguments as one list; the project's merge/split do the tensors.
        sizes = [batch_rows(r) for r in requests]
        self.batches, self.rows = self.batches + 1, self.rows + sum(sizes)
        return split(await self.run(merge(requests)), sizes)

    def batch_counts(self) -> tuple[int, int]:
        return self.batches, self.rows


async def open_loop(url: str, rate: float, seconds: float, label: str) -> LoadResult:
    """``rate`` requests/s on a fixed schedule, whatever the answers' pace (no coordinated omission)."""
    body = orjson.dumps(PAYLOAD)
    result = LoadResult(label, seconds, statuses=Counter())
    # A pooled client, as trading systems run one: past 64 in flight requests wait in the pool (and count).
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as session:
        async def one(scheduled: float) -> None:
            await asyncio.sleep(max(0.0, scheduled - time.perf_counter()))
            try:
                async with session.post(url, data=body, headers={"content-type": "application/json"}) as resp:
                    await resp.read()
                    status = resp.status
            except aiohttp.ClientError:
                status = -1
            result.statuses[status] += 1
            if status == 200:
                result.latencies_ms.append((time.perf_counter() - scheduled) * 1000.0)

        start = time.perf_counter() + 0.1
        await asyncio.gather(*(one(start + i / rate) for i in range(int(rate * seconds))))
    return result


def measure(base: str, label: str, args: argparse.Namespace) -> list[LoadResult]:
    closed = asyncio.run(run_load(base + PATH, PAYLOAD, concurrency=args.concurrency, seconds=args.seconds,
                                  label=f"{label} closed c={args.concurrency}"))
    opened = asyncio.run(open_loop(base + PATH, args.rate, args.seconds, f"{label} open {args.rate:g} rps"))
    for result in (closed, opened):
        print(result.line(), flush=True)
    return [closed, opened]


def standalone(store: Path, args: argparse.Namespace) -> list[LoadResult]:
    port = free_port()
    env = {"MODEL_STORE": str(store), "SERVER_GRPC_PORT": "0", "BATCH_MAX_QUEUE_DELAY_MS": str(args.batch_delay_ms)}
    with process([sys.executable, "-m", "prediction_service", "serve", "--port", str(port), "--workers", "1",
                  "--log-level", "warning"], f"http://127.0.0.1:{port}/health/ready", env=env):
        return measure(f"http://127.0.0.1:{port}", "standalone serve", args)


@dataclass(frozen=True)
class BatcherResult:
    label: str
    closed: LoadResult
    opened: LoadResult
    mean_rows: float
    """Rows per model run over both loads (how full the batches were)."""


def wait_answering(base: str, timeout: float = 120.0) -> None:
    """Until a prediction through Serve's proxy answers 200 (every variant serves PATH)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.post(base + PATH, json=PAYLOAD, timeout=10).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("Serve application not answering")
        time.sleep(0.5)


def batch_counts(base: str, lean: bool) -> tuple[int, int]:
    """(model runs, rows) of the one replica: a lean deployment's GET, the service's prediction_batch_rows."""
    if lean:
        counts = httpx.get(base + "/", timeout=10).json()
        return counts["batches"], counts["rows"]
    values = {}
    for line in httpx.get(base + "/metrics", timeout=10).text.splitlines():
        if line.startswith(("prediction_batch_rows_count{", "prediction_batch_rows_sum{")) and MODEL in line:
            values[line.split("{")[0]] = float(line.split()[-1])
    return int(values.get("prediction_batch_rows_count", 0)), int(values.get("prediction_batch_rows_sum", 0))


def meets_sla(result: LoadResult) -> bool:
    errors = sum(n for status, n in result.statuses.items() if status != 200)
    return errors == 0 and result.percentile(99) < SLA_P99_MS


def sla_limit(base: str, label: str, args: argparse.Namespace) -> tuple[float | None, float | None]:
    """(highest passing rate, lowest failing rate) of a bounded step search: open loops of
    ``--search-seconds`` at ``--search-step``, 2x, 3x ... rps up to ``--search-max``, stopping at the first
    failure, then two bisections between the last pass and that failure."""
    def attempt(rate: float) -> bool:
        result = asyncio.run(open_loop(base + PATH, rate, args.search_seconds, f"{label} search {rate:g} rps"))
        passed = meets_sla(result)
        print(f"  {result.line()}  {'pass' if passed else 'FAIL'}", flush=True)
        return passed

    passed = failed = None
    rate = args.search_step
    while rate <= args.search_max:
        if not attempt(rate):
            failed = rate
            break
        passed, rate = rate, rate + args.search_step
    if passed is not None and failed is not None:
        for _ in range(2):
            middle = round((passed + failed) / 2)
            if attempt(middle):
                passed = middle
            else:
                failed = middle
    return passed, failed


def on_ray(store: Path, args: argparse.Namespace) -> tuple[list[LoadResult], dict[str, tuple], list[BatcherResult]]:
    import ray

    from prediction_service.deploy.ray_serve import RayAppArgs, application

    os.environ["PYTHONPATH"] = str(REPO)
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=80 * 1024**2, log_to_driver=False,
             logging_level="warning")
    results, limits, batching = [], {}, []
    replica = {"max_ongoing_requests": 64, "ray_actor_options": {"num_cpus": 0.5}}
    try:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        env = {"MODEL_STORE": str(store), "SERVER_GRPC_PORT": "0", "BATCH_MAX_QUEUE_DELAY_MS": str(args.batch_delay_ms)}

        def deploy(app) -> None:
            serve.run(app, name="bench", route_prefix="/")
            wait_answering(base)

        for replicas in (1, 2):
            label = f"ray serve {replicas} replica{'s' if replicas > 1 else ''}"
            deploy(application(RayAppArgs(env=env), num_replicas=replicas, **replica))
            results += measure(base, label, args)
            if args.search_max > 0:
                print(f"SLA limit search, {label}:", flush=True)
                limits[label] = sla_limit(base, label, args)
        if args.batching:
            seed_env = {**env, **SEED_BATCH}
            lean = {**replica, "num_replicas": 1, "ray_actor_options": {
                **replica["ray_actor_options"], "runtime_env": {"env_vars": seed_env}}}
            variants = [
                ("service app, own batcher", False, application(RayAppArgs(env=seed_env), num_replicas=1, **replica)),
                ("lean, project batcher", True, serve.deployment(ProjectBatched, name="lean").options(**lean).bind()),
                ("lean, @serve.batch", True, serve.deployment(ServeBatched, name="lean").options(**lean).bind()),
            ]
            batch_args = argparse.Namespace(**{**vars(args), "rate": args.batching_rate})
            for round_ in range(args.batching_rounds):  # interleaved: a neighbour's burst hits every variant alike
                for label, is_lean, app in variants:
                    deploy(app)
                    before = batch_counts(base, is_lean)
                    closed, opened = measure(base, f"{label} #{round_ + 1}", batch_args)
                    runs, rows = (after - first for after, first in zip(batch_counts(base, is_lean), before))
                    batching.append(BatcherResult(label, closed, opened, rows / runs if runs else float("nan")))
        serve.delete("bench")
    finally:
        serve.shutdown()
        ray.shutdown()
    return results, limits, batching


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--batch-delay-ms", type=float, default=2.0, help="BATCH_MAX_QUEUE_DELAY_MS for both")
    parser.add_argument("--search-step", type=float, default=50.0, help="SLA limit search: rps step")
    parser.add_argument("--search-max", type=float, default=300.0, help="SLA limit search: highest rps (0: skip)")
    parser.add_argument("--search-seconds", type=float, default=5.0, help="SLA limit search: seconds per rate")
    parser.add_argument("--no-batching", dest="batching", action="store_false",
                        help="skip the batcher comparison (service batcher vs @serve.batch)")
    parser.add_argument("--batching-rounds", type=int, default=3, help="batcher comparison: rounds (medians)")
    parser.add_argument("--batching-rate", type=float, default=100.0,
                        help="open-loop rps of the batcher comparison (below the proxy's limit, so latency compares)")
    args = parser.parse_args()
    store = ensure_store(args.store)
    results = standalone(store, args)
    ray_results, limits, batching = on_ray(store, args)
    results += ray_results
    print(f"\nSLA (the Ray Serve deployment's target): p99 < {SLA_P99_MS:g} ms at {args.rate:g} rps, no errors")
    for result in results[1::2]:
        errors = sum(n for status, n in result.statuses.items() if status != 200)
        verdict = "PASS" if meets_sla(result) else "FAIL"
        print(f"  {result.label:<34} p99 {result.percentile(99):7.2f} ms  errors {errors}  {verdict}")
    if limits:
        print(f"\nHighest open-loop rate meeting p99 < {SLA_P99_MS:g} ms (steps of {args.search_step:g} rps, "
              f"{args.search_seconds:g} s each, then two bisections)")
        for label, (passed, failed) in limits.items():
            below = f"{passed:g} rps" if passed is not None else f"none (< {args.search_step:g} rps)"
            above = f"fails at {failed:g} rps" if failed is not None else f"not reached by {args.search_max:g} rps"
            print(f"  {label:<34} {below:>10}   {above}")
    if batching:
        print(f"\nBatcher, 1 replica, 32 rows / 10 ms, medians of {args.batching_rounds} interleaved rounds: closed "
              f"loop c={args.concurrency}, open loop {args.batching_rate:g} rps, mean rows per model run over both")
        for label in dict.fromkeys(r.label for r in batching):
            rounds = [r for r in batching if r.label == label]

            def median(value) -> float:
                return statistics.median(value(r) for r in rounds)

            print(f"  {label:<26} closed {median(lambda r: r.closed.throughput):6.1f} rps "
                  f"p50 {median(lambda r: r.closed.percentile(50)):6.2f} ms   "
                  f"open p50 {median(lambda r: r.opened.percentile(50)):6.2f} ms "
                  f"p99 {median(lambda r: r.opened.percentile(99)):7.2f} ms   "
                  f"rows/run {median(lambda r: r.mean_rows):5.2f}")


if __name__ == "__main__":
    main()
