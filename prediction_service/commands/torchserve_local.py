"""``python -m prediction_service torchserve-local``: run a local TorchServe for development.

Binds 127.0.0.1 only. Token authorization stays on unless ``--disable-token-auth`` is given; the
key file's path is printed so the service can be pointed at it (TORCHSERVE_KEY_FILE).
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("torchserve-local", help="run a local TorchServe on loopback (development)",
                                   description=__doc__)
    parser.add_argument("--inference-port", type=int, default=8080)
    parser.add_argument("--management-port", type=int, default=8081)
    parser.add_argument("--metrics-port", type=int, default=8082)
    parser.add_argument("--model-store", type=Path, default=Path("model_store/.torchserve-store"),
                        help="directory of .mar files (TORCHSERVE_MODEL_STORE must point at the same one)")
    parser.add_argument("--work-dir", type=Path, default=Path("var/torchserve"),
                        help="config.properties, logs and key_file.json go here")
    parser.add_argument("--disable-token-auth", action="store_true",
                        help="turn TorchServe's token authorization off (tests only)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .servers.torchserve import LocalTorchServe, TorchServePorts

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ports = TorchServePorts(inference=args.inference_port, management=args.management_port, metrics=args.metrics_port)
    server = LocalTorchServe(args.model_store, args.work_dir, ports=ports, token_auth=not args.disable_token_auth)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with server:
        print(f"TorchServe inference  {server.inference_url}")
        print(f"TorchServe management {server.management_url}")
        print(f"model store           {server.model_store}")
        print(f"logs                  {server.log_dir}")
        if server.token_auth:
            print(f"key file              {server.key_file}  (export TORCHSERVE_KEY_FILE={server.key_file})")
        else:
            print("token authorization   DISABLED")
        while not stop.wait(1.0):
            if not server.running:
                print(f"TorchServe exited; see {server.log_dir}")
                return 1
    return 0
