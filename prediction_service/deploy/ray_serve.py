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
batching (execution/batching.py, inside each replica; Serve's ``@serve.batch`` would batch one Python method, not
the ASGI door; bench/ray_bench.py measures both), hot reload (every replica polls the shared registry's
stage links), and metrics.

One request id: Serve's proxy gives every request an id (the caller's ``X-Request-Id``, else a uuid4),
puts it in the request's headers and appends it to the response. A replica takes that id as the request's
own (body ``request_id``, audit log, experiment records) and drops the service's copy of the header, so a
response carries one ``X-Request-Id``.
"""

from __future__ import annotations

import asyncio
import logging
import re
from contextvars import ContextVar
from pathlib import Path

import ray
from pydantic import BaseModel, ConfigDict
from ray import serve
from ray.serve import Application
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..api.app import create_app
from ..security.auth import ApiKey
from ..types import RequestContext
from ..serving.service import Service
from ..settings import Settings
from .replica_metrics import ReplicaMetricsExporter

log = logging.getLogger(__name__)

DEPLOYMENT = "prediction-service"
REPLICA_HEADER = "x-serve-replica"
NODE_HEADER = "x-ray-node-id"
SERVE_REQUEST_ID_HEADER = "x-request-id"
"""Where Serve's proxy puts the request's id (ray.serve._private.constants.SERVE_HTTP_REQUEST_ID_HEADER)."""

# A caller may choose the id (Serve passes its X-Request-Id through): only a plain token becomes an audit
# id. Anything else keeps the service's own id, and the response then carries both.
_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
_serve_request_id: ContextVar[str | None] = ContextVar("serve_request_id", default=None)


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
        self.service = ReplicaService(Settings())
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


class ReplicaService(Service):
    """The Service with Serve's request id: a request context opened while a request that Serve's proxy
    named is handled (``ReplicaHeaders``) carries that id instead of a new one."""

    def request_context(self, key: ApiKey | None, deadline: float | None, protocol: str) -> RequestContext:
        context = super().request_context(key, deadline, protocol)
        request_id = _serve_request_id.get()
        if request_id is not None:
            context.request_id = request_id
        return context


def serve_request_id(scope: Scope) -> str | None:
    """The id Serve's proxy gave this request, when it is a plain token (see ``_REQUEST_ID``)."""
    for name, value in scope.get("headers", ()):
        if name == SERVE_REQUEST_ID_HEADER.encode():  # ASGI header names are lower case
            request_id = value.decode("latin-1")
            return request_id if _REQUEST_ID.fullmatch(request_id) else None
    return None


class ReplicaHeaders:
    """Names the replica and node that answered (``x-serve-replica``, ``x-ray-node-id``) on every
    response, the predict hot path included (which bypasses the app's middleware stack), and hands
    Serve's request id to the service (``ReplicaService``), dropping the service's own copy of the header:
    the proxy appends that id to the response itself."""

    def __init__(self, app: ASGIApp, replica: str, node: str):
        self.app = app
        self._headers = [(REPLICA_HEADER.encode(), replica.encode()), (NODE_HEADER.encode(), node.encode())]

    def __getattr__(self, name: str):
        return getattr(self.app, name)  # Serve registers its back-pressure handler on the FastAPI app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        request_id = serve_request_id(scope)
        duplicate = (SERVE_REQUEST_ID_HEADER.encode(), request_id.encode()) if request_id else None

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(name, value) for name, value in message.get("headers", ())
                           if (name.lower(), value) != duplicate]
                message["headers"] = [*headers, *self._headers]
            await send(message)

        token = _serve_request_id.set(request_id)
        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            _serve_request_id.reset(token)


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
