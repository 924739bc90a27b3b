"""The processor service: ``ReportProcessor`` with a small HTTP app for health and metrics.

Alerts are not decided here: they are decided in the persister's transaction against the
``alerts`` table (``processors.alerting``, ``consumers.alert_store``), because only there is
the state that keeps one open alert per job and kind without repeats.
"""

import logging

from fastapi import FastAPI

from backuphub.http import ApiError, envelope, install_common
from backuphub.loop import run, serve_beside, service_server
from backuphub.settings import Settings
from processors.stream import ReportProcessor

logger = logging.getLogger(__name__)


def create_processor_web_app(processor: ReportProcessor) -> FastAPI:
    """``/health`` (connected, partitions held, publishes flowing) and ``/metrics``."""
    app = FastAPI(title="backuphub processor", docs_url=None, redoc_url=None, openapi_url=None)
    install_common(app, "processor")

    @app.get("/health")
    async def health() -> dict[str, object]:
        checks = {
            "kafka": processor.consumer is not None,
            "publishing": not processor.publishing_stalled(),
        }
        data = {**checks, "assigned_partitions": processor.assigned_partitions()}
        if not all(checks.values()):
            raise ApiError(503, f"degraded: {data}")
        return envelope(True, "ok", data)

    return app


async def serve_processor(settings: Settings, host: str, port: int) -> None:
    """Run the processor and its HTTP app until the process is told to stop."""
    processor = ReportProcessor(settings.kafka_bootstrap_servers, settings.topics)
    app = create_processor_web_app(processor)
    server = service_server(app, host, port)
    await serve_beside(server, processor.run(), "processor", processor.stop)


def run_processor(settings: Settings, *, web_host: str = "127.0.0.1", web_port: int = 8001) -> None:
    """Run the processor in the foreground until it is stopped (SIGINT or SIGTERM)."""
    run(serve_processor(settings, web_host, web_port))
