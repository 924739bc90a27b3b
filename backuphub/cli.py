"""The ``backuphub`` command: every service and tool of the project behind one entry point."""

import argparse
import asyncio
import logging
import os
import shutil
import sys
import tempfile
from typing import Any

from backuphub.database import DatabaseUnreachable
from backuphub.settings import ConfigurationError, Settings, embedded_secrets


def _serve(args: argparse.Namespace) -> int:
    """The embedded deployment: everything in one process on SQLite."""
    import uvicorn

    from backuphub.database import make_engine, migrate
    from backuphub.embedded import EmbeddedSink
    from backuphub.security import ApiKeys
    from consumers.alert_checker import MissingBackupChecker
    from consumers.alerts_api import alert_routers
    from consumers.query_api import query_router
    from ingest_api.app import AuthAlarms, create_ingest_app
    from ingest_api.auth_monitor import DatabaseAlertEmitter, monitor_from
    from ingest_api.registry import JobRegistry

    settings = Settings.from_env()
    port = _serve_port(args.port)
    _check_port_free(args.host, port)
    home = settings.home.resolve()
    secrets = embedded_secrets(home)
    database_url = settings.database_url or f"sqlite:///{home / 'backuphub.db'}"
    engine = make_engine(database_url)
    migrate(engine)

    # The generated key always works, so the README's first steps do too; keys from the
    # environment (e.g. the agents' AOMEI_API_KEY on the same machine) are accepted beside it.
    keys = ApiKeys([secrets.api_key, *settings.api_keys])
    jwt_secret = settings.jwt_secret or secrets.jwt_secret
    sink = EmbeddedSink(engine)
    # Alerts are stored like in the distributed mode; the missing-backup check runs in this
    # process and shares the sink's write lock (one SQLite writer at a time).
    checker = MissingBackupChecker(
        engine,
        source="embedded",
        write_lock=sink.write_lock,
        interval_seconds=settings.alert_check_seconds,
    )
    stopping = asyncio.Event()
    app = create_ingest_app(
        keys=keys,
        registry=JobRegistry(engine),
        sink=sink,
        extra_routers=(
            query_router(engine, jwt_secret),
            *alert_routers(engine, jwt_secret, sink.write_lock),
        ),
        service="embedded",
        max_in_flight=settings.max_in_flight,
        alarms=AuthAlarms(monitor_from(settings), DatabaseAlertEmitter(engine, sink.write_lock)),
        background=(lambda: checker.run(stopping),),
    )

    base = f"http://{args.host}:{port}"
    also = "\n  also:      the keys in AOMEI_API_KEYS / AOMEI_API_KEY" if settings.api_keys else ""
    print(
        f"backuphub (embedded) serving on {base}\n"
        f"  data:      {database_url}\n"
        f"  API key:   {secrets.api_key} (kept in {home / 'api_key'}){also}\n"
        f"  get a JWT: .venv/bin/backuphub token --subject you --role viewer"
        f" (from this folder, or with BACKUPHUB_HOME={home})\n"
        f"  try:       curl -H 'X-API-Key: <key>' -H 'Content-Type: application/json' "
        f'-d \'{{"job_id": 0, "task_name": "Test Backup"}}\' {base}/api/v1/aomei/register',
        flush=True,
    )
    uvicorn.run(app, host=args.host, port=port, log_config=None)
    return 0


def _serve_port(given: int | None) -> int:
    """The port from ``--port``, else ``PORT``, else 8080; a clear error when it is not one."""
    if given is not None:
        return given
    value = os.environ.get("PORT", "8080")
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise ConfigurationError(f"PORT must be a port number (1-65535), not {value!r}")
    return int(value)


def _check_port_free(host: str, port: int) -> None:
    """Fail before any setup when the address is taken, with the way out."""
    import socket

    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            raise ConfigurationError(
                f"cannot listen on {host}:{port} ({error.strerror}); "
                f"choose another port: make run PORT=8081, or backuphub serve --port 8081"
            ) from error


def _distributed_settings(*needs: str) -> Settings:
    settings = Settings.from_env()
    settings.require(*needs)
    return settings


def ingest_app() -> Any:
    """The ingest app from the environment; each ``--workers`` process calls this itself."""
    from backuphub.database import make_engine
    from backuphub.logs import configure_logging
    from backuphub.security import ApiKeys
    from ingest_api.app import AuthAlarms, create_ingest_app
    from ingest_api.auth_monitor import KafkaAlertEmitter, monitor_from
    from ingest_api.publish import KafkaReportSink
    from ingest_api.registry import JobRegistry

    if not logging.getLogger().handlers:  # a worker process: main() did not run here
        configure_logging(os.environ.get("BACKUPHUB_LOG_LEVEL", "INFO"))
    settings = _distributed_settings("api_keys", "database_url")
    engine = make_engine(settings.database_url)
    sink = KafkaReportSink(
        settings.kafka_bootstrap_servers, settings.topics, settings.publish_timeout_seconds
    )
    app = create_ingest_app(
        keys=ApiKeys(settings.api_keys),
        registry=JobRegistry(engine),
        sink=sink,
        retry_after=settings.retry_after_seconds,
        max_in_flight=settings.max_in_flight,
        # Bursts of bad API keys go to the alerts topic through the ingest producer.
        alarms=AuthAlarms(
            monitor_from(settings),
            KafkaAlertEmitter(lambda: sink.producer, settings.topics.alerts),
        ),
    )
    return app


