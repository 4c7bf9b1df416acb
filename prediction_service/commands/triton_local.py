"""``triton-local``: run the tritonserver shipped with nvidia-pytriton in the foreground, on loopback,
with explicit model control, for ``SERVING_ADAPTER_TYPE=triton`` on a development machine."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path
from types import FrameType


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("triton-local", help="run a local Triton Inference Server (foreground)")
    parser.add_argument("--http-port", type=int, default=8010, help="HTTP port (default 8010)")
    parser.add_argument("--grpc-port", type=int, default=8011, help="gRPC port (default 8011)")
    parser.add_argument("--metrics-port", type=int, default=8012, help="metrics port (default 8012)")
    parser.add_argument(
        "--model-repository", type=Path, default=None,
        help="Triton model repository (default: TRITON_MODEL_REPOSITORY or <MODEL_STORE>/.triton-repo)",
    )
    parser.add_argument("--log-file", type=Path, default=None, help="server log (default: beside the repository)")
    parser.add_argument("--grpc-cert", type=Path, default=None,
                        help="serve gRPC over TLS with this PEM certificate chain (with --grpc-key)")
    parser.add_argument("--grpc-key", type=Path, default=None, help="PEM private key for --grpc-cert")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .servers.triton import GrpcTls, LocalTriton, TritonNotInstalled
    from ..settings import Settings

    if (args.grpc_cert is None) != (args.grpc_key is None):
        print("error: --grpc-cert and --grpc-key go together", file=sys.stderr)
        return 2
    for path in (args.grpc_cert, args.grpc_key):
        if path is not None and not path.is_file():
            print(f"error: {path} is not a file", file=sys.stderr)
            return 2
    tls = GrpcTls(args.grpc_cert, args.grpc_key) if args.grpc_cert else None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings()
    repository = args.model_repository or settings.triton.model_repository or settings.model_store / ".triton-repo"
    try:
        server = LocalTriton(
            repository, http_port=args.http_port, grpc_port=args.grpc_port,
            metrics_port=args.metrics_port, log_path=args.log_file, grpc_tls=tls,
        )
    except TritonNotInstalled as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    def stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    with server:
        print(
            f"Triton ready: HTTP {server.http_url}, gRPC {server.grpc_url}, "
            f"repository {server.model_repository}, log {server.log_path}\n"
            f"Serve through it with SERVING_ADAPTER_TYPE=triton TRITON_SERVER_URL={server.http_url} "
            f"TRITON_SERVER_GRPC_URL={server.grpc_url} TRITON_MODEL_REPOSITORY={server.model_repository}"
            + (" TRITON_USE_GRPC=true TRITON_SSL=true TRITON_CA_CERTIFICATES=<your CA file>" if tls else ""),
            flush=True,
        )
        try:
            code = server.wait()
        except KeyboardInterrupt:
            print("stopping Triton", flush=True)
            return 0
    print(f"tritonserver exited with code {code}; see {server.log_path}", file=sys.stderr)
    return 1 if code else 0
