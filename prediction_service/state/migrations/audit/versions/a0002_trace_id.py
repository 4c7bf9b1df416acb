"""The audit record's trace id: the W3C trace the prediction belonged to (the caller's traceparent, or the one
the server started), when tracing is on; NULL otherwise and for records written before.

Revision ID: a0002
Revises: a0001
"""

import sqlalchemy as sa
from alembic import op

revision = "a0002"
down_revision = "a0001"
branch_labels = None
depends_on = None

TRACED = sa.text("trace_id IS NOT NULL")


def upgrade() -> None:
    # a nullable column without a default: no table rewrite on SQLite or PostgreSQL, whatever the table's size
    op.add_column("audit_predictions", sa.Column("trace_id", sa.Text))
    # partial: a record without a trace (tracing off) costs the index nothing
    op.create_index("audit_predictions_trace", "audit_predictions", ["trace_id"], sqlite_where=TRACED,
                    postgresql_where=TRACED)


def downgrade() -> None:
    op.drop_index("audit_predictions_trace", "audit_predictions")
    with op.batch_alter_table("audit_predictions") as batch:
        batch.drop_column("trace_id")
