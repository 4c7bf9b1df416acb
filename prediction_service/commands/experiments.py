"""``experiments``: start, list, analyse and stop A/B (split) and shadow experiments on a running server,
through its HTTP API (``--url``, an admin key in ``--api-key`` or PREDICTION_API_KEY to start and stop).

    experiments create lstm-price --champion 1.0.0 --challenger 1.1.0 --kind shadow [--shadow-fraction 0.5]
    experiments list [--model lstm-price]
    experiments analyze <id>
    experiments stop <id> [--reason "..."]
"""

from __future__ import annotations

import argparse
import asyncio
import os

DEFAULT_URL = "http://127.0.0.1:8000"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("experiments", help="start, list, analyse and stop A/B and shadow experiments "
                                                       "on a running server")
    parser.add_argument("--url", default=os.environ.get("PREDICTION_SERVICE_URL", DEFAULT_URL),
                        help=f"the server (default PREDICTION_SERVICE_URL, else {DEFAULT_URL})")
    parser.add_argument("--api-key", default=os.environ.get("PREDICTION_API_KEY"),
                        help="API key (default PREDICTION_API_KEY); admin scope to create and stop")
    actions = parser.add_subparsers(dest="action", required=True)

    create = actions.add_parser("create", help="start an experiment (the champion must be what production serves)")
    create.add_argument("model")
    create.add_argument("--champion", required=True, help="the production version")
    create.add_argument("--challenger", required=True, help="the version to compare with it")
    create.add_argument("--kind", choices=("split", "shadow"), default="split",
                        help="split: the challenger answers --traffic-split of the requests; shadow: the champion "
                             "answers every request and a copy runs on the challenger (default split)")
    create.add_argument("--traffic-split", type=float, default=0.10, help="split: the challenger's share (0.10)")
    create.add_argument("--shadow-fraction", type=float, default=1.0,
                        help="shadow: share of production requests copied to the challenger (1.0)")
    create.add_argument("--task", choices=("classification", "regression"), default="classification")
    create.add_argument("--auto-apply", action="store_true", help="promote or roll back when the test decides")

    listing = actions.add_parser("list", help="experiments, newest first")
    listing.add_argument("--model", help="only this model's")
    listing.add_argument("--status", choices=("running", "stopped", "promoted", "rolled_back"))

    analyze = actions.add_parser("analyze", help="metrics, tests and the decision (auto_apply acts on it)")
    analyze.add_argument("experiment_id")

    stop = actions.add_parser("stop", help="end an experiment; production keeps the champion")
    stop.add_argument("experiment_id")
    stop.add_argument("--reason")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..client import ServiceCallError

    try:
        print(asyncio.run(_call(args)))
    except ServiceCallError as exc:
        print(f"error: {exc}")
        return 2
    return 0


async def _call(args: argparse.Namespace) -> str:
    from ..client import ClientSettings, PredictionClient
    from ..experiments.models import ExperimentSpec

    async with PredictionClient(ClientSettings(args.url, api_key=args.api_key, timeout_s=30.0)) as client:
        if args.action == "create":
            spec = ExperimentSpec(model_name=args.model, champion_version=args.champion,
                                  challenger_version=args.challenger, kind=args.kind, traffic_split=args.traffic_split,
                                  shadow_fraction=args.shadow_fraction, task=args.task, auto_apply=args.auto_apply)
            experiment = await client.create_experiment(spec)
            return f"experiment {experiment.id} started ({experiment.kind.value}): {experiment.model_dump_json()}"
        if args.action == "list":
            experiments = await client.experiments(args.model, args.status)
            return "\n".join(f"{e.id}  {e.model_name}  {e.kind.value:<6} {e.champion_version} vs "
                             f"{e.challenger_version}  {e.status.value}" for e in experiments) or "no experiments"
        if args.action == "analyze":
            analysis = await client.analyze_experiment(args.experiment_id)
            return f"decision: {analysis.decision.value}\n" + "\n".join(f"- {r}" for r in analysis.reasons)
        experiment = await client.stop_experiment(args.experiment_id, args.reason)
        return f"experiment {experiment.id} {experiment.status.value}"
