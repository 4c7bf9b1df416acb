"""The prediction audit log.

Adopts an SQLite file written before the state layer (table ``predictions``): renames it, keeping
every row and its id.

Revision ID: a0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "a0001"
down_revision = None
branch_labels = None
depends_on = None

INDEXES = [("audit_predictions_model_time", ["model", "ts_epoch"]), ("audit_predictions_request", ["request_id"]),
           ("audit_predictions_time", ["ts_epoch"])]


def upgrade() -> None:
    tables = set(sa.inspect(op.get_bind()).get_table_names())
    if "predictions" in tables and "audit_predictions" not in tables:  # a legacy SQLite audit file
        for old in ("predictions_model_time", "predictions_request", "predictions_time"):
            op.execute(f"DROP INDEX IF EXISTS {old}")
        op.execute("ALTER TABLE predictions RENAME TO audit_predictions")
    else:
        op.create_table(
            "audit_predictions",
            sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True,
                      autoincrement=True),
            sa.Column("ts", sa.Text, nullable=False),
            sa.Column("ts_epoch", sa.Double, nullable=False),
            sa.Column("request_id", sa.Text, nullable=False),
            sa.Column("model", sa.Text, nullable=False),
            sa.Column("version", sa.Text),
            sa.Column("stage", sa.Text),
            sa.Column("arm", sa.Text),
            sa.Column("experiment_id", sa.Text),
            sa.Column("latency_ms", sa.Double, nullable=False),
            sa.Column("status", sa.Integer, nullable=False),
            sa.Column("error_code", sa.Text),
            sa.Column("backend", sa.Text),
            sa.Column("api_key_id", sa.Text),
            sa.Column("inputs", sa.Text),
            sa.Column("outputs", sa.Text))
    for name, columns in INDEXES:
        op.create_index(name, "audit_predictions", columns)


def downgrade() -> None:
    op.drop_table("audit_predictions")
