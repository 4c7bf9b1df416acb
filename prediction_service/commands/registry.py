"""``python -m prediction_service registry ...``: manage the model store from a shell.

Human-readable output by default, ``--json`` for scripts. Domain errors print ``error [code]: message``
on stderr and exit with status 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from contextlib import nullcontext
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from ..errors import InvalidInput, PredictionServiceError
from ..signature import ModelSignature

EXIT_DOMAIN_ERROR = 1


def register(subparsers: argparse._SubParsersAction) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--store", type=Path, default=None, help="registry root (default: MODEL_STORE setting)")
    common.add_argument("--actor", default=os.environ.get("USER", "unknown"), help="who acts (default: $USER)")
    common.add_argument("--json", action="store_true", help="machine-readable JSON output")

    parser = subparsers.add_parser("registry", help="manage the model registry")
    commands = parser.add_subparsers(dest="registry_command", required=True)

    reg = commands.add_parser("register", parents=[common], help="register a version from artifact files")
    reg.add_argument("name")
    reg.add_argument("version")
    reg.add_argument("--artifact", action="append", required=True, metavar="[FORMAT[/PRECISION]=]PATH",
                     help="artifact file; FORMAT onnx|torchscript|state_dict (inferred for .onnx), repeatable")
    reg.add_argument("--signature", type=Path, help="signature JSON file (default: inferred from the ONNX graph)")
    reg.add_argument("--task", choices=["regression", "classification"], default=None)
    reg.add_argument("--labels", help="comma-separated class labels (classification)")
    reg.add_argument("--metric", action="append", default=[], metavar="KEY=VALUE")
    reg.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE")
    reg.add_argument("--symbol", help="family member: the symbol it forecasts (with --timeframe, --model-type; "
                                      "POST /v1/forecast finds it by these)")
    reg.add_argument("--timeframe", help="family member: the bar timeframe, e.g. 1m")
    reg.add_argument("--model-type", help="family member: the model type, e.g. patchtst")
    reg.add_argument("--description", default="")
    reg.add_argument("--architecture", default=None)
    reg.add_argument("--extra-file", action="append", default=[], type=Path, help="e.g. a tokenizer vocab")
    reg.add_argument("--validation", type=Path, help="validation report JSON (numeric parity)")
    reg.add_argument("--allow-contract-change", action="store_true",
                     help="register although production declares a pre-processing step (bars, text) this version "
                          "does not (a bare artifact); refused otherwise")
    reg.add_argument("--profile-from", type=Path, metavar="FILE",
                     help="validation inputs (.npy: the model's sole input, .npz: one array per input) from which "
                          "the version's input reference profile (profile.json) is built, for drift monitoring")
    reg.set_defaults(func=_run(_register))

    lst = commands.add_parser("list", parents=[common], help="list models, or the versions of one")
    lst.add_argument("name", nargs="?")
    lst.set_defaults(func=_run(_list))

    show = commands.add_parser("show", parents=[common], help="show a version (or a stage's version)")
    show.add_argument("name")
    show.add_argument("version", nargs="?", help="default: the production version")
    show.add_argument("--stage", choices=["production", "staging"], default=None)
    show.set_defaults(func=_run(_show))

    cmp_ = commands.add_parser("compare", parents=[common], help="compare two versions")
    cmp_.add_argument("name")
    cmp_.add_argument("a")
    cmp_.add_argument("b")
    cmp_.set_defaults(func=_run(_compare))

    promote = commands.add_parser("promote", parents=[common], help="move a stage to a version")
    promote.add_argument("name")
    promote.add_argument("version")
    promote.add_argument("--stage", choices=["production", "staging"], default="production")
    promote.add_argument("--force", action="store_true", help="promote to production without passing validation "
                         "(or with a smoke run only where production has a numeric parity report)")
    promote.add_argument("--allow-contract-change", action="store_true",
                         help="promote to production although the serving contract (tensors, pre-processing, "
                              "labels, task) differs from production's; recorded in the event log")
    promote.set_defaults(func=_run(_promote))

    archive = commands.add_parser("archive", parents=[common], help="archive a version")
    archive.add_argument("name")
    archive.add_argument("version")
    archive.set_defaults(func=_run(_archive))

    delete = commands.add_parser("delete", parents=[common], help="delete a version not behind any stage")
    delete.add_argument("name")
    delete.add_argument("version")
    delete.set_defaults(func=_run(_delete))

    metrics = commands.add_parser("metrics", parents=[common], help="update a version's metrics")
    metrics.add_argument("name")
    metrics.add_argument("version")
    metrics.add_argument("metric", nargs="+", metavar="KEY=VALUE")
    metrics.add_argument("--replace", action="store_true", help="replace all metrics instead of merging")
    metrics.set_defaults(func=_run(_metrics))

    events = commands.add_parser("events", parents=[common], help="a model's event log")
    events.add_argument("name")
    events.add_argument("--limit", type=int, default=50)
    events.add_argument("--production-at", metavar="ISO_TIME",
                        help="instead: which version was in production at this time (UTC unless offset given)")
    events.set_defaults(func=_run(_events))


# ---- handlers ----------------------------------------------------------------------------------

def _register(args: argparse.Namespace) -> Any:
    artifacts = [_artifact(spec) for spec in args.artifact]
    signature = None
    if args.signature:
        signature = ModelSignature.model_validate_json(args.signature.read_bytes())
    elif args.task or args.labels:
        from ..registry.signature_inference import infer_signature

        onnx = next((a.path for a in artifacts if a.format == "onnx"), None)
        if onnx is None:
            raise InvalidInput("--task/--labels without --signature need an ONNX artifact to infer from")
        signature = infer_signature(onnx, task=args.task or "classification",
                                    labels=args.labels.split(",") if args.labels else None)
    validation = None
    if args.validation:
        from ..registry.model_version import ValidationReport

        validation = ValidationReport.model_validate_json(args.validation.read_bytes())
    registry = _registry(args)
    extra_files = list(args.extra_file)
    # a profile is written in the registry's own staging directory and copied in with the version's files
    with registry.upload_staging() if args.profile_from is not None else nullcontext() as staging:
        if args.profile_from is not None:
            registry.layout.new_version_dir(args.name, args.version)  # Conflict before the profile is built
            extra_files.append(_profile_file(args, artifacts, signature, staging))
        version = registry.register(
            args.name, args.version, artifacts, signature=signature, metrics=_pairs(args.metric, float),
            tags=_tags(args), description=args.description, architecture=args.architecture,
            validation=validation, extra_files=extra_files, actor=args.actor,
            allow_contract_change=args.allow_contract_change,
        )
    return version.metadata, f"registered {args.name} {args.version} ({len(version.metadata.artifacts)} artifacts)"


def _profile_file(args: argparse.Namespace, artifacts: list, signature: ModelSignature | None,
                  staging: Path) -> Path:
    """profile.json from --profile-from, in ``staging``: the version's inputs as its model reads them."""
    from ..monitoring.drift import PROFILE_FILE, load_reference_inputs, profile_from_inputs
    from ..settings import Settings

    if signature is None:
        from ..registry.signature_inference import infer_signature

        onnx = next((a.path for a in artifacts if a.format == "onnx" and a.precision == "fp32"), None) \
            or next((a.path for a in artifacts if a.format == "onnx"), None)
        if onnx is None:
            raise InvalidInput("--profile-from without --signature needs an ONNX artifact to read the inputs from")
        signature = infer_signature(onnx)
    if any(Path(extra).name == PROFILE_FILE for extra in args.extra_file):
        raise InvalidInput(f"--profile-from writes {PROFILE_FILE}: do not pass one with --extra-file as well")
    # a text model's profile reads its vocabulary (the unknown-token id): the one about to be stored
    vocab_dir = None
    if signature.text is not None:
        vocab = next((Path(e) for e in args.extra_file if Path(e).name == signature.text.tokenizer), None)
        vocab_dir = vocab.parent if vocab is not None else None
    drift = Settings().drift
    arrays = load_reference_inputs(args.profile_from, signature)
    profile = profile_from_inputs(arrays, signature, vocab_dir, args.profile_from.name,
                                  max_features=drift.max_features, bins=drift.bins,
                                  sample_size=drift.reference_sample)
    path = staging / PROFILE_FILE
    path.write_text(profile.model_dump_json())
    return path


