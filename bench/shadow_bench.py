"""What a shadow experiment costs production: the champion's latency with shadow copies on and off.

    python bench/shadow_bench.py [--seconds 10] [--store DIR]

One run, on 127.0.0.1, the demo's lstm-price served by one worker. A copy of the production version is
registered as the challenger (same contract, so its copies run the same model). First the capacity: a
closed loop of 8 connections for ``--seconds``. Then, ``--rounds`` times, an open-loop client sends at half
that rate (a request every 2/capacity seconds, whatever the answers) for ``--seconds`` per phase: with no
experiment, with a 10 % split experiment (what recording every request for an experiment costs, for
reference), while a shadow experiment copies every request to the challenger, and while one copies a random
quarter of them (``shadow_fraction`` 0.25). Prints the median over rounds of each phase's p50/p99, the ratios
(target: p99 with shadow on within 1.10x of no experiment) and how many copies ran or were shed (copies use
idle capacity only and give way to production). Between phases the server settles (audit backlog written,
queued copies run), so one phase's leftovers are not the next one's tail.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import aiohttp  # noqa: E402
import httpx  # noqa: E402
import orjson  # noqa: E402
from loadgen import LoadResult, client_gc_paused, run_load  # noqa: E402
from serve_bench import ensure_store  # noqa: E402

from tests.support.server import launch  # noqa: E402

MODEL = "lstm-price"
CHALLENGER = "9.0.0-shadow"
P99_TARGET = 1.10
SPLIT = "split 10 % (reference)"
PHASES: dict[str, dict | None] = {
    "no experiment": None,
    SPLIT: {"kind": "split", "traffic_split": 0.1},
    "shadow on": {"kind": "shadow"},
    "shadow, 1 in 4 copied": {"kind": "shadow", "shadow_fraction": 0.25},
}


def add_challenger(store: Path) -> str:
    """Register a copy of production's version as the challenger; returns the champion's version."""
    from prediction_service.registry import RegistryReader
    from prediction_service.registry.writer import ArtifactSource, register_version

    champion = RegistryReader(store).resolve(MODEL, stage="production")
    if not (store / MODEL / f"v{CHALLENGER}").exists():
        metadata = champion.metadata.model_copy(update={"version": CHALLENGER, "status": "none"})
        sources = [ArtifactSource(champion.artifact_path(a), a.format, a.precision, a.file)
                   for a in champion.metadata.artifacts]
        extras = [p for p in champion.path.iterdir() if p.is_file() and p.name != "metadata.json"
                  and p.name not in {a.file for a in champion.metadata.artifacts}]
        register_version(store, metadata, sources, extra_files=extras)
    return champion.version


async def paced(url: str, body: dict, rate: float, seconds: float, label: str) -> LoadResult:
    """Open loop: one request every 1/rate s for ``seconds``, each timed from when it was due."""
    payload = orjson.dumps(body)
    result = LoadResult(label, seconds)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256)) as session:
        async def one(due: float) -> None:
            async with session.post(url, data=payload, headers={"content-type": "application/json"}) as response:
                await response.read()
                result.statuses[response.status] += 1
                if response.status == 200:
                    result.latencies_ms.append((time.perf_counter() - due) * 1000.0)

        with client_gc_paused():
            began = time.perf_counter()
            tasks, sent = [], 0
            while (due := began + sent / rate) < began + seconds:
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
                tasks.append(asyncio.create_task(one(due)))
                sent += 1
            await asyncio.gather(*tasks, return_exceptions=True)
    return result


def start(base: str, champion: str, **spec) -> str:
    created = httpx.post(f"{base}/v1/experiments", timeout=30, json={
        "model_name": MODEL, "champion_version": champion, "challenger_version": CHALLENGER, "task": "regression",
        **spec})
    created.raise_for_status()
    time.sleep(1.5)  # every worker's route cache sees the experiment
    return created.json()["id"]


def settle(base: str, quiet_s: float = 1.0, timeout_s: float = 30.0) -> None:
    """Until the last phase's work behind its answers is done (audit backlog written, queued copies run), so
    that it is not measured as the next phase's tail."""
    deadline = time.monotonic() + timeout_s
    while metric(base, "prediction_audit_backlog") > 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(quiet_s)


