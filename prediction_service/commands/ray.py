"""``python -m prediction_service ray run | profile``: the service on Ray Serve.

``ray run`` starts a local Ray (or joins ``--address``), deploys the application (the same app as
``serve``, in Serve replicas) and serves until SIGINT / SIGTERM, then deletes it and leaves Ray.
Production clusters use the Serve config files in ``deploy/ray/`` with ``serve deploy`` instead.
``ray profile`` names the autoscaling profile in force now (market hours or off hours) and with
``--apply`` deploys it with ``serve deploy``: run it from cron every few minutes.

Ray is imported only here, inside the commands: ``serve`` and the embedded default never load it.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
from datetime import datetime, timezone
from pathlib import Path

from ..deploy.profiles import CONFIG_DIR, TradingSchedule

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("ray", help="run on Ray Serve (needs requirements-ray.txt)")
    commands = parser.add_subparsers(dest="ray_command", required=True)
    run = commands.add_parser("run", help="deploy the application on a local (or given) Ray cluster and serve")
    run.add_argument("--store", type=Path, help="model registry root (default MODEL_STORE)")
    run.add_argument("--address", help="an existing Ray cluster (default: start a local one)")
    run.add_argument("--host", default="127.0.0.1", help="Serve proxy bind address (default 127.0.0.1)")
    run.add_argument("--port", type=int, default=8000, help="Serve proxy HTTP port (default 8000)")
    run.add_argument("--replicas", type=int, default=2, help="fixed replica count (default 2)")
    run.add_argument("--replica-cpus", type=float, default=1.0, help="CPUs reserved per replica (default 1)")
    run.add_argument("--replica-gpus", type=float, default=0.0,
                     help="GPU fraction reserved per replica, e.g. 0.5 (where GPUs are present; default 0)")
    run.add_argument("--num-cpus", type=int, help="CPUs of the local Ray node (default: all)")
    run.set_defaults(func=_run)
    profile = commands.add_parser("profile", help="the autoscaling profile in force (market hours / off hours)")
    profile.add_argument("--at", type=datetime.fromisoformat, help="ISO time with offset (default: now)")
    profile.add_argument("--config-dir", type=Path, default=CONFIG_DIR, help="where the profile YAMLs are")
    profile.add_argument("--apply", action="store_true", help="serve deploy the profile's config file")
    profile.add_argument("--address", help="Ray dashboard address for serve deploy (default: serve's own)")
    profile.set_defaults(func=_profile)


def _profile(args: argparse.Namespace) -> int:
    moment = args.at or datetime.now(timezone.utc)
    path = TradingSchedule().profile_at(moment).config_path(args.config_dir)
    print(path)
    if not args.apply:
        return 0
    serve_cli = shutil.which("serve") or str(Path(sys.executable).with_name("serve"))
    command = [serve_cli, "deploy", str(path)] + (["--address", args.address] if args.address else [])
    return subprocess.run(command, check=False).returncode


def deployment_options(args: argparse.Namespace) -> dict:
    """The Serve deployment options ``ray run`` deploys with: fixed replicas and what each reserves."""
    if args.replica_gpus < 0 or args.replica_cpus <= 0:
        raise SystemExit("--replica-cpus must be > 0 and --replica-gpus >= 0")
    actor: dict[str, float] = {"num_cpus": args.replica_cpus}
    if args.replica_gpus:  # Ray then places the replica on a GPU node and sets its CUDA_VISIBLE_DEVICES
        actor["num_gpus"] = args.replica_gpus
    return {"num_replicas": args.replicas, "ray_actor_options": actor}


def _run(args: argparse.Namespace) -> int:
    import ray
    from ray import serve

    from ..deploy.ray_serve import RayAppArgs, application
    from ..settings import Settings

    store = args.store or Settings().model_store
    env = {"MODEL_STORE": str(Path(store).resolve()), "SERVER_GRPC_PORT": "0"}
    if args.address:
        ray.init(address=args.address)
    else:  # replicas must import this package: hand them our path
        root = str(Path(__file__).resolve().parents[2])
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
        ray.init(num_cpus=args.num_cpus, include_dashboard=False)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": args.host, "port": args.port})
        serve.run(application(RayAppArgs(env=env), **deployment_options(args)), name="prediction", route_prefix="/")
        print(f"serving {store} on http://{args.host}:{args.port} with {args.replicas} Serve replicas", flush=True)
        stop.wait()
        if args.address:  # a shared cluster stays up: take our application off it (replicas drain)
            serve.delete("prediction")
    finally:
        ray.shutdown()  # a local cluster goes with us (a Ctrl-C may already have stopped its processes)
    return 0
