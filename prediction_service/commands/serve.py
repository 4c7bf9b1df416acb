"""``serve``: run the REST API with uvicorn."""

from __future__ import annotations

import argparse
import logging


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("serve", help="start the REST API (settings from env / .env)")
    parser.add_argument("--host", help="bind address (default SERVER_HOST or 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default SERVER_PORT or 8000)")
    parser.add_argument("--workers", type=int, help="worker processes (default SERVER_WORKERS or 1)")
    parser.add_argument("--store", help="model registry root (default MODEL_STORE)")
    parser.add_argument("--log-level", default="info")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import os

    import uvicorn

    from ..settings import Settings

    if args.store:
        os.environ["MODEL_STORE"] = args.store  # workers are separate processes: pass it by env
    settings = Settings()
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(
        "prediction_service.api.app:create_app",
        factory=True,
        host=args.host or settings.server.host,
        port=args.port or settings.server.port,
        workers=args.workers or settings.server.workers,
        log_level=args.log_level,
        timeout_graceful_shutdown=int(settings.server.shutdown_grace_seconds),
        access_log=False,
    )
    return 0
