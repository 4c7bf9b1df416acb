"""Prints hot-path figures of the experiment service: route() with its cache, record_prediction()
and record_outcome() SQLite writes, and analyze() over a large experiment.

    python bench/experiments_bench.py [--requests 20000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from prediction_service.experiments.models import ExperimentSpec
from prediction_service.experiments.service import ExperimentService
from prediction_service.experiments.store import ExperimentStore
from prediction_service.settings import ExperimentSettings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    args = parser.parse_args()
    n = args.requests
    with tempfile.TemporaryDirectory() as tmp:
        service = ExperimentService(ExperimentStore(Path(tmp) / "exp.sqlite3"), ExperimentSettings(), None,
                                    lambda name, version: True)
        exp = service.create(ExperimentSpec(model_name="m", champion_version="1", challenger_version="2"))

        start = time.perf_counter()
        assignments = [service.route("m", f"key-{i}") for i in range(n)]
        route_us = (time.perf_counter() - start) / n * 1e6
        ttl = service.settings.route_cache_ttl_seconds
        print(f"route():              {route_us:8.1f} us/call (cached, TTL {ttl}s)")

        probs = np.array([[0.2, 0.8]], dtype=np.float32)
        start = time.perf_counter()
        for i, assignment in enumerate(assignments):
            service.record_prediction(f"r{i}", assignment, 3.0, False, probs)
        record_us = (time.perf_counter() - start) / n * 1e6
        print(f"record_prediction():  {record_us:8.1f} us/call (one SQLite transaction each, WAL)")

        rng = np.random.default_rng(0)
        start = time.perf_counter()
        for i in range(n):
            service.record_outcome(f"r{i}", int(rng.random() < 0.7), pnl=float(rng.normal()))
        outcome_us = (time.perf_counter() - start) / n * 1e6
        print(f"record_outcome():     {outcome_us:8.1f} us/call")

        start = time.perf_counter()
        analysis = service.analyze(exp.id)
        print(f"analyze():            {(time.perf_counter() - start) * 1e3:8.1f} ms for {n} scored requests "
              f"(decision {analysis.decision.value})")


if __name__ == "__main__":
    main()
