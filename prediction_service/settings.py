"""Typed settings: one tree, read from environment variables (and an optional .env file).

Each section reads its own prefix, so ``SIMPLE_MAX_MODELS_IN_MEMORY`` lands in
``Settings().simple.max_models_in_memory``. ``config/example.env`` documents every variable.
Tests build settings directly: ``Settings(model_store=tmp, batching=BatchingSettings(...))``.
"""

from __future__ import annotations

import re
import textwrap
from enum import Enum
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .artifacts import PRECISIONS
from .types import MAX_PRIORITY_LEVELS


def _section(prefix: str) -> SettingsConfigDict:
    return SettingsConfigDict(env_prefix=prefix, env_file=".env", extra="ignore", populate_by_name=True,
                              use_attribute_docstrings=True)


class AdapterType(str, Enum):
    SIMPLE = "simple"
    TORCHSCRIPT = "torchscript"
    TORCHSERVE = "torchserve"
    TRITON = "triton"


# Members come from artifacts.PRECISIONS (FP32 = "fp32", ...): the setting offers exactly what artifacts can be.
Precision = Enum("Precision", {precision.upper(): precision for precision in PRECISIONS}, type=str)


class ServerSettings(BaseSettings):
    model_config = _section("SERVER_")

    host: str = "127.0.0.1"
    """Bind address. Loopback by default; set 0.0.0.0 only behind a trusted network boundary."""
    port: int = Field(8000, ge=1, le=65535)
    """TCP port of the REST API."""
    grpc_port: int = Field(8001, ge=0, le=65535)
    """TCP port of the Open Inference Protocol gRPC API (inference.GRPCInferenceService, as Triton serves it;
    every worker binds it). 0 = no gRPC door."""
    workers: int = Field(1, ge=1, le=64)
    """Worker processes (uvicorn). Shared state lives on disk and in SQLite, so any count is safe."""
    shutdown_grace_seconds: float = Field(10.0, ge=0)
    """On SIGTERM: how long in-flight requests may take to finish before the process exits."""
    shutdown_drain_seconds: float = Field(0.0, ge=0, le=300)
    """On SIGTERM: keep serving this long with readiness already false (so load balancers stop routing
    here) before uvicorn stops accepting. 0 = stop accepting at once."""


class SimpleSettings(BaseSettings):
    model_config = _section("SIMPLE_")

    max_models_in_memory: int = Field(5, ge=1)
    """LRU bound on model versions held in memory by the in-process adapters."""
    model_timeout_seconds: float = Field(3600.0, gt=0)
    """A model version idle for this long is unloaded (it reloads on the next request)."""
    intra_op_threads: int = Field(1, ge=0)
    """Threads per ONNX Runtime / torch run. 1 suits small models batched by the service; 0 = runtime default."""
    cache_size_mb: float = Field(0.0, ge=0)
    """Memory budget for the model versions the in-process adapters hold (weights and runtime arena, measured
    when each loads): past it, least recently used versions outside a stage are unloaded. What a stage serves
    never leaves; a staged set larger than the budget makes the server not ready (it says why). 0 = no
    budget (SIMPLE_MAX_MODELS_IN_MEMORY bounds the count either way)."""


