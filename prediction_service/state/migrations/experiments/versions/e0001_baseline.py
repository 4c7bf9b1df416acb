"""Experiments, the predictions served under them, and their outcomes.

Adopts an SQLite file written before the state layer (tables ``predictions`` / ``outcomes``, perhaps
without the columns added later): renames them and adds what is missing, keeping every row.

Revision ID: e0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "e0001"
down_revision = None
branch_labels = None
depends_on = None

RUNNING = sa.text("status = 'running'")


def upgrade() -> None:
    bind = op.get_bind()
    tables = set(sa.inspect(bind).get_table_names())
    if "experiments" not in tables:
        op.create_table(
            "experiments",
            sa.Column("id", sa.Text, primary_key=True),
            sa.Column("model_name", sa.Text, nullable=False),
            sa.Column("status", sa.Text, nullable=False),
            sa.Column("spec", sa.Text, nullable=False),
            sa.Column("created_at", sa.Double, nullable=False),
            sa.Column("ended_at", sa.Double),
            sa.Column("end_reason", sa.Text))
        op.create_index("one_running_experiment_per_model", "experiments", ["model_name"], unique=True,
                        sqlite_where=RUNNING, postgresql_where=RUNNING)
    if "predictions" in tables and "experiment_predictions" not in tables:
        _adopt_legacy(bind)
        return
    op.create_table(
        "experiment_predictions",
        sa.Column("request_id", sa.Text, primary_key=True),
        sa.Column("experiment_id", sa.Text, sa.ForeignKey("experiments.id"), nullable=False),
        sa.Column("arm", sa.Text, sa.CheckConstraint("arm IN ('champion', 'challenger')",
                                                     name="experiment_predictions_arm"), nullable=False),
        sa.Column("version", sa.Text, nullable=False),
        sa.Column("served_at", sa.Double, nullable=False),
        sa.Column("latency_ms", sa.Double, nullable=False),
        sa.Column("error", sa.Integer, nullable=False),
        sa.Column("predicted_class", sa.Integer),
        sa.Column("predicted_value", sa.Double),
        sa.Column("unit", sa.Text),
        sa.Column("api_key_id", sa.Text))
    op.create_index("experiment_predictions_by_experiment", "experiment_predictions", ["experiment_id", "arm"])
    op.create_table(
        "experiment_outcomes",
        sa.Column("request_id", sa.Text, sa.ForeignKey("experiment_predictions.request_id"), primary_key=True),
        sa.Column("actual", sa.Double, nullable=False),
        sa.Column("correct", sa.Integer),
        sa.Column("abs_error", sa.Double),
        sa.Column("pnl", sa.Double),
        sa.Column("recorded_at", sa.Double, nullable=False),
        sa.Column("worst_case", sa.Integer, nullable=False, server_default=sa.text("0")))


def _adopt_legacy(bind) -> None:
    # Plain SQLite statements: a legacy file is always SQLite, and RENAME keeps rows, rowids and the
    # outcomes -> predictions foreign key (SQLite rewrites references to a renamed table).
    inspector = sa.inspect(bind)
    added = [("predictions", "unit", "TEXT"), ("predictions", "api_key_id", "TEXT"),
             ("outcomes", "worst_case", "INTEGER NOT NULL DEFAULT 0")]
    for table, column, declaration in added:
        if column not in {c["name"] for c in inspector.get_columns(table)}:
            op.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
    op.execute("DROP INDEX IF EXISTS predictions_by_experiment")
    op.execute("ALTER TABLE predictions RENAME TO experiment_predictions")
    op.execute("ALTER TABLE outcomes RENAME TO experiment_outcomes")
    op.create_index("experiment_predictions_by_experiment", "experiment_predictions", ["experiment_id", "arm"])


def downgrade() -> None:
    op.drop_table("experiment_outcomes")
    op.drop_table("experiment_predictions")
    op.drop_table("experiments")
