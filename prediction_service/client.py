"""Async Python client for the prediction API (aiohttp), for the trading systems that call the service.

One pooled aiohttp session per client. Every call has a time budget (``timeout_s``): the server is told
about it (``X-Request-Deadline-Ms``, a little less than what is left, so its clear 504 arrives before
the client gives up) and drops the work once it expires. Retries stay inside the budget and only happen
when the server cannot have acted on the request, or when acting twice is harmless:

- 429 and 503 (refused before any work): after ``Retry-After`` (if it fits the budget and
  ``max_retry_after_s``) or an exponential, jittered backoff;
- connection refused: always; other connection failures (reset, server gone mid-request): only for
  idempotent calls (predictions, reads), never for an outcome report, which must not be scored twice.

Errors come back as ``ServiceCallError`` with the server's ``code``, ``message``, ``details`` and
the ``X-Request-Id`` of the failed attempt (``audit --request-id`` finds it).

    async with PredictionClient(ClientSettings("http://127.0.0.1:8000", timeout_s=0.05)) as client:
        prediction = await client.predict("lstm-price", instance={"ohlcv": window})
        print(prediction.version, prediction.predictions[0])

Results are typed: ``PredictResponse``, ``ReloadResult``, ``ModelMetadata``, ``ServerStats``, and the experiment
domain's own ``Experiment`` and ``Analysis`` (prediction_service.experiments.models, imported when an experiment
call is first made: the statistics behind them are not loaded by a client that never asks).
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

import aiohttp
import orjson
from pydantic import BaseModel, Field

from .v1.schemas import API_KEY_HEADER, DEADLINE_HEADER, MAX_DEADLINE_MS, REQUEST_ID_HEADER, PredictResponse

if TYPE_CHECKING:
    from .experiments.models import Analysis, Experiment, ExperimentSpec, ExperimentStatus, ShadowRecord

RETRY_STATUSES = frozenset({429, 503})
SERVER_DEADLINE_SHARE = 0.9
"""Share of the remaining budget sent as the server's deadline: its 504 beats the client's own timeout."""


@dataclass(frozen=True)
class ClientSettings:
    base_url: str
    """e.g. http://127.0.0.1:8000"""
    api_key: str | None = None
    """Sent as X-API-Key (needed for predictions only when the server sets PREDICT_REQUIRES_KEY)."""
    timeout_s: float = 1.0
    """Budget of one call, retries included."""
    retries: int = 2
    """Attempts after the first, within the budget."""
    backoff_s: float = 0.02
    """First backoff; doubled each retry, with jitter."""
    max_backoff_s: float = 0.5
    max_retry_after_s: float = 2.0
    """A Retry-After longer than this is not waited for: the error goes back to the caller."""
    max_connections: int = 100

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {self.base_url!r}")
        if self.timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s}")
        if self.retries < 0:
            raise ValueError(f"retries must be >= 0, got {self.retries}")


class ReloadResult(BaseModel):
    """``POST /v1/models/{name}/reload``: what this worker serves now (other workers follow within
    STAGE_POLL_INTERVAL_SECONDS)."""

    model: str
    serving: dict[str, str | None] = Field(description="Stage -> the version served (None: the stage is empty).")
    load_failures: dict[str, str] = Field(description="Version -> why it failed to load.")


class TensorInfo(BaseModel):
    name: str
    datatype: str = Field(description="Open Inference Protocol datatype: FP32, INT64, BYTES...")
    shape: list[int] = Field(description="Batch dimension first; -1 = any.")


class ModelMetadata(BaseModel):
    """A model's (or an ensemble's) Open Inference Protocol metadata, ``GET /v2/models/{name}[/versions/{v}]``."""

    name: str
    versions: list[str]
    platform: str = Field(description="onnxruntime_onnx, pytorch_torchscript, ... or ensemble.")
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]


class LatencySummary(BaseModel):
    window: int = Field(description="Successful predictions the percentiles are taken over.")
    mean: float | None = None
    p50: float | None = None
    p95: float | None = None
    p99: float | None = None
    scope: str = ""


