"""The embedded app on a temporary SQLite file: the whole contract without external services."""

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from backuphub.database import make_engine, migrate
from backuphub.embedded import EmbeddedSink
from backuphub.security import ApiKeys, issue_token
from consumers.query_api import query_router
from ingest_api.app import create_ingest_app
from ingest_api.publish import ReportSink
from ingest_api.registry import JobRegistry

API_KEY = "test-key-0123456789"
OLD_KEY = "old-key-0123456789"
JWT_SECRET = "test-secret-0123456789-0123456789"


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    engine = make_engine(f"sqlite:///{tmp_path / 'backuphub.db'}")
    migrate(engine)
    return engine


def build_client(engine: Engine, sink: ReportSink | None = None) -> TestClient:
    app = create_ingest_app(
        keys=ApiKeys([API_KEY, OLD_KEY]),
        registry=JobRegistry(engine),
        sink=sink or EmbeddedSink(engine),
        extra_routers=(query_router(engine, JWT_SECRET),),
    )
    return TestClient(app, raise_server_exceptions=False)


@pytest.fixture
def client(engine: Engine) -> Iterator[TestClient]:
    with build_client(engine) as test_client:
        yield test_client


@pytest.fixture
def agent_headers() -> dict[str, str]:
    return {"X-API-Key": API_KEY}


@pytest.fixture
def viewer_headers() -> dict[str, str]:
    token = issue_token(JWT_SECRET, subject="tester", role="viewer")
    return {"Authorization": f"Bearer {token}"}
