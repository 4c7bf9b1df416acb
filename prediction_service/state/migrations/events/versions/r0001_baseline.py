"""The registry event log.

Adopts an SQLite file written before the state layer (table ``events``): renames it, keeping every
row and its id (AUTOINCREMENT's counter moves with the table).

Revision ID: r0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "r0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    tables = set(sa.inspect(op.get_bind()).get_table_names())
    if "events" in tables and "registry_events" not in tables:  # a legacy SQLite event log
        op.execute("DROP INDEX IF EXISTS events_model_ts")
        op.execute("ALTER TABLE events RENAME TO registry_events")
    else:
        op.create_table(
            "registry_events",
            sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True,
                      autoincrement=True),
            sa.Column("ts_us", sa.BigInteger, nullable=False),
            sa.Column("model", sa.Text, nullable=False),
            sa.Column("version", sa.Text),
            sa.Column("event", sa.Text, nullable=False),
            sa.Column("from_stage", sa.Text),
            sa.Column("to_stage", sa.Text),
            sa.Column("actor", sa.Text, nullable=False),
            sa.Column("details", sa.Text, nullable=False, server_default=sa.text("'{}'")),
            sqlite_autoincrement=True)
    op.create_index("registry_events_model_ts", "registry_events", ["model", "ts_us"])


def downgrade() -> None:
    op.drop_table("registry_events")
