"""``state migrate``: create / upgrade the state schema (experiments, audit log, registry events) where
the settings put it. ``state copy``: move an existing SQLite state (the files under <store>/.state/) into
the PostgreSQL of STATE_DATABASE_URL, every row, before switching the pods to it."""

from __future__ import annotations

import argparse
import os


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("state", help="the shared state database: migrate the schema, copy SQLite -> "
                                                 "PostgreSQL")
    commands = parser.add_subparsers(dest="state_command", required=True)
    migrate = commands.add_parser("migrate", help="create or upgrade the schema (STATE_DATABASE_URL, else the "
                                                  "SQLite files under <store>/.state/)")
    migrate.add_argument("--store", help="model registry root (default MODEL_STORE)")
    migrate.set_defaults(func=run_migrate)
    copy = commands.add_parser("copy", help="copy the SQLite state of a store into an empty PostgreSQL")
    copy.add_argument("--store", help="model registry root whose .state/ holds the SQLite files (default MODEL_STORE)")
    copy.add_argument("--to", help="target postgresql:// URL (default STATE_DATABASE_URL)")
    copy.set_defaults(func=run_copy)


def _sqlite_paths(args: argparse.Namespace) -> dict:
    from ..monitoring.audit import audit_db_path
    from ..registry.events import EVENTS_FILE
    from ..settings import Settings
    from ..state.tables import AUDIT, EVENTS, EXPERIMENTS

    if args.store:
        os.environ["MODEL_STORE"] = args.store
    settings = Settings()
    return {EXPERIMENTS: settings.experiments.db_path or settings.state_dir / "experiments.sqlite3",
            AUDIT: audit_db_path(settings), EVENTS: settings.state_dir / EVENTS_FILE}


def run_migrate(args: argparse.Namespace) -> int:
    from ..settings import StateSettings
    from ..state import StateUnavailable, open_database
    from ..state.migrate import upgrade

    state = StateSettings()
    try:
        for area, path in _sqlite_paths(args).items():
            db = open_database(state, path)
            before, now = upgrade(db, area)
            change = f"{before or '(empty)'} -> {now}" if before != now else f"at {now} (current)"
            print(f"{area:<12} {db.description}: {change}")
    except StateUnavailable as exc:
        print(f"error: {exc}")
        return 2
    return 0


def run_copy(args: argparse.Namespace) -> int:
    from ..settings import StateSettings
    from ..state import StateUnavailable, postgresql_database, sqlite_database
    from ..state.copy import TargetNotEmpty, copy_area

    url = args.to or StateSettings().database_url
    if not url:
        print("error: no target: pass --to postgresql://... or set STATE_DATABASE_URL")
        return 2
    target = postgresql_database(url)
    total = 0
    try:
        for area, path in _sqlite_paths(args).items():
            if not path.is_file():
                print(f"{area:<12} {path}: no such file, nothing to copy")
                continue
            for table in copy_area(sqlite_database(path), target, area):
                print(f"{area:<12} {table.table}: {table.source_rows} rows copied")
                total += table.target_rows
    except (StateUnavailable, TargetNotEmpty) as exc:
        print(f"error: {exc}")
        return 2
    print(f"{total} rows in {target.description}; point STATE_DATABASE_URL at it and restart the servers")
    return 0