def _list(args: argparse.Namespace) -> Any:
    registry = _registry(args, repair=False)
    if not args.name:
        rows = [{"model": name, **registry.stages(name), "versions": len(registry.versions(name))}
                for name in registry.model_names()]
        text = "\n".join(f"{r['model']:<32} production={r['production'] or '-':<12} staging={r['staging'] or '-':<12}"
                         f" versions={r['versions']}" for r in rows) or "(no models)"
        return rows, text
    versions = registry.versions(args.name)
    rows = [{"version": v.version, "status": v.metadata.status, "created_at": v.metadata.created_at,
             "metrics": v.metadata.metrics, "validated": bool(v.metadata.validation and v.metadata.validation.passed)}
            for v in versions]
    text = "\n".join(f"{r['version']:<16} {r['status']:<11} {r['created_at']:%Y-%m-%d %H:%M:%S}  "
                     f"validated={'yes' if r['validated'] else 'no ':<3}  {_fmt_metrics(r['metrics'])}" for r in rows)
    return rows, text


def _show(args: argparse.Namespace) -> Any:
    found = _registry(args, repair=False).resolve(args.name, args.version, args.stage)
    meta = found.metadata
    lines = [f"{meta.name} {meta.version}  status={meta.status}  created_at={meta.created_at:%Y-%m-%d %H:%M:%S}Z",
             f"description: {meta.description or '-'}",
             "inputs:  " + ", ".join(f"{s.name} {s.dtype}{list(s.shape)}" for s in meta.signature.inputs),
             "outputs: " + ", ".join(f"{s.name} {s.dtype}{list(s.shape)}" for s in meta.signature.outputs),
             f"metrics: {_fmt_metrics(meta.metrics) or '-'}",
             "validation: " + (f"{meta.validation.kind} passed={meta.validation.passed}" if meta.validation else "none")]
    lines += [f"artifact: {a.file} {a.format}/{a.precision} {a.size_bytes} B sha256={a.sha256[:16]}…"
              for a in meta.artifacts]
    return meta, "\n".join(lines)


