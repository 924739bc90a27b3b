"""Alembic environment: runs against the engine the caller hands over, or DATABASE_URL."""

import os

from alembic import context
from sqlalchemy import create_engine, text

from schemas.tables import metadata

config = context.config
engine = config.attributes.get("connection_engine")
if engine is None:
    engine = create_engine(os.environ["DATABASE_URL"])

with engine.begin() as connection:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    if connection.dialect.name == "postgresql":
        # Services started together all migrate at start; one at a time, the rest then
        # find the schema already current.
        connection.execute(text("SELECT pg_advisory_xact_lock(4707101)"))
    with context.begin_transaction():
        context.run_migrations()
