"""The persist service: the Kafka-to-PostgreSQL persister and the query API in one process.

Alongside them run the missing-backup check (``consumers.alert_checker``) and the outbox
publisher that sends alert events to the alerts topic (``consumers.outbox``).
"""

import asyncio
import contextlib
import logging

from fastapi import FastAPI
from sqlalchemy import Engine

from backuphub.http import ApiError, envelope, install_common
from backuphub.loop import serve_beside, service_server
from backuphub.settings import Settings
from consumers.alert_checker import MissingBackupChecker
from consumers.alerts_api import alert_routers
from consumers.outbox import OutboxPublisher
from consumers.persister import Persister
from consumers.query_api import query_router
from ingest_api.app import database_reachable

logger = logging.getLogger(__name__)


def create_query_app(engine: Engine, jwt_secret: str, persister: Persister | None) -> FastAPI:
    app = FastAPI(title="backuphub query")
    install_common(app, "query")
    app.include_router(query_router(engine, jwt_secret))
    for router in alert_routers(engine, jwt_secret):
        app.include_router(router)

    @app.get("/health", include_in_schema=False)
    async def health() -> dict[str, object]:
        checks = {
            "database": await asyncio.to_thread(database_reachable, engine),
            "kafka": persister is not None and persister.consumer is not None,
            "writes": persister is None or not persister.writes_stalled(),
        }
        if not all(checks.values()):
            raise ApiError(503, f"degraded: {checks}")
        return envelope(True, "ok", checks)

    return app


async def serve_persister(settings: Settings, engine: Engine, host: str, port: int) -> None:
    """Run the persister and the query API until the process is told to stop."""
    persister = Persister(engine, settings.kafka_bootstrap_servers, settings.topics)
    app = create_query_app(engine, settings.jwt_secret, persister)
    server = service_server(app, host, port)

    stopping = asyncio.Event()
    publisher = OutboxPublisher(engine, settings.kafka_bootstrap_servers, settings.topics)
    checker = MissingBackupChecker(engine, interval_seconds=settings.alert_check_seconds)
    checker.on_events = publisher.wake
    persister.on_written = publisher.wake
    alerting = [
        asyncio.create_task(publisher.run(stopping)),
        asyncio.create_task(checker.run(stopping)),
    ]

    async def shutdown() -> None:
        stopping.set()
        await persister.stop()
        for task in alerting:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await publisher.stop()

    await serve_beside(server, persister.run(), "persister", shutdown)
