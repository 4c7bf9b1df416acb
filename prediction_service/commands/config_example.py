"""``config-example``: print every setting as an env file (the source of config/example.env)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("config-example", help="print every environment variable with its default")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..settings import example_env

    print(example_env())
    return 0