class BatchingSettings(BaseSettings):
    model_config = _section("BATCH_")

    max_batch_size: int = Field(32, ge=1)
    """Most rows merged into one model run."""
    max_queue_delay_ms: float = Field(2.0, ge=0)
    """Longest a forming batch waits for others to join it while a run slot is free, when BATCH_ADAPTIVE is
    off (a model's signature may set its own ``batch_delay_ms``)."""
    adaptive: bool = True
    """A request that finds a run slot free and nobody queued runs at once; batches form only while every
    slot is busy (who arrives meanwhile joins). Off: a forming batch always waits up to
    BATCH_MAX_QUEUE_DELAY_MS for company. Triton's generated config follows (queue delay 0 when on)."""
    max_queue_size: int = Field(512, ge=1)
    """Requests waiting per model; past it new requests are shed with 429 instead of queueing."""
    concurrent_batches: int = Field(2, ge=1)
    """Model runs in flight at once per model (threads); lets one batch form while another runs."""
    priority_levels: int = Field(3, ge=1, le=MAX_PRIORITY_LEVELS)
    """Priority lanes per model queue, as Triton's ``priority_levels``: 1 is the highest, this the lowest. A waiting
    request of a higher priority joins the next run ahead of every lower one; when the queue is full the lowest
    priority is shed first. A request asks with the OIP ``priority`` parameter or the /v1 ``priority`` field (0 or
    absent: its API key's priority, else BATCH_DEFAULT_PRIORITY)."""
    default_priority: int = Field(1, ge=1, le=MAX_PRIORITY_LEVELS)
    """The priority of a request that names none and whose API key sets none (at most BATCH_PRIORITY_LEVELS). 1,
    the highest, keeps callers that know nothing of priorities where they were: backfills and research mark
    themselves (or their keys) lower."""
    priority_reserved_slots: int = Field(1, ge=0, le=8)
    """Run slots per model beyond BATCH_CONCURRENT_BATCHES (a thread each) that only a batch of priority-1
    requests may take, and only while lower priorities hold the regular ones: a live request starts at once even
    while a flood of lower-priority batches fills every regular slot, instead of waiting for one of their runs to
    end. Traffic that is all of one priority never uses them. 0 = none."""
    inline_run_max_us: float = Field(200.0, ge=0)
    """A request that overtakes lower-priority runs in progress (a live request during a flood) and finds a run
    slot free runs on the event loop itself, not on a thread, when its rows times the model's one-row run time
    (measured at load) fit in this many microseconds: handing a run to a thread and its answer back costs two
    turns of the event loop, and during a flood each turn waits behind the flood's decoding, while a small
    model's run is short (the demo's LSTM: ~35 us a row). Without lower-priority runs in progress runs always
    take a thread, so that requests arriving meanwhile form the next batch. 0 = always a thread."""
    background_nice: int = Field(10, ge=0, le=19)
    """How much lower the OS scheduling priority (nice value) of the threads that run batches led by priorities
    below 1 is: where a flood of lower-priority runs keeps every core busy, a priority-1 run (and the event
    loop) gets the cores first instead of an even share. 0 = one pool at the process's priority."""

    @model_validator(mode="after")
    def _default_within_levels(self) -> "BatchingSettings":
        if self.default_priority > self.priority_levels:
            raise ValueError(f"BATCH_DEFAULT_PRIORITY {self.default_priority} is past BATCH_PRIORITY_LEVELS "
                             f"{self.priority_levels}")
        return self


class WarmupSettings(BaseSettings):
    model_config = _section("WARMUP_")

    enabled: bool = True
    """Run a freshly loaded version on synthetic inputs before it takes traffic (startup and hot reload):
    in process on the runtime, in each TorchServe worker's initialize, in Triton through model_warmup.
    TorchScript's profiling executor optimizes a graph on its first runs: cold, the first request takes
    6-8x the warm latency (~30 ms for the first model of a process); warmed, 1.4-2x (bench/warmup_bench.py)."""
    batch_sizes: str = "1,8"
    """Comma-separated batch sizes to run (capped by the signature's max_batch_size)."""
    iterations: int = Field(3, ge=1)
    """Runs per batch size."""

    @field_validator("batch_sizes")
    @classmethod
    def _positive_sizes(cls, value: str) -> str:
        try:
            sizes = [int(part) for part in value.split(",") if part.strip()]
        except ValueError:
            raise ValueError(f"WARMUP_BATCH_SIZES must be comma-separated integers, got {value!r}") from None
        if not sizes or min(sizes) < 1:
            raise ValueError(f"WARMUP_BATCH_SIZES needs at least one size, each >= 1, got {value!r}")
        return value

    @property
    def batch_size_list(self) -> list[int]:
        return [int(part) for part in self.batch_sizes.split(",") if part.strip()]


