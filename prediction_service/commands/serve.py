"""``serve``: run the REST API with uvicorn.

More than one worker: metrics go through prometheus_client's multiprocess mode, in a fresh
``PROMETHEUS_MULTIPROC_DIR`` (a new temporary directory, or the one given, emptied) so counters never
carry over from an earlier run. SIGTERM: readiness turns false, uvicorn stops accepting, in-flight
requests finish (``SERVER_SHUTDOWN_GRACE_SECONDS``), the audit log flushes, and the process exits 0.
"""

from __future__ import annotations

import argparse
import logging
import logging.config
import os
import shutil
import signal
import socket
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("serve", help="start the REST API (settings from env / .env)")
    parser.add_argument("--host", help="bind address (default SERVER_HOST or 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default SERVER_PORT or 8000; 0 = any free port)")
    parser.add_argument("--port-file", type=Path,
                        help="write the port the server bound here once it listens (with --port 0: which one)")
    parser.add_argument("--grpc-port", type=int,
                        help="Open Inference Protocol gRPC port (default SERVER_GRPC_PORT or 8001; 0 = none)")
    parser.add_argument("--grpc-port-file", type=Path,
                        help="serve gRPC on a free port the system picks (held from before any worker starts, so "
                             "no other process can take it) and write it here")
    parser.add_argument("--workers", type=int, help="worker processes (default SERVER_WORKERS or 1)")
    parser.add_argument("--store", help="model registry root (default MODEL_STORE)")
    parser.add_argument("--log-level", default="info")
    parser.set_defaults(func=run)


def _fresh_multiprocess_dir() -> Path | None:
    """Workers share metric files here; start empty so old runs' counts do not leak in.
    Returns the directory to delete at exit (None when the operator chose it)."""
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if given:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):
            stale.unlink()
        return None
    path = Path(tempfile.mkdtemp(prefix="prediction-service-metrics-"))
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)  # inherited by the worker processes
    return path


LOG_FORMAT = "%(asctime)s %(levelname)s %(process)d %(name)s: %(message)s"


def _log_config(level: str) -> dict:
    """One format (time, level, pid) for uvicorn's and the service's lines, in every worker process."""
    handler = {"class": "logging.StreamHandler", "formatter": "plain", "stream": "ext://sys.stderr"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"plain": {"format": LOG_FORMAT}},
        "handlers": {"stderr": handler},
        "loggers": {
            "prediction_service": {"handlers": ["stderr"], "level": level.upper(), "propagate": False},
            "uvicorn": {"handlers": ["stderr"], "level": level.upper(), "propagate": False},
            "uvicorn.access": {"handlers": ["stderr"], "level": "WARNING", "propagate": False},
        },
    }


def run(args: argparse.Namespace) -> int:
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    from ..registry.fsutil import atomic_write_bytes
    from ..settings import Settings

    if args.store:
        os.environ["MODEL_STORE"] = args.store  # workers are separate processes: pass it by env
    if args.grpc_port is not None:
        os.environ["SERVER_GRPC_PORT"] = str(args.grpc_port)  # each worker binds it (SO_REUSEPORT)
    grpc_hold = None
    if args.grpc_port_file is not None:
        grpc_hold = _hold_free_port(args.host or Settings().server.host)
        os.environ["SERVER_GRPC_PORT"] = str(grpc_hold.getsockname()[1])
        atomic_write_bytes(args.grpc_port_file, os.environ["SERVER_GRPC_PORT"].encode())
    settings = Settings()
    log_config = _log_config(args.log_level)
    logging.config.dictConfig(log_config)
    workers = args.workers or settings.server.workers
    # One worker keeps metrics in memory unless the operator named a directory (then it is prepared too).
    multiprocess = workers > 1 or bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
    temporary_metrics_dir = _fresh_multiprocess_dir() if multiprocess else None
    # uvicorn re-raises the signal that stopped it once it has shut down gracefully; with this handler in
    # place that is a no-op, so a drained SIGTERM ends with exit code 0 instead of death by signal.
    signal.signal(signal.SIGTERM, lambda *_: log.info("SIGTERM handled: graceful shutdown complete"))
    config = uvicorn.Config(
        "prediction_service.api.app:create_serving_app",  # REST and gRPC doors
        factory=True,
        host=args.host or settings.server.host,
        port=settings.server.port if args.port is None else args.port,
        workers=workers,
        log_level=args.log_level,
        log_config=log_config,  # worker processes configure logging from this, not from our basicConfig
        timeout_graceful_shutdown=settings.server.shutdown_grace_seconds,  # type: ignore[arg-type]
        access_log=False,
    )
    # Bound here, before any worker starts: with port 0 the port is known (and reported) without the
    # bind-close-rebind race of picking a free port first.
    sock = config.bind_socket()
    if args.port_file is not None:
        atomic_write_bytes(args.port_file, str(sock.getsockname()[1]).encode())
    server = uvicorn.Server(config)
    try:
        if workers > 1:
            Multiprocess(config, sockets=[sock]).run()
        else:
            server.run(sockets=[sock])
            if not server.started:
                return 3
    finally:
        if temporary_metrics_dir is not None:
            shutil.rmtree(temporary_metrics_dir, ignore_errors=True)
        if grpc_hold is not None:
            grpc_hold.close()
    return 0


def _hold_free_port(host: str) -> socket.socket:
    """A port the system picks, bound (never listening) with SO_REUSEPORT: the workers' gRPC servers bind it
    beside this socket and take its connections, and no other process can take the port meanwhile."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, 0))
    return sock