class HostResources(BaseModel):
    cpu_count: int | None = None
    cpu_percent: float | None = None
    load_average_1m: float | None = None
    memory_total_bytes: int
    memory_available_bytes: int
    memory_percent: float


class ServerStats(BaseModel):
    """``GET /v1/stats``: the figures of ``GET /metrics`` as JSON (counts across workers, latency of the worker
    that answered)."""

    worker_pid: int
    uptime_seconds: float
    requests_total: int
    requests_by_status: dict[str, int]
    success_rate: float | None = None
    latency_ms: LatencySummary
    models_loaded: int
    process_resident_memory_bytes: int
    host: HostResources | None = None
    audit: dict[str, Any] | None = None
    """The audit writer's counters (written, dropped, backlog...), when the audit log is on."""


class ServiceCallError(Exception):
    """A call that failed: the server's error (``status`` set) or a transport failure (``status`` None)."""

    def __init__(self, code: str, message: str, *, status: int | None = None, details: dict | None = None,
                 request_id: str | None = None, attempts: int = 1):
        super().__init__(f"{code}: {message}" + (f" (HTTP {status})" if status else ""))
        self.code = code
        self.message = message
        self.status = status
        self.details = details or {}
        self.request_id = request_id
        self.attempts = attempts

    @property
    def retryable(self) -> bool:
        """Whether trying again later may succeed (overload, unavailable, timeouts)."""
        return self.status in RETRY_STATUSES or self.status == 504 or self.code in ("unavailable", "timeout")