def _compare(args: argparse.Namespace) -> Any:
    result = _registry(args, repair=False).compare(args.name, args.a, args.b)
    lines = [f"{result.model}: {result.a} ({result.status[0]}) vs {result.b} ({result.status[1]})",
             f"{'metric':<20} {result.a:>12} {result.b:>12} {'delta':>12}"]
    for row in result.metrics:
        lines.append(f"{row.metric:<20} {_num(row.a):>12} {_num(row.b):>12} {_num(row.delta, signed=True):>12}")
    lines += [f"signature {c.side} {c.name}: {c.a or '-'} -> {c.b or '-'}" for c in result.signature_changes]
    lines += [f"artifact {c.file}: {'differs' if c.a_sha256 and c.b_sha256 else 'only in ' + (result.a if c.a_sha256 else result.b)}"
              for c in result.artifact_changes]
    if not result.signature_changes:
        lines.append("signature tensors: identical")
    if result.contract_changes:
        lines.append(f"contract: {len(result.contract_changes)} difference"
                     f"{'s' if len(result.contract_changes) != 1 else ''} (promoting {result.b} over {result.a} needs "
                     "--allow-contract-change)")
        lines += [f"  {c.text()}" for c in result.contract_changes]
    else:
        lines.append("contract: identical")
    return result, "\n".join(lines)


def _promote(args: argparse.Namespace) -> Any:
    found = _registry(args).promote(args.name, args.version, args.stage, force=args.force,
                                    allow_contract_change=args.allow_contract_change, actor=args.actor)
    changed = args.allow_contract_change and any(
        e.event == "contract_change" and e.version == args.version for e in _registry(args, repair=False)
        .model_events(args.name, limit=5))
    return found.metadata, f"{args.name} {args.version} is now {args.stage}" + (
        " (serving contract changed: recorded in the event log)" if changed else "")


def _archive(args: argparse.Namespace) -> Any:
    found = _registry(args).archive(args.name, args.version, actor=args.actor)
    return found.metadata, f"{args.name} {args.version} archived"


