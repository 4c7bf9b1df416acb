"""``audit``: from the prediction audit log, which version(s) of a model served at a given second, or
what happened to one request (by the ``X-Request-Id`` every response carries, failed ones included).
Reads the configured state backend: PostgreSQL when STATE_DATABASE_URL is set, else the SQLite file."""

from __future__ import annotations

import argparse
import os
from datetime import datetime


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("audit", help="which model version served at an instant, or one request (audit log)")
    query = parser.add_mutually_exclusive_group(required=True)
    query.add_argument("--at", type=_instant, help="UTC instant, ISO-8601, e.g. 2026-11-22T14:32:05Z (no offset = UTC);"
                                                   " needs --model")
    query.add_argument("--request-id", help="one request, by the X-Request-Id its response carried")
    parser.add_argument("--model", help="model name (with --at)")
    parser.add_argument("--store", help="model registry root (default MODEL_STORE); the SQLite log is <store>/.state/")
    parser.add_argument("--db", help="an SQLite audit file to read, whatever STATE_DATABASE_URL says "
                                     "(default: STATE_DATABASE_URL, else AUDIT_DB_PATH or "
                                     "<store>/.state/audit.sqlite3)")
    parser.set_defaults(func=run)


def _instant(text: str) -> datetime:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO-8601 instant: {text!r}") from None


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..monitoring.audit import AuditReader, audit_db_path
    from ..settings import Settings, StateSettings
    from ..state import StateUnavailable

    if args.store:
        os.environ["MODEL_STORE"] = args.store
    settings = Settings()
    path, state = (Path(args.db), StateSettings(database_url=None)) if args.db else (audit_db_path(settings),
                                                                                    settings.state)
    try:
        reader = AuditReader(path, state)
        return _query(reader, args)
    except (FileNotFoundError, StateUnavailable) as exc:
        print(f"error: {exc}")
        return 2


def _query(reader, args: argparse.Namespace) -> int:
    if args.request_id:
        return _show_request(reader, args.request_id)
    if not args.model:
        print("error: --at needs --model")
        return 2
    lookup = reader.which_version(args.model, args.at)
    second = lookup.second.strftime("%Y-%m-%dT%H:%M:%SZ")
    if lookup.served:
        print(f"{args.model} at {second}:")
        for served in lookup.served:
            extra = f" arm={served.arm}" if served.arm else ""
            print(f"  version {served.version} (stage {served.stage or '-'}{extra}): {served.requests} "
                  f"predictions, {served.first} .. {served.last}")
        return 0
    print(f"{args.model} at {second}: no predictions in that second")
    oldest = reader.oldest()
    if lookup.before is None and oldest is not None and oldest > second:
        print(f"  the audit log starts at {oldest}; older records may have been deleted by AUDIT_RETENTION_DAYS")
    if lookup.before is not None:
        print(f"  last before: version {lookup.before.version} (stage {lookup.before.stage or '-'}) "
              f"at {lookup.before.ts}, request {lookup.before.request_id}")
    if lookup.after is not None:
        print(f"  first after: version {lookup.after.version} (stage {lookup.after.stage or '-'}) "
              f"at {lookup.after.ts}, request {lookup.after.request_id}")
    return 0 if lookup.before or lookup.after else 1


def _show_request(reader, request_id: str) -> int:
    entry = reader.request(request_id)
    if entry is None:
        print(f"request {request_id}: not in the audit log")
        return 1
    fields = {"time": entry.ts, "model": entry.model, "version": entry.version, "stage": entry.stage,
              "arm": entry.arm, "status": entry.status, "error": entry.error_code, "latency_ms": entry.latency_ms,
              "backend": entry.backend, "trace_id": entry.trace_id}
    print(f"request {request_id}:")
    for name, value in fields.items():
        if value is not None:
            print(f"  {name:<10} {value}")
    return 0