class PredictionClient:
    def __init__(self, settings: ClientSettings):
        self.settings = settings
        self._base = settings.base_url.rstrip("/")
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> PredictionClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:  # created inside the running loop
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.settings.max_connections))
        return self._session

    # ---- API ----------------------------------------------------------------------------------------

    async def predict(self, model: str, *, instance: Any = None, instances: list | None = None,
                      inputs: dict[str, list] | None = None, text: str | list[str] | None = None,
                      version: str | None = None, stage: str | None = None, routing_key: str | None = None,
                      timeout_s: float | None = None) -> PredictResponse:
        """One of ``instance`` (a row), ``instances`` (rows), ``inputs`` (tensors, batch first) or ``text``."""
        payloads = {"instance": instance, "instances": instances, "inputs": inputs, "text": text}
        body: dict[str, Any] = {k: v for k, v in payloads.items() if v is not None}
        if len(body) != 1:
            raise ValueError(f"give exactly one of {', '.join(payloads)} (got {sorted(body) or 'none'})")
        for name, value in (("version", version), ("stage", stage), ("routing_key", routing_key)):
            if value is not None:
                body[name] = value
        answer = await self._call("POST", f"/v1/models/{model}/predict", body, idempotent=True,
                                  timeout_s=timeout_s, send_deadline=True)
        return PredictResponse.model_validate(answer)

    async def record_outcome(self, request_id: str, actual: float, pnl: float | None = None,
                             timeout_s: float | None = None) -> dict[str, Any]:
        """Report what really happened for a prediction served under an A/B experiment."""
        body: dict[str, Any] = {"actual": actual} if pnl is None else {"actual": actual, "pnl": pnl}
        return await self._call("POST", f"/v1/predictions/{request_id}/outcome", body, idempotent=False,
                                timeout_s=timeout_s)

    async def models(self) -> list[dict[str, Any]]:
        return await self._call("GET", "/v1/models", None, idempotent=True)

    async def model(self, name: str) -> dict[str, Any]:
        return await self._call("GET", f"/v1/models/{name}", None, idempotent=True)

    async def model_metadata(self, name: str, version: str | None = None,
                             timeout_s: float | None = None) -> ModelMetadata:
        """Inputs, outputs and versions of a model or an ensemble (its production version, else its newest;
        or ``version``)."""
        path = f"/v2/models/{_segment(name)}" + (f"/versions/{_segment(version)}" if version is not None else "")
        return ModelMetadata.model_validate(await self._call("GET", path, None, idempotent=True,
                                                             timeout_s=timeout_s))

    async def reload(self, name: str, timeout_s: float | None = None) -> ReloadResult:
        """Re-read ``name``'s stage links now: a new production version is loaded beside the old one, then
        served (admin key when keys are configured). Harmless to repeat, so retried like a read."""
        answer = await self._call("POST", f"/v1/models/{_segment(name)}/reload", None, idempotent=True,
                                  timeout_s=timeout_s)
        return ReloadResult.model_validate(answer)

    async def metrics(self, timeout_s: float | None = None) -> ServerStats:
        """Request counts by status, success rate, latency percentiles, uptime, models loaded."""
        return ServerStats.model_validate(await self._call("GET", "/v1/stats", None, idempotent=True,
                                                           timeout_s=timeout_s))

    # ---- A/B experiments (admin key to create and stop, any key to read) ------------------------------

    async def create_experiment(self, spec: ExperimentSpec, timeout_s: float | None = None) -> Experiment:
        """Start splitting ``spec.model_name``'s traffic between its champion and challenger versions. Not
        retried after a dropped connection: the first attempt may have created it."""
        from .experiments.models import Experiment

        answer = await self._call("POST", "/v1/experiments", spec.model_dump(mode="json"), idempotent=False,
                                  timeout_s=timeout_s)
        return Experiment.model_validate(answer)

    async def create_shadow_experiment(self, model_name: str, champion_version: str, challenger_version: str, *,
                                       shadow_fraction: float = 1.0, auto_apply: bool = False,
                                       task: str = "classification", timeout_s: float | None = None) -> Experiment:
        """Start a shadow experiment: production keeps answering every request with the champion while a copy
        of ``shadow_fraction`` of them runs on the challenger; outcomes score both on the same requests."""
        from .experiments.models import ExperimentKind, ExperimentSpec

        spec = ExperimentSpec(model_name=model_name, champion_version=champion_version,
                              challenger_version=challenger_version, kind=ExperimentKind.SHADOW,
                              shadow_fraction=shadow_fraction, auto_apply=auto_apply, task=task)  # type: ignore[arg-type]
        return await self.create_experiment(spec, timeout_s=timeout_s)

    async def shadow_prediction(self, experiment_id: str, request_id: str,
                                timeout_s: float | None = None) -> ShadowRecord:
        """The challenger's answer to the copy of one production request (ServiceCallError not_found until
        the copy has run)."""
        from .experiments.models import ShadowRecord

        answer = await self._call("GET", f"/v1/experiments/{_segment(experiment_id)}/shadow/{_segment(request_id)}",
                                  None, idempotent=True, timeout_s=timeout_s)
        return ShadowRecord.model_validate(answer)

    async def experiment(self, experiment_id: str, timeout_s: float | None = None) -> Experiment:
        from .experiments.models import Experiment

        answer = await self._call("GET", f"/v1/experiments/{_segment(experiment_id)}", None, idempotent=True,
                                  timeout_s=timeout_s)
        return Experiment.model_validate(answer)

    async def experiments(self, model_name: str | None = None, status: ExperimentStatus | str | None = None,
                          timeout_s: float | None = None) -> list[Experiment]:
        from .experiments.models import Experiment

        query = {k: getattr(v, "value", v) for k, v in (("model_name", model_name), ("status", status)) if v}
        path = "/v1/experiments" + (f"?{urlencode(query)}" if query else "")
        answer = await self._call("GET", path, None, idempotent=True, timeout_s=timeout_s)
        return [Experiment.model_validate(item) for item in answer]

    async def analyze_experiment(self, experiment_id: str, timeout_s: float | None = None) -> Analysis:
        """Metrics per arm, the tests and the decision (PROMOTE / ROLLBACK / CONTINUE); with ``auto_apply``
        the server applies a decision it reaches (``Analysis.applied``)."""
        from .experiments.models import Analysis

        answer = await self._call("GET", f"/v1/experiments/{_segment(experiment_id)}/analyze", None,
                                  idempotent=True, timeout_s=timeout_s)
        return Analysis.model_validate(answer)

    async def stop_experiment(self, experiment_id: str, reason: str | None = None,
                              timeout_s: float | None = None) -> Experiment:
        """End the experiment; production keeps the champion. Not retried after a dropped connection: a second
        stop of a stopped experiment is a 409."""
        from .experiments.models import Experiment

        answer = await self._call("POST", f"/v1/experiments/{_segment(experiment_id)}/stop",
                                  {"reason": reason} if reason is not None else None, idempotent=False,
                                  timeout_s=timeout_s)
        return Experiment.model_validate(answer)

    async def ready(self) -> bool:
        try:
            await self._call("GET", "/health/ready", None, idempotent=True, retry=False)
        except ServiceCallError:
            return False
        return True

    # ---- transport ----------------------------------------------------------------------------------

    async def _call(self, method: str, path: str, body: dict[str, Any] | None, *, idempotent: bool,
                    timeout_s: float | None = None, send_deadline: bool = False, retry: bool = True) -> Any:
        settings = self.settings
        budget_end = time.monotonic() + (timeout_s or settings.timeout_s)
        max_attempts = 1 + (settings.retries if retry else 0)
        headers = {API_KEY_HEADER: settings.api_key} if settings.api_key else {}
        data = orjson.dumps(body) if body is not None else None
        if data is not None:
            headers["Content-Type"] = "application/json"
        for attempt in range(1, max_attempts + 1):
            remaining = budget_end - time.monotonic()
            if send_deadline:
                deadline_ms = min(MAX_DEADLINE_MS, max(1.0, remaining * 1000 * SERVER_DEADLINE_SHARE))
                headers[DEADLINE_HEADER] = f"{deadline_ms:.0f}"
            try:
                async with self._client().request(method, self._base + path, data=data, headers=headers,
                                                   timeout=aiohttp.ClientTimeout(total=remaining)) as response:
                    status, raw = response.status, await response.read()
                    retry_after = response.headers.get("Retry-After")
                    request_id = response.headers.get(REQUEST_ID_HEADER)
            except (TimeoutError, asyncio.TimeoutError) as exc:
                raise ServiceCallError("timeout", f"no answer from {path} within the budget",
                                             attempts=attempt) from exc
            except aiohttp.ClientConnectorError as exc:  # never connected: nothing was sent
                error = ServiceCallError("unavailable", f"cannot connect to {self._base}: {exc}",
                                               attempts=attempt)
                wait = self._backoff(attempt)
            except aiohttp.ClientError as exc:  # sent, then the connection broke: maybe processed
                error = ServiceCallError("unavailable", f"connection to {self._base} failed: {exc}",
                                               attempts=attempt)
                if not idempotent:
                    raise error from exc
                wait = self._backoff(attempt)
            else:
                if 200 <= status < 300:
                    return orjson.loads(raw) if raw else None
                error = _server_error(status, raw, request_id, attempt)
                if status not in RETRY_STATUSES:
                    raise error
                wait = self._retry_after(retry_after, attempt)
                if wait is None:
                    raise error
            if attempt == max_attempts or time.monotonic() + wait >= budget_end:
                raise error
            await asyncio.sleep(wait)
        raise AssertionError("unreachable")  # the loop returns or raises

    def _backoff(self, attempt: int) -> float:
        ceiling = min(self.settings.max_backoff_s, self.settings.backoff_s * 2 ** (attempt - 1))
        return ceiling * (0.5 + random.random() / 2)  # jitter: callers shed together must not return together

    def _retry_after(self, header: str | None, attempt: int) -> float | None:
        if header is None:
            return self._backoff(attempt)
        try:
            seconds = float(header)
        except ValueError:  # an HTTP date: not something this server sends
            return self._backoff(attempt)
        return seconds if seconds <= self.settings.max_retry_after_s else None


def _segment(value: str) -> str:
    """A path segment: a name or id never reaches another path of the server."""
    return quote(value, safe="")


def _server_error(status: int, raw: bytes, request_id: str | None, attempt: int) -> ServiceCallError:
    try:
        error = orjson.loads(raw)["error"]
        code, message, details = str(error["code"]), str(error["message"]), error.get("details") or {}
    except (orjson.JSONDecodeError, KeyError, TypeError):
        code, message, details = f"http_{status}", raw[:200].decode("utf-8", "replace"), {}
    return ServiceCallError(code, message, status=status, details=details, request_id=request_id,
                                  attempts=attempt)
