"""Database engines for both deployments: SQLite embedded, PostgreSQL distributed."""

import logging
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event

logger = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).resolve().parents[1] / "consumers" / "migrations"


def _sqlite_durable(dbapi_connection: Any, _record: Any) -> None:
    """WAL with a full sync on commit: a committed report survives ``kill -9`` and power loss."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def make_engine(url: str, *, pool_size: int = 5) -> Engine:
    """An engine for ``url`` with the settings this project relies on."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False})
        event.listen(engine, "connect", _sqlite_durable)
        return engine

    return create_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        pool_timeout=5,
        connect_args={"connect_timeout": 5},
    )


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest Alembic revision (safe to run at every start)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection_engine"] = engine
    command.upgrade(config, "head")
