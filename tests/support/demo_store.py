"""The demo registry the session's tests share, built by the `setup-demo` command itself."""

from __future__ import annotations

import argparse
import contextlib
import io
from pathlib import Path


def run_setup_demo(root: Path) -> None:
    """``setup-demo --store root``, keeping what it printed beside the store (``setup_demo_output``)."""
    from prediction_service.commands import setup_demo

    parser = argparse.ArgumentParser()
    setup_demo.register(parser.add_subparsers())
    args = parser.parse_args(["setup-demo", "--store", str(root)])
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        status = args.func(args)
    if status != 0:
        raise RuntimeError(f"setup-demo exited {status}: {printed.getvalue()}")
    _output_path(root).write_text(printed.getvalue())


def setup_demo_output(root: Path) -> str:
    """What `setup-demo` printed when it built the registry at ``root``."""
    return _output_path(root).read_text()


def _output_path(root: Path) -> Path:
    return root.parent / f"{root.name}.setup-demo.txt"
