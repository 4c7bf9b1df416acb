"""Shadow experiments: the challenger's answers to copies of production requests, by request id.

Revision ID: e0002
Revises: e0001
"""

import sqlalchemy as sa
from alembic import op

revision = "e0002"
down_revision = "e0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "experiment_shadow_predictions",
        sa.Column("request_id", sa.Text, primary_key=True),
        sa.Column("experiment_id", sa.Text, sa.ForeignKey("experiments.id"), nullable=False),
        sa.Column("version", sa.Text, nullable=False),
        sa.Column("served_at", sa.Double, nullable=False),
        sa.Column("latency_ms", sa.Double, nullable=False),
        sa.Column("error", sa.Integer, nullable=False),
        sa.Column("predicted_class", sa.Integer),
        sa.Column("predicted_value", sa.Double))
    op.create_index("experiment_shadow_predictions_by_experiment", "experiment_shadow_predictions",
                    ["experiment_id"])


def downgrade() -> None:
    op.drop_index("experiment_shadow_predictions_by_experiment", "experiment_shadow_predictions")
    op.drop_table("experiment_shadow_predictions")
