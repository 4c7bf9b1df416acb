"""What an audit record costs the writer as the table grows, with random and with time-ordered request ids.

    python bench/audit_index_bench.py [--rows 1000000] [--batches 200]

The audit log indexes request ids (``audit --request-id``). Random ids (128 random bits, the scheme before
UUIDv7) land on random pages of that B-tree, so each insert into a large table touches pages the cache
does not hold; UUIDv7 ids (prediction_service/request_ids.py) grow at the index's right edge. For each
scheme this fills a fresh SQLite audit table (the project's schema, through its migrations) with
``--rows`` records, then times ``--batches`` writer batches (the real ``AuditLog._write``: 256 records,
one transaction, sha256 payloads) and prints writer CPU and wall time per record, and the ratio.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from prediction_service.types import PredictionRecord, RequestContext  # noqa: E402
from prediction_service.monitoring.audit import COLUMNS, AuditLog, table  # noqa: E402
from prediction_service.state.driver_sql import insert_rows  # noqa: E402
from prediction_service.request_ids import new_request_id, random_request_id  # noqa: E402
from prediction_service.settings import AuditSettings, StateSettings  # noqa: E402

SCHEMES = {"random ids": random_request_id, "UUIDv7 ids": new_request_id}


def records(count: int, make_id) -> list[PredictionRecord]:
    window = {"ohlcv": np.random.default_rng(0).normal(1.0, 0.01, (1, 60, 5)).astype(np.float32)}
    price = {"price": np.ones((1, 1), dtype=np.float32)}
    out = []
    for _ in range(count):
        record = PredictionRecord(RequestContext(request_id=make_id()), "lstm-price", "1.0.0", "production",
                                  None, None, 1.5, 200, backend="onnxruntime")
        record.inputs, record.outputs = window, price
        out.append(record)
    return out


def fill(log: AuditLog, db, rows: int, make_id) -> None:
    """``rows`` older records, straight through the driver (their payload columns hold a fixed hash)."""
    start = time.time() - rows * 1e-3
    chunk = 50_000
    for first in range(0, rows, chunk):
        batch = [("2026-01-01T00:00:00.000Z", start + i * 1e-3, make_id(), "lstm-price", "1.0.0", "production",
                  None, None, 1.5, 200, None, "onnxruntime", None, "ab" * 32, "cd" * 32, None)
                 for i in range(first, min(rows, first + chunk))]
        with db.write() as conn:
            insert_rows(conn, table, COLUMNS, batch)


def measure(rows: int, batches: int, make_id) -> tuple[float, float]:
    with tempfile.TemporaryDirectory(prefix="audit-index-") as tmp:
        log = AuditLog(AuditSettings(), Path(tmp) / "audit.sqlite3", StateSettings(database_url=None))
        db = log._open()
        fill(log, db, rows, make_id)
        pending = [records(log.settings.batch_size, make_id) for _ in range(batches)]
        cpu, wall = time.process_time(), time.perf_counter()
        for batch in pending:
            log._write(db, batch)
        done = batches * log.settings.batch_size
        return (time.process_time() - cpu) / done * 1e6, (time.perf_counter() - wall) / done * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="records in the table before timing")
    parser.add_argument("--batches", type=int, default=200, help="timed writer batches (256 records each)")
    args = parser.parse_args()
    figures = {}
    for name, make_id in SCHEMES.items():
        print(f"filling {args.rows:,} rows ({name}) ...", flush=True)
        figures[name] = measure(args.rows, args.batches, make_id)
        cpu, wall = figures[name]
        print(f"  {name:12s} {cpu:6.1f} us CPU / record   {wall:6.1f} us wall / record", flush=True)
    (rcpu, rwall), (tcpu, twall) = figures["random ids"], figures["UUIDv7 ids"]
    print(f"random / UUIDv7: CPU x{rcpu / tcpu:.2f}, wall x{rwall / twall:.2f} at {args.rows:,} rows")


if __name__ == "__main__":
    main()
