"""What every area's env.py runs: migrations inside the connection (and transaction) ``migrate.upgrade``
hands over in ``config.attributes["connection"]``."""

from __future__ import annotations

from alembic import context

from ..tables import METADATA


def run(area: str) -> None:
    connection = context.config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("run migrations with `python -m prediction_service state migrate`")
    context.configure(connection=connection, target_metadata=METADATA[area],
                      version_table=f"alembic_version_{area}",
                      render_as_batch=connection.dialect.name == "sqlite")  # SQLite alters by table copy
    with context.begin_transaction():
        context.run_migrations()