def metric(base: str, name: str) -> float:
    text = httpx.get(f"{base}/metrics", timeout=10).text
    return sum(float(v) for v in re.findall(rf"^{name}(?:\{{[^}}]*\}})? ([0-9.e+]+)$", text, re.MULTILINE))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds per phase")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the three phases, back to back")
    parser.add_argument("--store", type=Path, help="registry with lstm-price (default: the demo registry, built)")
    args = parser.parse_args()
    from prediction_service.registry import RegistryReader

    source = ensure_store(args.store)
    store = Path(tempfile.mkdtemp(prefix="shadow-bench-")) / "store"
    shutil.copytree(source, store, symlinks=True)
    champion = add_challenger(store)
    version = RegistryReader(store).resolve(MODEL, stage="production")
    name = version.signature.inputs[0].name
    body = {"instance": version.signature.synthetic_inputs(1)[name][0].tolist()}

    phases: dict[str, list[LoadResult]] = {label: [] for label in PHASES}
    copies: dict[str, list[float]] = {label: [0.0, 0.0] for label, spec in PHASES.items() if spec and spec["kind"] == "shadow"}
    """Per shadow phase: copies run, copies shed."""
    server = launch(store, workers=1)
    try:
        url = f"{server.url}/v1/models/{MODEL}/predict"
        capacity = asyncio.run(run_load(url, body, concurrency=8, seconds=args.seconds, warmup_seconds=1.0,
                                        label="capacity (c=8)"))
        rate = capacity.throughput / 2
        print(f"{MODEL}, 1 worker, {os.cpu_count()} cores shared by client and server; {capacity.line()}\n"
              f"open loop at half capacity: {rate:.0f} req/s, {args.seconds:g} s per phase, {args.rounds} rounds",
              flush=True)
        settle(server.url)
        for _ in range(args.rounds):
            for label, spec in PHASES.items():
                experiment = start(server.url, champion, **spec) if spec else None
                runs_before, shed_before = (metric(server.url, "prediction_shadow_runs_total"),
                                            metric(server.url, "prediction_shadow_shed_total"))
                result = asyncio.run(paced(url, body, rate, args.seconds, label))
                phases[label].append(result)
                print(f"  {result.line()}", flush=True)
                if experiment is not None:
                    httpx.post(f"{server.url}/v1/experiments/{experiment}/stop", timeout=30).raise_for_status()
                settle(server.url)
                if label in copies:
                    copies[label][0] += metric(server.url, "prediction_shadow_runs_total") - runs_before
                    copies[label][1] += metric(server.url, "prediction_shadow_shed_total") - shed_before
    finally:
        server.stop()
        shutil.rmtree(store.parent, ignore_errors=True)  # its audit and experiment records: ~1 GB a run

    def median_of(label: str, q: float) -> float:
        return statistics.median(r.percentile(q) for r in phases[label])

    print(f"\n{'median over rounds':<24} {'p50 ms':>8} {'p99 ms':>8}")
    for label in phases:
        print(f"{label:<24} {median_of(label, 50):8.2f} {median_of(label, 99):8.2f}")
    baseline = median_of("no experiment", 99)
    for label, (runs, shed) in copies.items():
        p99_x = median_of(label, 99) / baseline
        answered = sum(r.ok for r in phases[label])
        print(f"p99 {label} / no experiment: x{p99_x:.2f} (target <= x{P99_TARGET}: "
              f"{'met' if p99_x <= P99_TARGET else 'MISSED'}); p50 "
              f"x{median_of(label, 50) / median_of('no experiment', 50):.2f}; copies run {runs:.0f}, shed {shed:.0f}, "
              f"of {answered} production answers")
    print(f"the split's cost for reference: p99 x{median_of(SPLIT, 99) / baseline:.2f} (it records every request "
          "for its experiment too, and sends a tenth of them to a second model)")

if __name__ == "__main__":
    main()
