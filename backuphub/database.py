"""Database engines for both deployments: SQLite embedded, PostgreSQL distributed."""

import logging
import time
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import OperationalError

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

    # A database that stops answering must not hold a request or a batch for ever: TCP
    # keepalives notice a silent peer within about 25 s, and no statement runs past 30 s.
    # Both end in an error the callers already treat as "retry later".
    return create_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        pool_timeout=5,
        connect_args={
            "connect_timeout": 5,
            "keepalives": 1,
            "keepalives_idle": 10,
            "keepalives_interval": 5,
            "keepalives_count": 3,
            "options": "-c statement_timeout=30000",
        },
    )


class DatabaseUnreachable(RuntimeError):
    """The database did not answer within the wait a service allows itself at start."""


def migrate(engine: Engine, *, wait_seconds: float = 60.0) -> None:
    """Bring the schema to the newest Alembic revision (safe to run at every start).

    Services started together with their database (compose, a reboot) wait for it up to
    ``wait_seconds`` instead of failing at once; then they stop with a clear message.
    """
    deadline = time.monotonic() + wait_seconds
    delay = 0.5
    while True:
        try:
            _upgrade(engine)
            return
        except OperationalError as error:
            if time.monotonic() + delay > deadline:
                raise DatabaseUnreachable(
                    f"database {engine.url.render_as_string(hide_password=True)} not reachable "
                    f"after {wait_seconds:.0f} s: {str(error.orig).strip()[:200]}"
                ) from error
            logger.warning("database not reachable yet, waiting", extra={"delay": delay})
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def _upgrade(engine: Engine) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection_engine"] = engine
    command.upgrade(config, "head")
