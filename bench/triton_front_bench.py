"""Front-door candidate (a): tritonserver as the front end, the service's guarded path in a python-backend model.

    python bench/triton_front_bench.py [--seconds 6] [--rounds 2] [--workers 1,2] [--store DIR]

One run, on 127.0.0.1, the demo's ``lstm-price``, OIP REST JSON with one row per request (the same bytes
to every target), wrk at 32 connections and at 1:

- Triton's own model (python backend + ONNX Runtime, dynamic batching up to 32): the target's yardstick;
- the candidate, ``bench/triton_front/model.py`` in the same tritonserver: every request authorized,
  admitted, routed, audited and answered with provenance by the service's own pipeline, in as many
  instances (stub processes, each a whole service) as ``--workers``;
- the service's own OIP REST door with ``--workers`` workers.

Answers are checked to agree before any load. Prints rps, p50, p99 per round and the ratios to Triton's own
(target for a front door: OIP REST at least 1.0x Triton's rps at w2, p99 no higher).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import numpy as np  # noqa: E402
import tritonclient.http.aio as httpclient  # noqa: E402
from front_door_bench import MODEL, http_answer, http_targets  # noqa: E402
from front_door_load import Figures, HttpTarget, run_wrk  # noqa: E402
from serve_bench import ensure_store  # noqa: E402

from prediction_service.commands.servers.triton import LocalTriton  # noqa: E402
from prediction_service.packaging.triton_config import TritonConfigOptions, TritonPlatform, render_config  # noqa: E402
from prediction_service.registry import ModelVersion, RegistryReader  # noqa: E402
from tests.support.oip import publish  # noqa: E402
from tests.support.server import launch  # noqa: E402

FRONT_MODEL = REPO / "bench" / "triton_front" / "model.py"
PROVENANCE = 'output [\n  {\n    name: "served_by"\n    data_type: TYPE_STRING\n    dims: [ 1 ]\n  }\n]\n'


class ForwardingTriton(LocalTriton):
    """tritonserver that forwards the key and routing-key headers into each request's parameters."""

    def command(self) -> list[str]:
        return [*super().command(), "--http-header-forward-pattern=x-api-key|x-routing-key"]


async def publish_front(triton: LocalTriton, version: ModelVersion, name: str, instances: int) -> None:
    """The candidate's repository entry: Triton's own config for the model, with the service's model.py."""
    options = TritonConfigOptions(max_batch_size=32, platform=TritonPlatform.PYTHON_ONNX, instance_count=instances)
    config = render_config(name, version.signature, options)
    config += PROVENANCE + f'parameters {{ key: "served_model" value: {{ string_value: "{version.name}" }} }}\n'
    entry = triton.model_repository / name
    (entry / "1").mkdir(parents=True, exist_ok=True)
    (entry / "config.pbtxt").write_text(config)
    shutil.copyfile(FRONT_MODEL, entry / "1" / "model.py")
    client = httpclient.InferenceServerClient(triton.http_url, conn_timeout=300)
    try:
        await asyncio.wait_for(client.load_model(name), 300)
    finally:
        await client.close()


def measure(targets: list[HttpTarget], connections: int, seconds: int, rounds: int, work: Path) -> dict[str, list[Figures]]:
    figures: dict[str, list[Figures]] = {t.label: [] for t in targets}
    for target in targets:
        run_wrk(target, connections, 1, work)  # warm-up
    for _ in range(rounds):
        for target in targets:
            figures[target.label].append(run_wrk(target, connections, seconds, work))
    return figures


def report(title: str, figures: dict[str, list[Figures]], baseline: str) -> None:
    base = statistics.median(f.rps for f in figures[baseline])
    print(f"\n{title}")
    print(f"{'target':<40} {'rps':>9} {'p50 ms':>8} {'p99 ms':>8} {'x Triton rps':>13}  rounds (rps)")
    for label, runs in figures.items():
        rps = statistics.median(f.rps for f in runs)
        p50, p99 = statistics.median(f.p50 for f in runs), statistics.median(f.p99 for f in runs)
        bad = sum(f.bad for f in runs)
        print(f"{label:<40} {rps:9,.0f} {p50:8.2f} {p99:8.2f} {rps / base:13.2f}  "
              f"{', '.join(f'{f.rps:,.0f}' for f in runs)}{f'  ({bad} bad)' if bad else ''}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workers", default="1,2", help="service workers and candidate instances, comma-separated")
    parser.add_argument("--store", type=Path, help="registry with lstm-price (default: the demo registry, built)")
    args = parser.parse_args()
    store = ensure_store(args.store)
    version = RegistryReader(store).resolve(MODEL, stage="production")
    batch = next(iter(version.signature.synthetic_inputs(1).values()))
    work = Path(tempfile.mkdtemp(prefix="triton-front-bench-"))
    # The candidate's stub processes build their service from this environment, as a worker would.
    os.environ.update({"MODEL_STORE": str(store),
                       "AUDIT_DB_PATH": str(work / "front-audit.sqlite3"),
                       "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)})
    try:
        with ForwardingTriton(work / "triton-repo") as triton:
            asyncio.run(publish(triton, version, options=TritonConfigOptions(max_batch_size=32)))
            for workers in (int(w) for w in args.workers.split(",")):
                front = f"{MODEL}-front-{workers}"
                asyncio.run(publish_front(triton, version, front, workers))
                service = launch(store, workers=workers, env={"AUDIT_DB_PATH": str(work / f"audit-{workers}.sqlite3")},
                                 log_path=work / f"service-{workers}.log")
                try:
                    own = http_targets("http://127.0.0.1:1", service.url, f"http://{triton.http_url}", version, batch)
                    triton_own = next(t for t in own if t.label == "Triton HTTP JSON")
                    door = next(t for t in own if t.label == "service OIP REST JSON")
                    candidate = HttpTarget("Triton front (candidate) OIP REST JSON",
                                           triton_own.url.replace(f"/models/{MODEL}/", f"/models/{front}/"),
                                           triton_own.body, triton_own.headers, triton_own.decode)
                    targets = [triton_own, candidate, door]
                    reference = http_answer(triton_own)
                    for target in targets[1:]:
                        np.testing.assert_allclose(http_answer(target), reference, rtol=1e-4, atol=1e-4,
                                                   err_msg=target.label)
                    for connections in (32, 1):
                        figures = measure(targets, connections, args.seconds, args.rounds, work)
                        report(f"w{workers}, c={connections}, one row per request, {args.rounds} rounds of "
                               f"{args.seconds} s", figures, triton_own.label)
                finally:
                    service.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
