"""Alembic script directories, one per state area (its own version table: alembic_version_<area>)."""