def _ingest(args: argparse.Namespace) -> int:
    import uvicorn

    from backuphub.database import make_engine, migrate

    settings = _distributed_settings("api_keys", "database_url")
    migrate(make_engine(settings.database_url))  # once, before any worker starts
    options: dict[str, Any] = {
        "host": args.host,
        "port": args.port,
        "log_config": None,
        "access_log": False,
    }
    if args.workers <= 1:
        uvicorn.run(ingest_app(), **options)
        return 0

    # Several processes share the port. Each keeps its own producer, job cache and metrics;
    # prometheus_client's multiprocess mode (a folder of per-process files, read by /metrics
    # in backuphub.http) sums their counters so any worker answers /metrics for all.
    metrics_dir = tempfile.mkdtemp(prefix="backuphub-ingest-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    try:
        uvicorn.run("backuphub.cli:ingest_app", factory=True, workers=args.workers, **options)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0


def _process(args: argparse.Namespace) -> int:
    from processors.app import run_processor

    settings = _distributed_settings()
    run_processor(settings, web_host=args.host, web_port=args.port)
    return 0


def _persist(args: argparse.Namespace) -> int:
    from backuphub.database import make_engine, migrate
    from backuphub.loop import run
    from consumers.service import serve_persister

    settings = _distributed_settings("jwt_secret", "database_url")
    engine = make_engine(settings.database_url)
    migrate(engine)
    run(serve_persister(settings, engine, args.host, args.port))
    return 0


def _notify(args: argparse.Namespace) -> int:
    """Deliver alert events to the targets of a JSON config (see consumers.notify_targets)."""
    from pathlib import Path

    from backuphub.database import make_engine, migrate
    from consumers.notify import (
        DeliveryLedger,
        KafkaNotifyService,
        Notifier,
        OutboxNotifyService,
        serve_notify,
    )
    from consumers.notify_targets import ConfigError, load_config

    settings = Settings.from_env()
    config_path = args.config or settings.notify_config
    if not config_path:
        raise ConfigurationError("notify needs --config PATH (or BACKUPHUB_NOTIFY_CONFIG)")
    try:
        config = load_config(config_path)
    except ConfigError as error:
        raise ConfigurationError(str(error)) from error

    state_dir = Path(args.state_dir) if args.state_dir else settings.home.resolve() / "notify"
    ledger = (
        DeliveryLedger(make_engine(args.ledger_url))
        if args.ledger_url
        else DeliveryLedger.in_state_dir(state_dir)
    )

    if args.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(args.metrics_port, addr=args.host)  # /metrics: lag, deliveries

    async def main() -> None:
        notifier = Notifier(config, ledger)
        service: KafkaNotifyService | OutboxNotifyService
        if args.from_database:
            home = settings.home.resolve()
            url = settings.database_url or f"sqlite:///{home / 'backuphub.db'}"
            engine = make_engine(url)
            migrate(engine)
            service = OutboxNotifyService(notifier, engine)
        else:
            servers = settings.kafka_bootstrap_servers
            service = KafkaNotifyService(notifier, servers, settings.topics)
        await serve_notify(service, notifier)

    asyncio.run(main())
    return 0


def _migrate(_args: argparse.Namespace) -> int:
    from backuphub.database import make_engine, migrate

    settings = _distributed_settings("database_url")
    migrate(make_engine(settings.database_url))
    print("schema is up to date")
    return 0


def _token(args: argparse.Namespace) -> int:
    from backuphub.security import issue_token

    settings = Settings.from_env()
    if not args.subject.strip():
        raise ConfigurationError("--subject must name who the token is for")
    if args.ttl <= 0:
        raise ConfigurationError("--ttl must be a positive number of seconds")

    secret = settings.jwt_secret or _embedded_jwt_secret(settings)
    print(issue_token(secret, subject=args.subject, role=args.role, ttl_seconds=args.ttl))
    return 0


def _embedded_jwt_secret(settings: Settings) -> str:
    """The secret ``backuphub serve`` made; never a new one, which no server would know."""
    secret_file = settings.home.resolve() / "jwt_secret"
    if not secret_file.exists():
        raise ConfigurationError(
            f"no JWT secret at {secret_file}: run this in the folder where backuphub serve "
            "runs, or set BACKUPHUB_HOME to its data folder, or BACKUPHUB_JWT_SECRET to the "
            "distributed services' secret"
        )
    return secret_file.read_text().strip()


def _aomei_parse(args: argparse.Namespace) -> int:
    from processors.aomei.cli import run_parse

    return run_parse(
        args.path, since=args.since, task_id=args.task_id, out=sys.stdout, err=sys.stderr
    )


def _agent(args: argparse.Namespace) -> int:
    """Ship new brlog.xml entries to the ingest API (one run), or preview with --test-mode."""
    from processors.aomei.agent import run_command

    return run_command(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="backuphub", description="Collect and query AOMEI Backupper run reports."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run everything in one process on SQLite")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, help="default: PORT, else 8080")
    serve.set_defaults(handler=_serve)

    ingest = commands.add_parser("ingest", help="run the ingest API (publishes to Kafka)")
    ingest.add_argument("--host", default="127.0.0.1")
    ingest.add_argument("--port", type=int, default=8000)
    ingest.add_argument(
        "--workers",
        type=int,
        default=int(os.environ.get("BACKUPHUB_INGEST_WORKERS", "1")),
        help="processes sharing the port (default 1; BACKUPHUB_INGEST_WORKERS)",
    )
    ingest.set_defaults(handler=_ingest)

    process = commands.add_parser("process", help="run the stream processor: reports to executions")
    process.add_argument("--host", default="127.0.0.1", help="metrics and health address")
    process.add_argument("--port", type=int, default=8001, help="metrics and health port")
    process.set_defaults(handler=_process)

    persist = commands.add_parser("persist", help="run the persister and the query API")
    persist.add_argument("--host", default="127.0.0.1")
    persist.add_argument("--port", type=int, default=8002)
    persist.set_defaults(handler=_persist)

    notify = commands.add_parser("notify", help="deliver alerts to webhooks, chat and e-mail")
    notify.add_argument("--config", help="targets file (JSON); default: BACKUPHUB_NOTIFY_CONFIG")
    notify.add_argument("--state-dir", help="delivery ledger folder (default: HOME/notify)")
    notify.add_argument("--ledger-url", help="database URL of a shared delivery ledger")
    notify.add_argument(
        "--from-database",
        action="store_true",
        help="read the alert outbox (embedded mode) instead of the alerts topic",
    )
    notify.add_argument("--host", default="127.0.0.1", help="address of the metrics endpoint")
    notify.add_argument("--metrics-port", type=int, default=8003, help="0: no metrics endpoint")
    notify.set_defaults(handler=_notify)

    migrate = commands.add_parser("migrate", help="bring the database schema up to date")
    migrate.set_defaults(handler=_migrate)

    token = commands.add_parser("token", help="issue a JWT for the query API")
    token.add_argument("--subject", required=True)
    token.add_argument("--role", choices=("viewer", "admin"), default="viewer")
    token.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds")
    token.set_defaults(handler=_token)

    aomei = commands.add_parser("aomei", help="tools for AOMEI Backupper files")
    aomei_commands = aomei.add_subparsers(dest="aomei_command", required=True)
    parse = aomei_commands.add_parser("parse", help="print a brlog.xml as JSON lines")
    parse.add_argument("path")
    parse.add_argument("--since", help="only entries newer than this ISO 8601 time")
    parse.add_argument("--task-id", help="only this task's entries (GUID)")
    parse.set_defaults(handler=_aomei_parse)

    agent = commands.add_parser("agent", help="send new brlog.xml entries to the ingest API")
    agent.add_argument("--brlog", required=True, help="path of AOMEI's brlog.xml")
    agent.add_argument("--api-url", required=True, help="API base, e.g. http://host:8080/api/v1")
    agent.add_argument("--api-key-env", default="AOMEI_API_KEY", help="variable holding the key")
    agent.add_argument("--state-dir", help="state and lock (default: per-user/ProgramData)")
    agent.add_argument("--spool-dir", help="spool (default: STATE_DIR/spool)")
    agent.add_argument("--server-name", help="this machine's name (default: host name)")
    agent.add_argument("--log-file-path", help="path reported to the server (default: --brlog)")
    agent.add_argument("--job-type", default="system_image")
    agent.add_argument("--max-attempts", type=int, default=5, help="tries per request and run")
    agent.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    agent.add_argument("--test-mode", action="store_true", help="print the requests, send none")
    agent.set_defaults(handler=_agent)

    return parser


def main(argv: list[str] | None = None) -> int:
    from backuphub.logs import configure_logging

    args = build_parser().parse_args(argv)
    # Tools that print their result keep stderr for real errors; services log their steps.
    quiet = args.command in ("aomei", "token")
    configure_logging(os.environ.get("BACKUPHUB_LOG_LEVEL", "ERROR" if quiet else "INFO"))
    try:
        code: int = args.handler(args)
    except (ConfigurationError, DatabaseUnreachable) as error:
        print(f"backuphub: {error}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