class LimitSettings(BaseSettings):
    model_config = _section("LIMIT_")

    max_request_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    """Request bodies larger than this get 413."""
    max_json_depth: int = Field(16, ge=2)
    """Deeper JSON nesting is refused with 400 (guards the parser and validators)."""
    max_artifact_upload_bytes: int = Field(256 * 1024 * 1024, ge=1024)
    """Largest total artifact size (decoded) one registry upload through the API may carry."""
    max_batch_rows: int = Field(256, ge=1)
    """Most instances one predict request may carry."""
    max_tensor_elements: int = Field(256 * 1024, ge=1)
    """Most tensor elements (the product of each shape) the inputs of one Open Inference Protocol request may
    declare, all inputs together; checked from the shapes before any data is decoded (422 past it). The
    default holds 256 rows of 1,024 values: 256 windows of 110 bars x 5 or two 256 x 256 token tensors fit."""
    max_request_tensors: int = Field(64, ge=1)
    """Most input tensors, and most requested outputs, one Open Inference Protocol request may name (422
    past it, before any is decoded)."""
    max_in_flight: int = Field(256, ge=1)
    """Predictions in progress per worker; past it new ones get 503 at once."""
    default_deadline_ms: float = Field(1000.0, gt=0)
    """Per-request deadline unless the X-Request-Deadline-Ms header sets one; expired work is dropped."""
    caller_deadline_ceiling_ms: float = Field(5000.0, gt=0, le=600_000)
    """The longest deadline an anonymous or read-scoped caller may ask for (X-Request-Deadline-Ms, the gRPC
    deadline, OIP ``timeout``): longer budgets are cut to it. Admin keys may ask for up to 600 s."""
    version_loads_per_minute: float = Field(30.0, ge=0)
    """Loads of versions that no stage serves (explicit ``version`` requests), per worker; past it such
    requests get 429 so they cannot thrash the pinned stage versions. 0 = unbounded."""
    max_text_chars_per_token: int = Field(16, ge=1)
    """Text inputs longer than the model's max tokens x this many characters are refused (413) before
    tokenization, so a huge text costs nothing; for a model whose text step truncates (``truncation``) they
    are cut to that many characters instead, and served."""
    max_tokens_per_request: int = Field(8192, ge=1)
    """Most tokens one text request may make the model read: rows x its longest row's tokens ([CLS]/[SEP]
    included, after truncation to the model's max tokens). Checked before tokenizing from character counts (a
    text counts at least its characters / max_text_chars_per_token tokens) and exactly after; past it 413,
    before the model runs."""
    max_tokens_in_flight: int = Field(16384, ge=1)
    """Tokens of text requests tokenized and not yet answered, per worker; a request that would push past it
    gets 503 with Retry-After (one request alone is always admitted), so a few long-text requests cannot
    queue minutes of model time on one worker."""
    max_bars_per_window: int = Field(1024, ge=1)
    """Most bars one window of a raw ``bars`` request may carry (the demo models read the last 60 or 110);
    past it 413, from the request's shape, before any conversion or feature computation."""
    max_bars_per_request: int = Field(32768, ge=1)
    """Most bars one raw ``bars`` request may carry, all windows together (windows x bars per window); past
    it 413, from the request's shape, before any conversion or feature computation."""
    large_json_bytes_per_second: float = Field(8 * 2**20, ge=0)
    """Bytes of JSON bodies larger than ``json_offload_bytes`` one worker parses per second, all callers
    together (burst: ``max_request_bytes``); past it such bodies get 429 with Retry-After before they are
    parsed. A JSON parser holds the GIL (about 8 ms per MB), so without a bound a few clients posting
    multi-MB bodies take the worker from everyone else. 0 = unbounded. Bulk tensors belong in the binary
    Open Inference Protocol framing, which is not charged."""
    tarpit_errors_per_second: float = Field(20.0, ge=0)
    """Error answers (4xx, 5xx) one connection gets at full speed per second on the prediction routes, after a
    burst of ``tarpit_burst``; past that each error answer waits ``tarpit_delay_ms`` before it is sent, so a
    client retrying refusals in a tight loop waits instead of taking the worker. 0 = never delay."""
    tarpit_burst: int = Field(50, ge=1)
    """Error answers a connection may get back to back before its budget applies."""
    tarpit_delay_ms: float = Field(200.0, ge=0)
    """How long an error answer past the connection's budget waits (a sleeping task: no CPU). 0 = never delay."""
    json_offload_bytes: int = Field(64 * 1024, ge=0)
    """JSON request bodies larger than this are parsed in a worker thread instead of on the event loop;
    smaller ones are parsed inline, where a thread hand-off would cost more than the parse. 0 = every body in
    a thread."""
    grpc_stream_max_pending: int = Field(8, ge=1)
    """Requests one gRPC ModelStreamInfer stream may hold at once (running, or answered and waiting to be
    written to the client), capped by LIMIT_MAX_IN_FLIGHT. At the bound the server reads no further request
    from that stream until an answer is written, so HTTP/2 flow control holds back a client that writes
    faster than it reads. Measured (bench/abuse_bench.py, two streams that write and never read beside a
    normal /v1 client): the normal client kept 0.76 of its throughput at 64 and 16, 1.05 at 8."""


