"""Prints state-database figures on the configured backend (STATE_DATABASE_URL, else SQLite files in a
temp dir): the audit writer's batch transaction (records/s) and one registry event write.

    python bench/state_bench.py [--batches 40]
    STATE_DATABASE_URL=postgresql://... python bench/state_bench.py
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from prediction_service.types import PredictionRecord, RequestContext
from prediction_service.monitoring.audit import AuditLog
from prediction_service.registry.events import EventLog
from prediction_service.settings import AuditSettings, StateSettings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=40)
    args = parser.parse_args()
    state = StateSettings()
    print(f"backend: {'postgresql' if state.database_url else 'sqlite'}")
    with tempfile.TemporaryDirectory() as tmp:
        log = AuditLog(AuditSettings(), Path(tmp) / "audit.sqlite3", state)
        db = log._open()
        inputs = {"x": np.arange(4, dtype=np.float32).reshape(1, 4)}
        batch = [PredictionRecord(RequestContext(received_at=time.time()), "m", "1.0.0", "production", None, None,
                                  1.5, 200, inputs=inputs, outputs=inputs) for _ in range(log.settings.batch_size)]
        rates = []
        for _ in range(args.batches):
            start = time.perf_counter()
            log._write(db, batch)
            rates.append(len(batch) / (time.perf_counter() - start))
        print(f"audit batch of {len(batch)} (hash payloads), one transaction: median {statistics.median(rates):,.0f}"
              f" records/s over {args.batches} batches")
        events = EventLog(Path(tmp) / "events.sqlite3", state=state)
        events.record("loaded", "m", "1.0.0", actor="bench")  # schema and connection
        times = []
        for i in range(200):
            start = time.perf_counter()
            events.record("loaded", "m", f"1.0.{i}", actor="bench")
            times.append((time.perf_counter() - start) * 1e6)
        print(f"registry event write: median {statistics.median(times):,.0f} us")


if __name__ == "__main__":
    main()
