"""Fixtures of the integration suite: the real Kafka broker and PostgreSQL, and the services.

Kafka and PostgreSQL are named by ``KAFKA_BOOTSTRAP_SERVERS`` and ``DATABASE_URL`` (defaults:
the local ones on 127.0.0.1). When one cannot be reached the tests are skipped, or fail when
``BACKUPHUB_REQUIRE_SERVICES=1`` or ``CI`` is set. Each session gets a database of its own
(dropped at the end); each module runs its own service trio on a topic prefix of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from benchmarks.harness import PrivateKafka
from tests.integration.running_services import (
    ServiceTrio,
    live_services,
    new_topic_prefix,
)

DEFAULT_KAFKA = "127.0.0.1:9092"
DEFAULT_DATABASE_URL = "postgresql+psycopg://backuphub:backuphub@127.0.0.1:5432/backuphub"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failed test shows the last lines of every service that was running."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.failed:
        for service in live_services():
            report.sections.append(
                (f"log tail: {service.name} ({service.log_path})", service.log_tail())
            )


# --- the two backing services ----------------------------------------------------------


def _services_required() -> bool:
    """CI and ``BACKUPHUB_REQUIRE_SERVICES=1`` turn a missing service into a failure."""
    ci = os.environ.get("CI", "").strip().lower()
    return os.environ.get("BACKUPHUB_REQUIRE_SERVICES") == "1" or ci not in ("", "0", "false")


def services_unavailable(message: str) -> None:
    if _services_required():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def _kafka_answers(bootstrap_servers: str) -> str | None:
    """None when the broker answers a metadata request; else why not."""
    host, _, port = bootstrap_servers.split(",")[0].strip().rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=3):
            pass
    except (OSError, ValueError) as error:
        return f"cannot connect: {error}"

    async def metadata() -> None:
        from aiokafka.client import AIOKafkaClient

        client = AIOKafkaClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=5000)
        try:
            await client.bootstrap()
            await client.fetch_all_metadata()
        finally:
            await client.close()

    try:
        asyncio.run(asyncio.wait_for(metadata(), timeout=10))
    except Exception as error:
        return f"no metadata answer: {error!r}"
    return None


@dataclass(frozen=True)
class BackingServices:
    kafka: str
    admin_database_url: str


@pytest.fixture(scope="session")
def backing_services() -> BackingServices:
    kafka = os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or DEFAULT_KAFKA
    database_url = os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL

    problem = _kafka_answers(kafka)
    if problem:
        services_unavailable(
            f"Kafka at {kafka} (KAFKA_BOOTSTRAP_SERVERS) is not reachable: {problem}"
        )

    engine = create_engine(database_url, connect_args={"connect_timeout": 5})
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except SQLAlchemyError as error:
        shown = make_url(database_url).render_as_string(hide_password=True)
        services_unavailable(f"PostgreSQL at {shown} (DATABASE_URL) is not reachable: {error}")
    finally:
        engine.dispose()
    return BackingServices(kafka=kafka, admin_database_url=database_url)


@pytest.fixture(scope="session")
def database_url(backing_services: BackingServices) -> Iterator[str]:
    """A database of this session's own, dropped at the end."""
    name = f"backuphub_it_{secrets.token_hex(5)}"
    admin = create_engine(backing_services.admin_database_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        yield (
            make_url(backing_services.admin_database_url)
            .set(database=name)
            .render_as_string(hide_password=False)
        )
    finally:
        try:
            with admin.connect() as connection:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        finally:
            admin.dispose()


@pytest.fixture(scope="session")
def db(database_url: str) -> Iterator[Engine]:
    """The session database, for checks the API cannot make (exact row counts)."""
    engine = create_engine(database_url, pool_size=2, connect_args={"connect_timeout": 5})
    yield engine
    engine.dispose()


# --- the services ------------------------------------------------------------------------


TrioFactory = Callable[..., ServiceTrio]


@contextlib.contextmanager
def _trios(
    backing: BackingServices, database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TrioFactory]:
    """A way to start service trios (own topic prefix, own logs), all stopped on exit."""
    started: list[ServiceTrio] = []

    def start(bootstrap_servers: str | None = None, **extra_env: str) -> ServiceTrio:
        prefix = new_topic_prefix()
        trio = ServiceTrio(
            bootstrap_servers=bootstrap_servers or backing.kafka,
            database_url=database_url,
            topic_prefix=prefix,
            log_dir=tmp_path_factory.mktemp(f"services-{prefix.rstrip('.')}"),
            extra_env=extra_env,
        )
        started.append(trio)
        trio.start()
        return trio

    try:
        yield start
    finally:
        for trio in reversed(started):
            trio.stop()
            if trio.bootstrap_servers == backing.kafka:
                trio.delete_topics()


@pytest.fixture(scope="module")
def trio(
    backing_services: BackingServices, database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceTrio]:
    """The module's deployment on the shared broker, stopped at the end of the module."""
    with _trios(backing_services, database_url, tmp_path_factory) as start:
        yield start()


@pytest.fixture
def start_trio(
    backing_services: BackingServices, database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TrioFactory]:
    """Start trios of the test's own (e.g. on a private broker); stopped after the test."""
    with _trios(backing_services, database_url, tmp_path_factory) as start:
        yield start


@pytest.fixture(scope="module")
def start_module_trio(
    backing_services: BackingServices, database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TrioFactory]:
    """Start trios that the module's tests share; stopped at the end of the module."""
    with _trios(backing_services, database_url, tmp_path_factory) as start:
        yield start


@pytest.fixture(scope="module")
def private_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateKafka]:
    """A broker of the module's own on free ports, which its tests may kill (``kafka.sh
    start`` brings it back); stopped and its data removed at the end of the module.

    Nothing else uses it, so its consumer groups hold only the module's services: the
    services' group ids do not depend on the topic prefix, and on the shared broker another
    deployment's members may sit in the same groups.
    """
    broker = PrivateKafka(state_dir=tmp_path_factory.mktemp("private-kafka"))
    broker.start()
    try:
        yield broker
    finally:
        try:
            broker.stop()
        finally:
            broker.remove_data()