class SecuritySettings(BaseSettings):
    model_config = _section("")

    api_keys: str = ""
    """Comma-separated API keys, each ``key`` (admin) or ``key:read`` / ``key:outcome`` / ``key:admin``,
    optionally followed by the key's default priority (``key:read:3``: its predictions queue at priority 3 unless
    they name one; 1 is the highest, at most BATCH_PRIORITY_LEVELS). ``outcome`` is read plus reporting outcomes
    for any prediction (the system that reports fills and P&L). Empty = no auth."""
    predict_requires_key: bool = False
    """When true, predictions need an API key too (any scope)."""
    rate_limit_per_second: float = Field(0.0, ge=0)
    """Per-key request rate limit (token bucket); 0 disables it."""
    version_selection_scope: Literal["any", "read", "admin"] = "read"
    """With API keys configured: the key scope needed to ask for an explicit ``version`` (any caller may
    pick a stage). ``any`` lets anonymous callers pick versions. Archived versions always need admin."""
    cors_allow_origins: str = ""
    """Comma-separated browser origins (``scheme://host[:port]``, e.g. ``https://dash.example.com``) whose pages
    may call the API (CORS: preflights answered, ``Access-Control-Allow-Origin`` on their answers; the key
    travels in ``X-API-Key``, never in cookies). Empty = off: no CORS headers, browsers refuse cross-origin calls.
    ``*`` is refused: list the dashboard's origins."""

    jwt_secret: str = ""
    """HS256 secret that ``Authorization: Bearer`` tokens are signed with (beside API keys). Empty, with no
    JWT_PUBLIC_KEYS either: bearer tokens are refused."""
    jwt_public_keys: str = ""
    """Comma-separated PEM files of the public keys RS256 / ES256 tokens are verified with (each tried)."""
    jwt_algorithms: str = "HS256,RS256,ES256"
    """Signing algorithms accepted (``none`` never is)."""
    jwt_issuer: str = ""
    """Required ``iss`` of every token; empty: not checked."""
    jwt_audience: str = ""
    """Required ``aud`` of every token; empty: a token that names an audience is refused."""
    jwt_leeway_seconds: float = Field(30.0, ge=0, le=600)
    """Clock skew allowed on ``exp`` / ``nbf`` / ``iat``. Every token needs ``exp``."""
    jwt_scope_claim: str = "scope"
    """Claim holding the token's scopes (space-separated string or list): read, outcome or admin, the highest
    wins; a token without one is 403."""
    jwt_scope_prefix: str = ""
    """Prefix of the scope values in that claim (e.g. ``predictions:`` for ``predictions:read``)."""

    @field_validator("jwt_algorithms")
    @classmethod
    def _algorithms(cls, value: str) -> str:
        allowed = {"HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384", "PS256"}
        unknown = [name for name in _comma_list(value) if name not in allowed]
        if unknown or not _comma_list(value):
            raise ValueError(f"SECURITY_JWT_ALGORITHMS: unsupported {unknown or value!r}; use {sorted(allowed)}")
        return value

    @property
    def jwt_algorithm_list(self) -> list[str]:
        return _comma_list(self.jwt_algorithms)

    @property
    def jwt_public_key_list(self) -> list[str]:
        return _comma_list(self.jwt_public_keys)

    @field_validator("cors_allow_origins")
    @classmethod
    def _origins(cls, value: str) -> str:
        for origin in _comma_list(value):
            if origin == "*":
                raise ValueError("CORS_ALLOW_ORIGINS does not take '*': list the origins allowed to call the API")
            if not _ORIGIN.fullmatch(origin):
                raise ValueError(f"CORS_ALLOW_ORIGINS: {origin!r} is not an origin (scheme://host[:port], no path)")
        return value

    @property
    def cors_origin_list(self) -> list[str]:
        return _comma_list(self.cors_allow_origins)


