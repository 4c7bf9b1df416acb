"""``python -m prediction_service ensemble ...``: register, list, show, promote and archive ensembles.

Members are named by model and followed by stage (production unless ``--*-stage`` says staging) or pinned
with ``--*-version``. The combiner's parameters come from ``--combiner FILE.json`` and/or flags (a flag
wins over the file); both are validated by the combiner's pydantic model, so a bad weight is refused
before anything is written. Output and exit codes as ``registry ...`` (``--json`` for scripts).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from ..errors import InvalidInput
from .registry import _pairs, _run

COMBINER_FLAGS = {"price_weight": float, "sentiment_weight": float, "baseline": float, "sentiment_scale": float,
                  "positive_label": str, "negative_label": str, "agree_confidence": float,
                  "disagree_confidence": float}
"""WeightedPriceSentiment's parameters, each a ``--flag`` (names with dashes)."""


def register(subparsers: argparse._SubParsersAction) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--store", type=Path, default=None, help="registry root (default: MODEL_STORE setting)")
    common.add_argument("--actor", default=os.environ.get("USER", "unknown"), help="who acts (default: $USER)")
    common.add_argument("--json", action="store_true", help="machine-readable JSON output")

    parser = subparsers.add_parser("ensemble", help="manage registered ensembles (price + sentiment)")
    commands = parser.add_subparsers(dest="ensemble_command", required=True)

    reg = commands.add_parser("register", parents=[common], help="register an ensemble version")
    reg.add_argument("name")
    reg.add_argument("version")
    for role in ("price", "sentiment"):
        reg.add_argument(f"--{role}", required=True, metavar="MODEL", help=f"the {role} member's model")
        pick = reg.add_mutually_exclusive_group()
        pick.add_argument(f"--{role}-stage", choices=["production", "staging"], default=None,
                          help="stage the member follows (default: production)")
        pick.add_argument(f"--{role}-version", default=None, help="pin the member to this version")
    reg.add_argument("--combiner", type=Path, metavar="FILE.json",
                     help="combiner parameters as JSON (weighted_price_sentiment); flags override")
    for field, cast in COMBINER_FLAGS.items():
        reg.add_argument(f"--{field.replace('_', '-')}", type=cast, default=None)
    reg.add_argument("--description", default="")
    reg.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE")
    reg.set_defaults(func=_run(_register))

    lst = commands.add_parser("list", parents=[common], help="list ensembles, or the versions of one")
    lst.add_argument("name", nargs="?")
    lst.set_defaults(func=_run(_list))

    show = commands.add_parser("show", parents=[common], help="show a version (default: production's)")
    show.add_argument("name")
    show.add_argument("version", nargs="?")
    show.add_argument("--stage", choices=["production", "staging"], default=None)
    show.set_defaults(func=_run(_show))

    promote = commands.add_parser("promote", parents=[common], help="move a stage to a version")
    promote.add_argument("name")
    promote.add_argument("version")
    promote.add_argument("--stage", choices=["production", "staging"], default="production")
    promote.add_argument("--force", action="store_true", help="enter production although a member cannot serve")
    promote.set_defaults(func=_run(_promote))

    archive = commands.add_parser("archive", parents=[common], help="archive a version")
    archive.add_argument("name")
    archive.add_argument("version")
    archive.set_defaults(func=_run(_archive))


# ---- handlers ----------------------------------------------------------------------------------

def _register(args: argparse.Namespace) -> Any:
    from ..ensemble import EnsembleMember

    members = [EnsembleMember(role=role, model=getattr(args, role), stage=getattr(args, f"{role}_stage"),
                              version=getattr(args, f"{role}_version")) for role in ("price", "sentiment")]
    found = _registry(args).register(args.name, args.version, members, _combiner(args),
                                     description=args.description, tags=_pairs(args.tag, str), actor=args.actor)
    return found.metadata, f"registered ensemble {args.name} {args.version} ({_members(found.metadata)})"


def _list(args: argparse.Namespace) -> Any:
    registry = _registry(args)
    if not args.name:
        rows = [{"ensemble": name, **registry.stages(name), "versions": len(registry.versions(name))}
                for name in registry.names()]
        text = "\n".join(f"{r['ensemble']:<32} production={r['production'] or '-':<12} "
                         f"staging={r['staging'] or '-':<12} versions={r['versions']}" for r in rows)
        return rows, text or "(no ensembles)"
    rows = [{"version": e.version, "status": e.metadata.status, "created_at": e.metadata.created_at,
             "members": _members(e.metadata)} for e in registry.versions(args.name)]
    text = "\n".join(f"{r['version']:<16} {r['status']:<11} {r['created_at']:%Y-%m-%d %H:%M:%S}  {r['members']}"
                     for r in rows)
    return rows, text


def _show(args: argparse.Namespace) -> Any:
    found = _registry(args).resolve(args.name, args.version, args.stage)
    meta = found.metadata
    combiner = meta.combiner.model_dump(exclude={"kind", "step_version"})
    lines = [f"{meta.name} {meta.version}  status={meta.status}  created_at={meta.created_at:%Y-%m-%d %H:%M:%S}Z",
             f"description: {meta.description or '-'}",
             *(f"member {m.role}: {m.describe()}" for m in meta.members),
             f"combiner: {meta.combiner.kind} v{meta.combiner.step_version} "
             + " ".join(f"{k}={v}" for k, v in combiner.items()),
             f"sha256: {found.sha256}"]
    return meta, "\n".join(lines)


def _promote(args: argparse.Namespace) -> Any:
    found = _registry(args).promote(args.name, args.version, args.stage, force=args.force, actor=args.actor)
    return found.metadata, f"ensemble {args.name} {args.version} is now {args.stage}"


def _archive(args: argparse.Namespace) -> Any:
    found = _registry(args).archive(args.name, args.version, actor=args.actor)
    return found.metadata, f"ensemble {args.name} {args.version} archived"


# ---- helpers -----------------------------------------------------------------------------------

def _registry(args: argparse.Namespace):
    from ..ensemble import EnsembleRegistry
    from ..settings import Settings

    return EnsembleRegistry(args.store if args.store is not None else Settings().model_store)


def _combiner(args: argparse.Namespace):
    """The file's parameters, then the flags given, validated as one (ValidationError: exit 1)."""
    from ..ensemble import WeightedPriceSentiment

    parameters: dict[str, Any] = {}
    if args.combiner is not None:
        try:
            parameters = json.loads(args.combiner.read_bytes())
        except json.JSONDecodeError as exc:
            raise InvalidInput(f"--combiner {args.combiner}: not JSON: {exc}") from exc
        if not isinstance(parameters, dict):
            raise InvalidInput(f"--combiner {args.combiner}: expected a JSON object")
    parameters.update({field: value for field in COMBINER_FLAGS
                       if (value := getattr(args, field)) is not None})
    return WeightedPriceSentiment.model_validate(parameters)


def _members(metadata) -> str:
    return ", ".join(f"{m.role}={m.describe()}" for m in metadata.members)
