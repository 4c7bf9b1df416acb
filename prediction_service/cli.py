"""``python -m prediction_service <command>``. Each command lives in its own module under
``prediction_service/commands/`` with ``register(subparsers)``; the parsed args carry ``func``."""

from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES = [
    "prediction_service.commands.serve",
    "prediction_service.commands.config_example",
    "prediction_service.commands.torchserve_local",
    "prediction_service.commands.registry",
    "prediction_service.commands.ensemble",
    "prediction_service.commands.package",
    "prediction_service.commands.setup_demo",
    "prediction_service.commands.triton_local",
    "prediction_service.commands.audit",
    "prediction_service.commands.experiments",
    "prediction_service.commands.state",
    "prediction_service.commands.mlflow_sync",
    "prediction_service.commands.ray",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m prediction_service", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