_ORIGIN = re.compile(r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?|https?://\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")
"""A browser's Origin header: scheme, host (a name, an IPv4 or a bracketed IPv6) and an optional port."""


def _comma_list(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


class TracingSettings(BaseSettings):
    model_config = _section("OTEL_")

    exporter_otlp_endpoint: str = ""
    """OpenTelemetry's own variable: the OTLP/HTTP collector base URL (e.g. http://otel-collector:4318); spans
    go to <this>/v1/traces. Set: every prediction is traced (W3C traceparent / tracestate in, a traceresponse
    header out, spans for admission, decode, queue wait, the model run, encode and audit). Empty: no tracing,
    and nothing of it on the request path. The exporter reads its other OTEL_EXPORTER_OTLP_* variables
    (headers, timeout, compression) itself, and the sampler OTEL_TRACES_SAMPLER (default: follow the
    caller's sampled flag, sample new traces)."""
    service_name: str = "prediction-service"
    """The ``service.name`` resource attribute of the exported spans."""


class AuditSettings(BaseSettings):
    model_config = _section("AUDIT_")

    enabled: bool = True
    """Record every prediction in the audit log."""
    db_path: Path | None = None
    """SQLite file; default <MODEL_STORE>/.state/audit.sqlite3."""
    record_payloads: str = Field("hash", pattern="^(none|hash|full)$")
    """What of inputs/outputs to keep: none, a sha256 hash, or the full JSON."""
    batch_size: int = Field(256, ge=1)
    """Records written per transaction."""
    flush_interval_ms: float = Field(20.0, gt=0)
    """Longest a record waits in memory before it is written. Short on purpose: the writer thread shares the
    interpreter lock with the event loop, and writing all that a long interval gathered holds answers back in
    one burst (one client waiting on each answer of the demo's LSTM, p99: 2.9 ms at 200 ms, 1.5 ms at 20 ms,
    0.75 ms with the audit log off). The cost is more, smaller transactions."""
    max_backlog: int = Field(50_000, ge=1)
    """Records held in memory at most; past it new ones are dropped and counted."""
    retention_days: float | None = Field(None, gt=0)
    """Records older than this are deleted by the writer, a few thousand rows per transaction. Unset: kept
    forever (trading record-keeping rules often ask for years; size the disk for it)."""
    prune_interval_seconds: float = Field(300.0, gt=0)
    """How often each worker's writer looks for records past the retention."""
    required_for_readiness: bool = False
    """When true, a failing audit writer makes /health/ready answer 503 (for deployments where an
    unaudited prediction is worse than none). Default: the failure shows in the readiness detail and
    in metrics, but serving continues: a full audit disk should not take every replica out of rotation."""


class StateSettings(BaseSettings):
    model_config = _section("STATE_")

    database_url: str | None = None
    """Where experiments, outcomes, the audit log and the registry event log live. Unset: SQLite files under
    <MODEL_STORE>/.state/ (one host). postgresql://user:password@host:5432/db: one PostgreSQL for every pod
    and node (required when pods on several nodes share the work). Keep it in a Secret."""
    pool_size: int = Field(5, ge=1)
    """PostgreSQL: connections each worker process keeps open (the audit writer uses one)."""
    connect_timeout_seconds: float = Field(5.0, gt=0)
    """PostgreSQL: how long opening a connection may take before the database counts as unavailable."""
    auto_migrate: bool = True
    """Create / upgrade the schema when a process first opens the state (behind a lock). False: refuse an
    outdated schema and ask for `python -m prediction_service state migrate` (for a role without DDL rights)."""


class ExperimentSettings(BaseSettings):
    model_config = _section("EXPERIMENT_")

    db_path: Path | None = None
    """SQLite file for experiments and outcomes; default <MODEL_STORE>/.state/experiments.sqlite3."""
    min_samples_per_arm: int = Field(100, ge=2)
    """Outcomes each arm needs before any PROMOTE/ROLLBACK decision."""
    min_units_per_arm: int = Field(30, ge=2)
    """PROMOTE needs this many effective independent units in each arm: routing keys counted as 1 / sum of
    squared traffic shares (a request without a key is one unit), and time buckets with variance=cluster.
    Few keys, or a few that carry most of the flow, cannot show a model effect."""
    alpha: float = Field(0.05, gt=0, lt=1)
    """Significance level."""
    power: float = Field(0.8, gt=0.5, lt=1)
    """Power the planned sample size gives the PROMOTE rule at target_accuracy_gain."""
    promote_min_accuracy_gain: float = Field(0.01, ge=0, lt=1)
    """PROMOTE needs the estimated gain at least this (the margin; fraction: 0.01 = 1 point), and significance."""
    target_accuracy_gain: float = Field(0.02, gt=0, lt=1)
    """The true gain sample sizes are planned for (and the sequential test's mixture scale): must exceed
    promote_min_accuracy_gain, or no size has the power (an estimate lands beyond its truth half the time)."""
    max_latency_degradation_ms: float = 2.0
    """PROMOTE needs less latency degradation than this; more than this (significantly) means ROLLBACK."""
    rollback_error_rate_increase: float = 0.5
    """ROLLBACK when the challenger's error rate exceeds the champion's by this fraction (0.5 = +50 %)."""
    rollback_accuracy_drop: float = Field(0.02, ge=0, lt=1)
    """ROLLBACK when the estimated accuracy drops by more than this (fraction) and significantly."""
    anonymous_outcomes_auto_apply: bool = False
    """Let read keys post outcomes in auto_apply experiments under the per-prediction rules (their own
    predictions, and those made without a key). Off: an auto_apply experiment takes outcomes only from keys
    with outcome (or admin) scope, so a read key cannot steer production, even with its own predictions."""
    route_cache_ttl_seconds: float = Field(1.0, ge=0)
    """How long a worker caches "which experiment runs for this model" before re-reading SQLite."""
    sharpe_periods_per_year: float = Field(252.0, gt=0)
    """Sharpe annualisation: each outcome counts as one period (252 = one decision per trading day)."""
    busy_timeout_ms: int = Field(5000, ge=0)
    """SQLite busy_timeout: how long a writer waits for another process's lock."""
    outcome_wait_seconds: float = Field(1.0, ge=0, le=30)
    """Predictions under an experiment are recorded behind their responses, in batches; an outcome posted for a
    request id this server issued moments ago waits up to this long for its prediction's record to land
    (an id the server never issued, or an old one, is 404 at once)."""
    record_linger_ms: float = Field(20.0, ge=0, le=1000)
    """How long those records (and shadow answers) wait for company before their batch is written: one
    transaction per batch costs far less than one per request (below outcome_wait_seconds, so an outcome
    posted at once still finds its prediction). Not much longer: the writer thread's work on a batch holds
    the GIL the event loop needs, and at 1,400 requests a second a 50 ms batch put answers' p99 ~0.8 ms
    above a 20 ms one."""
    shadow_queue_size: int = Field(256, ge=1)
    """Shadow experiments: copies of production requests waiting for the challenger, per worker. A copy that
    finds the queue full is shed (prediction_shadow_shed_total): shadow work never holds up production."""
    shadow_concurrency: int = Field(1, ge=1, le=64)
    """Shadow runs at once per worker, in the lowest priority lane of the challenger's queue."""
    shadow_batch_linger_ms: float = Field(20.0, ge=0, le=1000)
    """How long the first waiting shadow copy waits for others to share its model run (up to
    BATCH_MAX_BATCH_SIZE rows): one run per copy cost production more than the copies themselves."""
    shadow_timeout_seconds: float = Field(10.0, gt=0)
    """How long a shadow copy may wait and run before it counts as the challenger's error."""
    auto_apply_interval_seconds: float = Field(10.0, ge=0)
    """How often each worker analyses running auto_apply experiments and acts on a PROMOTE / ROLLBACK
    decision. 0 = only when someone calls analyze. Sequential (mSPRT) experiments may be analysed at any
    time; a fixed-horizon one decides once, at its planned_outcomes."""

    @model_validator(mode="after")
    def _target_beyond_margin(self) -> "ExperimentSettings":
        if self.target_accuracy_gain <= self.promote_min_accuracy_gain:
            raise ValueError(f"EXPERIMENT_TARGET_ACCURACY_GAIN ({self.target_accuracy_gain}) must exceed "
                             f"EXPERIMENT_PROMOTE_MIN_ACCURACY_GAIN ({self.promote_min_accuracy_gain}): sample "
                             "sizes are planned for a true gain beyond the promotion margin")
        return self


class TritonSettings(BaseSettings):
    model_config = _section("TRITON_")

    server_url: str = "127.0.0.1:8010"
    """Triton HTTP endpoint host:port."""
    server_grpc_url: str = "127.0.0.1:8011"
    """Triton gRPC endpoint host:port."""
    use_grpc: bool = False
    """Infer over gRPC instead of HTTP."""
    ssl: bool = False
    """Use TLS to reach Triton."""
    insecure: bool = False
    """With TLS over HTTP: skip certificate verification (development only; gRPC always verifies)."""
    ca_certificates: Path | None = None
    """With TLS: PEM file of the CA(s) that signed Triton's certificate (a private CA); default: system CAs."""
    model_repository: Path | None = None
    """Triton's model repository directory; default <MODEL_STORE>/.triton-repo."""
    default_model_version: str = "1"
    """Version directory written in the Triton repository for each entry."""
    max_batch_size: int = Field(32, ge=0)
    """max_batch_size in generated config.pbtxt files."""
    timeout_seconds: float = Field(5.0, gt=0)
    """Per-call timeout to Triton; past it the request fails with 504."""
    load_timeout_seconds: float = Field(120.0, gt=0)
    """How long loading one model into Triton may take (load_model + readiness)."""
    backend_directory: Path | None = None
    """Triton's --backend-directory: native onnxruntime/pytorch backends there are used; unset = python backend."""
    max_queue_delay_microseconds: int = Field(500, ge=0)
    """Triton dynamic batcher: longest a request waits for others to join its batch."""
    instance_count: int = Field(1, ge=1)
    """Model instances per entry (instance_group count, KIND_CPU)."""


class TorchServeSettings(BaseSettings):
    model_config = _section("TORCHSERVE_")

    inference_url: str = "http://127.0.0.1:8080"
    """TorchServe inference API."""
    management_url: str = "http://127.0.0.1:8081"
    """TorchServe management API. Never exposed through this service."""
    model_store: Path | None = None
    """Directory TorchServe reads .mar files from; default <MODEL_STORE>/.torchserve-store."""
    batch_size: int = Field(16, ge=1)
    """TorchServe server-side batch size."""
    max_batch_delay: int = Field(5, ge=0)
    """TorchServe max batch delay (ms)."""
    default_workers: int = Field(1, ge=1)
    """Initial/min workers per model."""
    max_workers: int = Field(2, ge=1)
    """Max workers per model."""
    timeout_seconds: float = Field(5.0, gt=0)
    """Per-call timeout; past it the request fails with 504."""
    token: str | None = None
    """Token for TorchServe's token authorization (key file's inference/management key)."""
    management_token: str | None = None
    """Management token, when it differs from the inference token."""
    key_file: Path | None = None
    """TorchServe's key_file.json. When set, tokens come from it and are re-read when TorchServe rejects one."""
    register_timeout_seconds: float = Field(120.0, gt=0)
    """Longest a model registration (worker start-up included) may take."""
    health_timeout_seconds: float = Field(1.0, gt=0)
    """Timeout of each management API call of the health check."""


class MlflowSettings(BaseSettings):
    model_config = _section("MLFLOW_")

    tracking_uri: str = ""
    """MLflow tracking server (and model registry) URI, e.g. http://mlflow:5000. Empty = no MLflow bridge."""
    model_names: str = ""
    """Comma-separated MLflow registered model names that `mlflow sync` mirrors into the filesystem registry."""
    production_aliases: str = "production,champion"
    """MLflow aliases that mean production, in priority order; the first one set wins."""
    staging_aliases: str = "staging,challenger"
    """MLflow aliases that mean staging, in priority order; the first one set wins."""
    use_deprecated_stages: bool = True
    """When no alias is set, a model version in MLflow's deprecated stage Production/Staging counts as one."""
    version_prefix: str = Field("mlflow-", pattern=r"^[a-z0-9][a-z0-9._-]*$|^$")
    """Filesystem version name = this prefix + the MLflow version number (mlflow-3), so mirrored versions
    never collide with versions registered by hand."""
    poll_interval_seconds: float = Field(30.0, gt=0)
    """How often a following server re-syncs from MLflow (the `follow` mode; `mlflow sync` is one shot)."""
    follow: bool = True
    """With a tracking URI and model names set, every server process re-syncs from MLflow on the poll interval
    (MLflow aliases move what is served). false = only `mlflow sync` (cron, CI) changes the registry."""

    @staticmethod
    def _names(value: str) -> list[str]:
        return [item.strip() for item in value.split(",") if item.strip()]

    @property
    def model_name_list(self) -> list[str]:
        return self._names(self.model_names)

    @property
    def production_alias_list(self) -> list[str]:
        return self._names(self.production_aliases)

    @property
    def staging_alias_list(self) -> list[str]:
        return self._names(self.staging_aliases)

    @property
    def follows(self) -> bool:
        """Whether a running server follows MLflow (follow mode)."""
        return self.follow and bool(self.tracking_uri) and bool(self.model_name_list)


class SeedApiSettings(BaseSettings):
    model_config = _section("SEED_API_")

    price_model: str = "lstm-price"
    """Model (or ensemble) that POST /api/v1/predict/price serves: the AIPX-compatible path, an alias of
    /v1/models/<this>/predict taking {"bars": ...}."""
    sentiment_model: str = "sentiment-transformer"
    """Model that POST /api/v1/predict/sentiment serves ({"text": ...}; confidence = the top class score)."""
    ensemble_model: str = "price-sentiment"
    """Registered ensemble that POST /api/v1/predict/ensemble serves ({"bars": ..., "text": ...})."""


class DriftSettings(BaseSettings):
    model_config = _section("DRIFT_")

    enabled: bool = True
    """Watch each model version's inputs against its reference profile (GET /v1/models/{name}/drift and the
    prediction_input_drift_* gauges). The reference is the profile.json stored with the version (registry
    register --profile-from), else one learned from the version's first requests."""
    psi_threshold: float = Field(0.2, gt=0)
    """A feature whose population stability index is above this counts as drifted (below 0.1: stable; 0.1 to
    0.25: a moderate shift; above 0.25: a large one)."""
    bins: int = Field(10, ge=2, le=100)
    """Quantile bins per continuous feature of a profile (a feature with fewer distinct values gets one bin
    per value)."""
    reference_requests: int = Field(1000, ge=1)
    """Without a stored profile, this many first answered requests of a version become its reference
    (persisted under <MODEL_STORE>/.state/drift/, so a restart keeps it)."""
    reference_max_rows: int = Field(50_000, ge=1)
    """Feature rows kept while learning a reference (a bars window of 60 steps is 60 rows); later requests of
    the learning period are counted but not kept."""
    reference_sample: int = Field(2000, ge=10)
    """Reference values kept per continuous feature for the Kolmogorov-Smirnov test."""
    window_rows: int = Field(5000, ge=10)
    """Feature rows in each version's rolling window (the newest requests): what is compared with the
    reference."""
    min_window_rows: int = Field(200, ge=1)
    """Figures are computed once the window holds this many rows."""
    interval_seconds: float = Field(30.0, gt=0)
    """How often each worker recomputes PSI and KS (in a thread, for windows that changed)."""
    max_features: int = Field(128, ge=1, le=1024)
    """Features tracked per version (the first ones in signature order): bounds the gauges' label values."""
    max_versions: int = Field(4, ge=1, le=64)
    """Versions tracked per model; past it the least recently requested one is dropped with its gauges."""


class Settings(BaseSettings):
    """The whole configuration. Sections read their own env prefix."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", protected_namespaces=(),
                                      use_attribute_docstrings=True)

    serving_adapter_type: AdapterType = AdapterType.SIMPLE
    """Backend that runs models: simple | torchscript | torchserve | triton."""
    model_store: Path = Path("model_store")
    """Root of the filesystem model registry."""
    serving_precision: Precision = Precision.FP32
    """Precision variant served when a version has several (falls back to fp32)."""
    preload_stages: str = "production"
    """Comma-separated stages whose versions load at startup; readiness waits for them."""
    stage_poll_interval_seconds: float = Field(1.0, gt=0)
    """How often each worker checks stage links for changes (hot reload by other processes)."""
    registry_watch: bool = True
    """Watch the registry with inotify: a request reuses its model's cached resolution while nothing changed,
    instead of a readlink and a stat per request. A promotion by any process on this host is still followed
    by the next request; one written on another host of a network filesystem (no inotify event) within
    STAGE_POLL_INTERVAL_SECONDS. false: check on every request."""
    health_check_interval_seconds: float = Field(5.0, ge=0)
    """How often each worker checks the backend's health and its own readiness for the
    prediction_backend_healthy / prediction_ready metrics (a scrape never calls the backend); 0 = never."""
    backend_lease_ttl_seconds: float = Field(600.0, gt=0)
    """A shared Triton/TorchServe model is unloaded by the last worker holding it. Holders on other hosts
    are known by heartbeat (every third of this); one silent for this long is taken for gone."""

    server: ServerSettings = Field(default_factory=ServerSettings)
    simple: SimpleSettings = Field(default_factory=SimpleSettings)
    batching: BatchingSettings = Field(default_factory=BatchingSettings)
    warmup: WarmupSettings = Field(default_factory=WarmupSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    security: SecuritySettings = Field(default_factory=SecuritySettings)
    audit: AuditSettings = Field(default_factory=AuditSettings)
    tracing: TracingSettings = Field(default_factory=TracingSettings)
    experiments: ExperimentSettings = Field(default_factory=ExperimentSettings)
    triton: TritonSettings = Field(default_factory=TritonSettings)
    torchserve: TorchServeSettings = Field(default_factory=TorchServeSettings)
    mlflow: MlflowSettings = Field(default_factory=MlflowSettings)
    state: StateSettings = Field(default_factory=StateSettings)
    seed_api: SeedApiSettings = Field(default_factory=SeedApiSettings)
    drift: DriftSettings = Field(default_factory=DriftSettings)

    @field_validator("serving_adapter_type", mode="before")
    @classmethod
    def _known_adapter(cls, value: object) -> object:
        valid = [a.value for a in AdapterType]
        if isinstance(value, str) and value.lower() not in valid:
            raise ValueError(f"unknown SERVING_ADAPTER_TYPE {value!r}; valid: {', '.join(valid)}")
        return value.lower() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _absolute_store(self) -> "Settings":
        self.model_store = self.model_store.expanduser().resolve()
        return self

    @property
    def state_dir(self) -> Path:
        """Where SQLite state and generated backend repositories live by default."""
        return self.model_store / ".state"

    @property
    def preload_stage_list(self) -> list[str]:
        return [s.strip() for s in self.preload_stages.split(",") if s.strip()]


def example_env() -> str:
    """config/example.env, generated from the fields and their docstrings so it never drifts."""
    lines = ["# prediction-service configuration: every variable with its default.",
             "# Generated by `python -m prediction_service config-example`; copy to .env and edit.", ""]

    def emit(model: type[BaseSettings], prefix: str) -> None:
        for name, field in model.model_fields.items():
            annotation = field.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseSettings):
                continue
            default = field.get_default(call_default_factory=True)
            value = default.value if isinstance(default, Enum) else ("" if default is None else default)
            description = " ".join((field.description or "").split())  # docstrings may span lines
            lines.extend(f"# {line}" for line in textwrap.wrap(description, 100) or [""])
            lines.append(f"{(prefix + name).upper()}={value}")
        lines.append("")

    emit(Settings, "")
    for name, field in Settings.model_fields.items():
        section = field.annotation
        if isinstance(section, type) and issubclass(section, BaseSettings):
            lines.append(f"# ---- {name} ----")
            emit(section, section.model_config.get("env_prefix", ""))
    return "\n".join(lines)