def _delete(args: argparse.Namespace) -> Any:
    _registry(args).delete(args.name, args.version, actor=args.actor)
    return {"deleted": {"model": args.name, "version": args.version}}, f"deleted {args.name} {args.version}"


def _metrics(args: argparse.Namespace) -> Any:
    found = _registry(args).update_metrics(args.name, args.version, _pairs(args.metric, float),
                                           replace=args.replace, actor=args.actor)
    return found.metadata, f"{args.name} {args.version} metrics: {_fmt_metrics(found.metadata.metrics)}"


def _events(args: argparse.Namespace) -> Any:
    registry = _registry(args, repair=False)
    if args.production_at:
        moment = _parse_time(args.production_at)
        version = registry.production_at(args.name, moment)
        return ({"model": args.name, "at": moment, "production": version},
                f"{args.name} production at {moment.isoformat()}: {version or '(none)'}")
    events = registry.model_events(args.name, limit=args.limit)
    text = "\n".join(
        f"{e.time:%Y-%m-%d %H:%M:%S.%f}Z {e.event:<18} {e.version or '-':<12} "
        f"{(e.from_stage or '-') + ' -> ' + (e.to_stage or '-') if e.from_stage or e.to_stage else '':<24} "
        f"by {e.actor}" for e in events) or "(no events)"
    return events, text


# ---- helpers -----------------------------------------------------------------------------------

def _registry(args: argparse.Namespace, repair: bool = True):
    from ..registry.store import ModelRegistry
    from ..settings import Settings

    root = args.store if args.store is not None else Settings().model_store
    return ModelRegistry(root, repair=repair)


def _artifact(spec: str):
    from ..registry.writer import ArtifactSource

    kind, sep, path = spec.partition("=")
    if not sep:
        kind, path = ("onnx" if spec.endswith(".onnx") else ""), spec
        if not kind:
            raise InvalidInput(f"--artifact {spec}: say the format, e.g. torchscript={spec}")
    fmt, _, precision = kind.partition("/")
    return ArtifactSource(path=Path(path), format=fmt, precision=precision or "fp32")


def _tags(args: argparse.Namespace) -> dict[str, str]:
    """--tag pairs, and the family tags of --symbol / --timeframe / --model-type (all three or none)."""
    from ..registry.families import family_tags

    try:
        family = family_tags(args.symbol, args.timeframe, args.model_type)
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None
    return {**_pairs(args.tag, str), **family}


def _pairs(items: list[str], cast: type) -> dict[str, Any]:
    result = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidInput(f"expected KEY=VALUE, got {item!r}")
        try:
            result[key] = cast(value)
        except ValueError as exc:
            raise InvalidInput(f"{key}: {value!r} is not a number") from exc
    return result


def _parse_time(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise InvalidInput(f"not an ISO-8601 time: {text!r}") from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _fmt_metrics(metrics: dict[str, float]) -> str:
    return " ".join(f"{k}={v:g}" for k, v in sorted(metrics.items()))


def _num(value: float | None, signed: bool = False) -> str:
    return "-" if value is None else (f"{value:+.6g}" if signed else f"{value:.6g}")


def _jsonable(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def _run(handler):
    """Wrap a handler returning (data, text): print one of them, turn domain errors into exit status 1."""

    def run(args: argparse.Namespace) -> int:
        try:
            data, text = handler(args)
        except PredictionServiceError as exc:
            print(f"error [{exc.code}]: {exc.message}", file=sys.stderr)
            if exc.details:
                print(json.dumps(exc.details, default=str), file=sys.stderr)
            return EXIT_DOMAIN_ERROR
        except ValidationError as exc:  # a signature / validation JSON file that does not fit its schema
            print(f"error [invalid_input]: {exc}", file=sys.stderr)
            return EXIT_DOMAIN_ERROR
        except OSError as exc:  # unreadable input files
            print(f"error [io]: {exc}", file=sys.stderr)
            return EXIT_DOMAIN_ERROR
        print(json.dumps(_jsonable(data), indent=2) if args.json else text)
        return 0
    return run
