"""The service as a Ray Serve application: every replica builds the same ``Service`` and serves the same
ASGI app as ``serve`` (``create_app``), so ``/v1``, the Open Inference Protocol REST routes, validation,
errors, provenance and metric names are identical behind Serve's proxy.

Serve config (``serve deploy deploy/ray/default.yaml``)::

    import_path: prediction_service.deploy.ray_serve:build_app
    args: {metrics_sd_dir: /tmp/prediction-service-sd}    # RayAppArgs
    runtime_env: {env_vars: {MODEL_STORE: /models}}       # Settings, as for `serve`

What Serve adds and the service does not duplicate: replicas and their placement, autoscaling on ongoing
requests, health checks (``check_health`` = the service's readiness), replacement of dead replicas, and
graceful shutdown (the app's lifespan runs ``Service.stop()``). What stays the service's own: dynamic
batching (batching.py, inside each replica; Serve's ``@serve.batch`` would batch one Python method, not
the ASGI door), hot reload (every replica polls the shared registry's stage links), and metrics.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import ray
from pydantic import BaseModel, ConfigDict
from ray import serve
from ray.serve import Application
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..api.app import create_app
from ..service import Service
from ..settings import Settings
from .replica_metrics import ReplicaMetricsExporter

log = logging.getLogger(__name__)

DEPLOYMENT = "prediction-service"
REPLICA_HEADER = "x-serve-replica"
NODE_HEADER = "x-ray-node-id"


class RayAppArgs(BaseModel):
    """The ``args:`` of the application in a Serve config (Serve validates them into this)."""

    model_config = ConfigDict(extra="forbid")

    env: dict[str, str] = {}
    """Settings for every replica as environment variables (``MODEL_STORE``, ``BATCH_MAX_BATCH_SIZE``, ...).
    A Serve config may set them as the application's ``runtime_env.env_vars`` instead; these win."""
    metrics_sd_dir: str | None = None
    """Each replica serves its metrics on its own port and writes a Prometheus ``file_sd`` target file here
    (a directory Prometheus reads on every node). None = only ``GET /metrics`` through the proxy."""
    metrics_host: str = "127.0.0.1"
    """Address the per-replica metrics port binds (the node's IP when Prometheus runs elsewhere)."""


@serve.deployment(
    name=DEPLOYMENT,
    # Readiness decides health: a replica that lost a production model is replaced rather than served.
    health_check_period_s=5.0,
    health_check_timeout_s=30.0,
    graceful_shutdown_wait_loop_s=1.0,
    graceful_shutdown_timeout_s=15.0,
)
@serve.ingress()
class PredictionReplica:
    """One Serve replica: one Service, one app. Settings come from the replica's environment."""

    def __init__(self, metrics_sd_dir: str | None = None, metrics_host: str = "127.0.0.1") -> None:
        self.service = Service(Settings())
        context = serve.get_replica_context()
        self.replica = context.replica_id.unique_id
        self.node = ray.get_runtime_context().get_node_id()
        self._metrics_sd_dir = Path(metrics_sd_dir) if metrics_sd_dir else None
        self._metrics_host = metrics_host
        self._exporter: ReplicaMetricsExporter | None = None
        self._refresher: asyncio.Task | None = None

    async def __serve_build_asgi_app__(self) -> ASGIApp:
        """Runs on the replica's event loop after ``__init__``; Serve then runs the app's lifespan."""
        if self._metrics_sd_dir is not None:
            # Bound to every interface, the target names the node's IP (what Prometheus can reach).
            advertise = (ray.util.get_node_ip_address() if self._metrics_host in ("0.0.0.0", "::")
                         else self._metrics_host)
            self._exporter = ReplicaMetricsExporter(
                self.service.metrics.registry, self._metrics_sd_dir, self._metrics_host, advertise, self.replica,
                {"node": self.node, "deployment": DEPLOYMENT})
            # Gauges that are read at scrape time (in flight, queue depth, models loaded) are refreshed
            # by the /metrics route; a scrape of the exporter bypasses it, so keep them fresh here.
            self._refresher = asyncio.create_task(self.service.metrics.run_refresher(self.service.refresh_metrics))
        return ReplicaHeaders(create_app(service=self.service), self.replica, self.node)

    async def check_health(self) -> None:
        if self.service.shutting_down:
            return  # draining: Serve is already replacing this replica
        readiness = await self.service.dataplane.server_ready()
        if not readiness.ready:
            raise RuntimeError(f"replica {self.replica} not ready: {'; '.join(readiness.reasons)}")

    async def __del__(self) -> None:
        """Serve calls this after the app's lifespan shutdown (``Service.stop()``)."""
        if self._refresher is not None:
            self._refresher.cancel()
        if self._exporter is not None:
            self._exporter.close()


class ReplicaHeaders:
    """Names the replica and node that answered (``x-serve-replica``, ``x-ray-node-id``) on every
    response, the predict hot path included (which bypasses the app's middleware stack)."""

    def __init__(self, app: ASGIApp, replica: str, node: str):
        self.app = app
        self._headers = [(REPLICA_HEADER.encode(), replica.encode()), (NODE_HEADER.encode(), node.encode())]

    def __getattr__(self, name: str):
        return getattr(self.app, name)  # Serve registers its back-pressure handler on the FastAPI app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *self._headers]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def build_app(args: RayAppArgs) -> Application:
    """Serve's application builder (``import_path: prediction_service.deploy.ray_serve:build_app``).
    Replicas, autoscaling and resources come from the Serve config's ``deployments:`` entry."""
    return application(args)


def application(args: RayAppArgs, **options) -> Application:
    """The application with deployment ``options`` set in code (``num_replicas``, ``autoscaling_config``,
    ``ray_actor_options``, ...): what ``python -m prediction_service ray run``, the bench and tests use."""
    if args.env:  # merged into the replica's runtime_env, beside whatever else it sets
        actor = dict(options.get("ray_actor_options") or {})
        runtime_env = dict(actor.get("runtime_env") or {})
        runtime_env["env_vars"] = {**runtime_env.get("env_vars", {}), **args.env}
        options["ray_actor_options"] = {**actor, "runtime_env": runtime_env}
    deployment = PredictionReplica.options(**options) if options else PredictionReplica
    return deployment.bind(metrics_sd_dir=args.metrics_sd_dir, metrics_host=args.metrics_host)
