"""One reusable tritonclient asyncio client (HTTP or gRPC) with every failure translated at the edge.

* connection refused / reset, gRPC UNAVAILABLE -> ``BackendUnavailable`` (and the client is replaced,
  so a restarted Triton is reached by a fresh connection instead of a dead pool or a gRPC channel
  stuck in reconnect backoff);
* no answer within the timeout (``asyncio.wait_for``) -> ``BackendTimeout``;
* Triton answering with an error -> ``TritonRequestFailed`` (a ``BackendUnavailable``), or
  ``TritonModelMissing`` when Triton does not know the model (it restarted and lost it).
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import aiohttp
import numpy as np
import tritonclient.grpc.aio as grpcclient
from tritonclient.grpc import MAX_GRPC_MESSAGE_SIZE, KeepAliveOptions
import tritonclient.http.aio as httpclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from ..errors import BackendTimeout, BackendUnavailable
from ..settings import TritonSettings

log = logging.getLogger(__name__)

T = TypeVar("T")
_MISSING_MODEL = re.compile(r"unknown model|is not found|not ready|no version is available|unavailable model", re.I)
_GRPC_CONNECTION_STATUSES = {"StatusCode.UNAVAILABLE", "StatusCode.CANCELLED"}


def _grpc_channel_args() -> list[tuple[str, int]]:
    """tritonclient's defaults plus a private subchannel pool.

    gRPC shares subchannels between channels to the same target by default, so a "fresh" channel
    would inherit the old one's reconnect backoff after Triton restarts and keep failing.
    """
    keepalive = KeepAliveOptions()
    return [
        ("grpc.max_send_message_length", MAX_GRPC_MESSAGE_SIZE),
        ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_SIZE),
        ("grpc.keepalive_time_ms", keepalive.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", keepalive.keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", keepalive.keepalive_permit_without_calls),
        ("grpc.http2.max_pings_without_data", keepalive.http2_max_pings_without_data),
        ("grpc.use_local_subchannel_pool", 1),
    ]


class TritonUnreachable(BackendUnavailable):
    """No connection to Triton (refused, reset, gRPC UNAVAILABLE)."""


class TritonRequestFailed(BackendUnavailable):
    """Triton answered with an error."""

    code = "backend_error"


class TritonModelMissing(TritonRequestFailed):
    """Triton does not have the model loaded (unknown, unloaded, or not ready)."""

    code = "backend_model_missing"


Client = httpclient.InferenceServerClient | grpcclient.InferenceServerClient


class TritonConnection:
    """Talks to one Triton server over the protocol the settings choose."""

    def __init__(self, settings: TritonSettings):
        self._settings = settings
        self.protocol = "grpc" if settings.use_grpc else "http"
        self.url = settings.server_grpc_url if settings.use_grpc else settings.server_url
        self._client: Client | None = None
        self._generation = 0
        self._retiring: dict[asyncio.Task[None], Client] = {}
        if settings.use_grpc and settings.ssl and settings.insecure:
            log.warning("TRITON_INSECURE has no effect over gRPC: server certificates are still verified")

    # --- operations ---------------------------------------------------------------------------

    async def infer(
        self, model: str, inputs: dict[str, np.ndarray], outputs: list[str], timeout: float
    ) -> dict[str, np.ndarray]:
        module = grpcclient if self.protocol == "grpc" else httpclient
        binary = {} if self.protocol == "grpc" else {"binary_data": True}
        infer_inputs = []
        for name, array in inputs.items():
            tensor = module.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
            tensor.set_data_from_numpy(array, **binary)
            infer_inputs.append(tensor)
        requested = [module.InferRequestedOutput(name, **binary) for name in outputs]
        result = await self._call(
            f"infer {model}", lambda c: c.infer(model, infer_inputs, outputs=requested), timeout, model
        )
        return {name: result.as_numpy(name) for name in outputs}

    async def load_model(self, model: str, timeout: float) -> None:
        await self._call(f"load {model}", lambda c: c.load_model(model), timeout)

    async def unload_model(self, model: str, timeout: float) -> None:
        await self._call(f"unload {model}", lambda c: c.unload_model(model), timeout)

    async def is_model_ready(self, model: str, timeout: float) -> bool:
        return bool(await self._call(f"model ready {model}", lambda c: c.is_model_ready(model), timeout))

    async def server_live(self, timeout: float) -> bool:
        return bool(await self._call("server live", lambda c: c.is_server_live(), timeout))

    async def server_ready(self, timeout: float) -> bool:
        return bool(await self._call("server ready", lambda c: c.is_server_ready(), timeout))

    async def model_metadata(self, model: str, timeout: float) -> dict[str, Any]:
        return await self._call(f"metadata {model}", lambda c: c.get_model_metadata(model, **self._json()), timeout)

    async def inference_statistics(self, model: str, timeout: float) -> dict[str, Any]:
        return await self._call(
            f"statistics {model}", lambda c: c.get_inference_statistics(model, **self._json()), timeout
        )

    async def close(self) -> None:
        client, self._client = self._client, None
        retiring, self._retiring = list(self._retiring.items()), {}
        for task, old in retiring:
            task.cancel()
            await self._close_quietly(old)
        if client is not None:
            await client.close()

    # --- plumbing -----------------------------------------------------------------------------

    def _json(self) -> dict[str, bool]:
        return {"as_json": True} if self.protocol == "grpc" else {}

    async def _call(
        self, what: str, operation: Callable[[Client], Awaitable[T]], timeout: float, model: str | None = None
    ) -> T:
        """Run ``operation`` on the shared client; a connection failure on a client that predates this
        call (a pool or channel from before a Triton restart) is retried once on a fresh client."""
        deadline = time.monotonic() + timeout
        details = {"backend": "triton", "url": self.url, "protocol": self.protocol, "operation": what}
        while True:
            client, generation, fresh = self._current_client()
            try:
                return await self._attempt(what, operation, client, deadline - time.monotonic(), model, details)
            except TritonUnreachable as exc:
                self._retire(generation)
                if fresh or deadline - time.monotonic() <= 0:
                    raise
                log.info("retrying '%s' on a fresh connection: %s", what, exc.message)

    async def _attempt(
        self,
        what: str,
        operation: Callable[[Client], Awaitable[T]],
        client: Client,
        timeout: float,
        model: str | None,
        details: dict[str, str],
    ) -> T:
        try:
            return await asyncio.wait_for(operation(client), timeout)
        except TimeoutError as exc:  # before OSError: TimeoutError is one
            raise BackendTimeout(f"Triton did not answer '{what}' within {timeout:.3g}s", details) from exc
        except InferenceServerException as exc:
            status = str(exc.status())
            message = exc.message() or str(exc)
            if status in _GRPC_CONNECTION_STATUSES:
                raise TritonUnreachable(f"cannot reach Triton at {self.url} ({self.protocol}): {message}",
                                        details) from exc
            if status == "StatusCode.DEADLINE_EXCEEDED":
                raise BackendTimeout(f"Triton did not answer '{what}' in time: {message}", details) from exc
            error = TritonModelMissing if model and _MISSING_MODEL.search(message) else TritonRequestFailed
            raise error(f"Triton failed '{what}': {message}", {**details, "status": status}) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise TritonUnreachable(
                f"cannot reach Triton at {self.url} ({self.protocol}): {exc or type(exc).__name__}", details
            ) from exc

    def _current_client(self) -> tuple[Client, int, bool]:
        """The shared client, its generation, and whether it was created just now."""
        fresh = self._client is None
        if fresh:
            self._client = self._new_client()
            self._generation += 1
        return self._client, self._generation, fresh

    def _new_client(self) -> Client:
        s = self._settings
        if self.protocol == "grpc":
            roots = str(s.ca_certificates) if s.ssl and s.ca_certificates else None
            return grpcclient.InferenceServerClient(self.url, ssl=s.ssl, root_certificates=roots,
                                                    channel_args=_grpc_channel_args())
        context = None
        if s.ssl:
            context = ssl.create_default_context(cafile=str(s.ca_certificates) if s.ca_certificates else None)
            if s.insecure:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
        # The session's own total timeout is a backstop only; calls are bounded by asyncio.wait_for.
        backstop = max(s.timeout_seconds, s.load_timeout_seconds) + 5
        return httpclient.InferenceServerClient(self.url, ssl=s.ssl, ssl_context=context, conn_timeout=backstop)

    def _retire(self, generation: int) -> None:
        """Drop the client that just failed to connect; the next call builds a fresh one.

        Closing is delayed past the call timeout: calls still running on the old client end on
        their own, instead of being cancelled under their callers (gRPC cancels on close).
        """
        if generation != self._generation or self._client is None:
            return  # another caller already replaced it
        old, self._client = self._client, None
        task = asyncio.get_running_loop().create_task(self._close_later(old))
        self._retiring[task] = old
        task.add_done_callback(lambda done: self._retiring.pop(done, None))

    async def _close_later(self, client: Client) -> None:
        await asyncio.sleep(self._settings.timeout_seconds + 1)
        await self._close_quietly(client)

    @staticmethod
    async def _close_quietly(client: Client) -> None:
        try:
            await client.close()
        except (aiohttp.ClientError, OSError, InferenceServerException) as exc:
            log.debug("closing a retired Triton client failed: %s", exc)
