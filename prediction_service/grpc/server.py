"""The gRPC front door: ``inference.GRPCInferenceService`` and ``grpc.health.v1.Health`` on grpc.aio.

It runs in the worker's event loop beside the REST API, over the same Service. Every uvicorn worker binds
the same port (SO_REUSEPORT; the kernel spreads connections). Shutdown mirrors the REST door:
``begin_draining()`` (from the SIGTERM hook) makes health NOT_SERVING and refuses new calls with
UNAVAILABLE while calls in progress finish; ``stop(grace_s)`` then closes the port, cancelling what is
still running after the grace period.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio  # the public name of the asyncio servicer
from tritonclient.grpc import service_pb2_grpc

from ..errors import PredictionServiceError
from .servicer import InferenceServicer

if TYPE_CHECKING:
    from ..serving.service import Service

log = logging.getLogger(__name__)

INFERENCE_SERVICE = "inference.GRPCInferenceService"
SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
HEALTH_REFRESH_S = 1.0
"""How often Watch subscribers learn of readiness changes (Check always answers from the data plane)."""


class ReadinessHealth(health_aio.HealthServicer):
    """The standard health service, answering from the data plane's readiness: "" and the inference
    service name report the server; any other name is taken as a model name (SERVING = loaded)."""

    def __init__(self, service: "Service"):
        super().__init__()
        self.dataplane = service.dataplane

    async def Check(self, request: health_pb2.HealthCheckRequest, context) -> health_pb2.HealthCheckResponse:
        if request.service in ("", INFERENCE_SERVICE):
            status = await self.refresh()
        else:
            try:
                status = SERVING if self.dataplane.model_ready(request.service) else NOT_SERVING
            except PredictionServiceError:  # unknown model or invalid name: an unknown service
                await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        return health_pb2.HealthCheckResponse(status=status)

    async def refresh(self) -> int:
        if self._gracefully_shutting_down:  # draining: stays NOT_SERVING whatever readiness says
            return NOT_SERVING
        status = SERVING if (await self.dataplane.server_ready()).ready else NOT_SERVING
        for name in ("", INFERENCE_SERVICE):
            await self.set(name, status)  # wakes Watch subscribers when it changed
        return status

    async def run(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception:  # noqa: BLE001 - a failing readiness check must not stop the refresher
                log.exception("gRPC health refresh failed")
            await asyncio.sleep(HEALTH_REFRESH_S)


class GrpcServer:
    def __init__(self, service: "Service", host: str, port: int):
        """``port`` 0 binds a free port (``self.port`` says which once started)."""
        self.service = service
        self.host = host
        self.port = port
        self.servicer = InferenceServicer(service)
        self.health = ReadinessHealth(service)
        self._server: grpc.aio.Server | None = None
        self._refresher: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        max_bytes = self.service.settings.limits.max_request_bytes
        server = grpc.aio.server(options=[
            ("grpc.so_reuseport", 1),
            # Larger messages are refused by gRPC itself with RESOURCE_EXHAUSTED, before any of our code runs.
            ("grpc.max_receive_message_length", max_bytes),
            ("grpc.max_send_message_length", -1),
        ])
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(self.servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        self.port = server.add_insecure_port(f"{self.host}:{self.port}")
        await server.start()
        self._server, self._loop = server, asyncio.get_running_loop()
        self._refresher = asyncio.create_task(self.health.run())
        log.info("gRPC (Open Inference Protocol) listening on %s:%d", self.host, self.port)

    def begin_draining(self) -> None:
        """Refuse new calls from now on; calls in progress go on. Safe from a signal handler or another
        thread (the SIGTERM drain timer)."""
        if self.servicer.draining:
            return
        self.servicer.draining = True
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self.health.enter_graceful_shutdown()))

    async def stop(self, grace_s: float) -> None:
        if self._server is None:
            return
        self.begin_draining()
        await self.health.enter_graceful_shutdown()
        if self._refresher is not None:
            self._refresher.cancel()
        await self._server.stop(grace_s)  # waits for calls in progress, up to grace_s
        self._server = None
        log.info("gRPC server stopped")
