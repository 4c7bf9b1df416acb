"""The state schema as SQLAlchemy Core tables, one ``MetaData`` per area.

An area is what one store owns: experiments (experiments, their served predictions, outcomes), the
prediction audit log, and the registry event log. With SQLite each area is its own file (three write
locks instead of one); with PostgreSQL all three share one database, so table names are unique across
areas. Alembic migrations (migrations/<area>/versions) create these tables: change a table here, then add
a migration that brings existing databases to it.
"""

from __future__ import annotations

from sqlalchemy import (BigInteger, CheckConstraint, Column, Double, ForeignKey, Index, Integer, MetaData, Table,
                        Text, text)

# SQLite only makes "INTEGER PRIMARY KEY" the rowid alias (a BIGINT key would never be filled in).
Id = BigInteger().with_variant(Integer(), "sqlite")

EXPERIMENTS = "experiments"
AUDIT = "audit"
EVENTS = "events"
AREAS = (EXPERIMENTS, AUDIT, EVENTS)

experiments_metadata = MetaData()
audit_metadata = MetaData()
events_metadata = MetaData()

experiments = Table(
    "experiments", experiments_metadata,
    Column("id", Text, primary_key=True),
    Column("model_name", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("spec", Text, nullable=False),
    Column("created_at", Double, nullable=False),
    Column("ended_at", Double),
    Column("end_reason", Text),
    # "one running experiment per model": two processes racing to create one cannot both win
    Index("one_running_experiment_per_model", "model_name", unique=True,
          sqlite_where=text("status = 'running'"), postgresql_where=text("status = 'running'")),
)

experiment_predictions = Table(
    "experiment_predictions", experiments_metadata,
    Column("request_id", Text, primary_key=True),
    Column("experiment_id", Text, ForeignKey("experiments.id"), nullable=False),
    Column("arm", Text, CheckConstraint("arm IN ('champion', 'challenger')", name="experiment_predictions_arm"),
           nullable=False),
    Column("version", Text, nullable=False),
    Column("served_at", Double, nullable=False),
    Column("latency_ms", Double, nullable=False),
    Column("error", Integer, nullable=False),
    Column("predicted_class", Integer),
    Column("predicted_value", Double),
    Column("unit", Text),
    Column("api_key_id", Text),
    Index("experiment_predictions_by_experiment", "experiment_id", "arm"),
)

experiment_outcomes = Table(
    "experiment_outcomes", experiments_metadata,
    Column("request_id", Text, ForeignKey("experiment_predictions.request_id"), primary_key=True),
    Column("actual", Double, nullable=False),
    Column("correct", Integer),
    Column("abs_error", Double),
    Column("pnl", Double),
    Column("recorded_at", Double, nullable=False),
    Column("worst_case", Integer, nullable=False, server_default=text("0")),
)

experiment_shadow_predictions = Table(
    # the challenger's answer to a copy of a production request (shadow experiments), by the request's id; no
    # key to experiment_predictions: the copy may finish before the champion's answer is recorded
    "experiment_shadow_predictions", experiments_metadata,
    Column("request_id", Text, primary_key=True),
    Column("experiment_id", Text, ForeignKey("experiments.id"), nullable=False),
    Column("version", Text, nullable=False),
    Column("served_at", Double, nullable=False),
    Column("latency_ms", Double, nullable=False),
    Column("error", Integer, nullable=False),
    Column("predicted_class", Integer),
    Column("predicted_value", Double),
    Index("experiment_shadow_predictions_by_experiment", "experiment_id"),
)

audit_predictions = Table(
    "audit_predictions", audit_metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("ts", Text, nullable=False),  # UTC ISO-8601, when the request arrived
    Column("ts_epoch", Double, nullable=False),
    Column("request_id", Text, nullable=False),
    Column("model", Text, nullable=False),
    Column("version", Text),
    Column("stage", Text),
    Column("arm", Text),
    Column("experiment_id", Text),
    Column("latency_ms", Double, nullable=False),
    Column("status", Integer, nullable=False),
    Column("error_code", Text),
    Column("backend", Text),
    Column("api_key_id", Text),
    Column("inputs", Text),  # NULL, sha256 hex, or JSON (AUDIT_RECORD_PAYLOADS)
    Column("outputs", Text),
    Column("trace_id", Text),  # 32 hex digits: the W3C trace (tracing on), else NULL; migration a0002
    Index("audit_predictions_model_time", "model", "ts_epoch"),
    Index("audit_predictions_request", "request_id"),
    Index("audit_predictions_time", "ts_epoch"),  # retention and oldest()
    Index("audit_predictions_trace", "trace_id", sqlite_where=text("trace_id IS NOT NULL"),
          postgresql_where=text("trace_id IS NOT NULL")),  # partial: untraced records cost it nothing
)

registry_events = Table(
    "registry_events", events_metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("ts_us", BigInteger, nullable=False),
    Column("model", Text, nullable=False),
    Column("version", Text),
    Column("event", Text, nullable=False),
    Column("from_stage", Text),
    Column("to_stage", Text),
    Column("actor", Text, nullable=False),
    Column("details", Text, nullable=False, server_default=text("'{}'")),
    Index("registry_events_model_ts", "model", "ts_us"),
    sqlite_autoincrement=True,  # ids never reused: the log's order is its id order
)

METADATA = {EXPERIMENTS: experiments_metadata, AUDIT: audit_metadata, EVENTS: events_metadata}
