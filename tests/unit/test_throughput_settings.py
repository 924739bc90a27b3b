"""The settings and guards that the load benchmarks (``benchmarks/``) rely on."""

import asyncio
from typing import Any

from prometheus_client import Counter

from backuphub.security import ApiKeys
from backuphub.settings import Settings
from ingest_api.gateway import ReportGateway
from processors.stream import processor_group
from schemas.topics import Topics


def _call(app: Any, path: str, method: str = "POST") -> list[dict[str, Any]]:
    headers = [(b"x-api-key", b"agent-key")]
    scope = {"type": "http", "method": method, "path": path, "headers": headers}
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent


class _Intake:
    """Stands in for ``ReportIntake``: every report is accepted."""

    async def status(self, _body: Any) -> dict[str, Any]:
        return {"success": True}

    async def log_analysis(self, _body: Any) -> dict[str, Any]:
        return {"success": True}


def test_a_full_ingest_answers_503_with_retry_after_at_once() -> None:
    reached: list[str] = []

    async def inner(scope: Any, _receive: Any, send: Any) -> None:
        reached.append(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    gateway = ReportGateway(
        inner,
        keys=ApiKeys(["agent-key"]),
        intake=_Intake(),  # type: ignore[arg-type]
        alarms=None,
        limit=1,
        retry_after=7,
    )
    # An empty object is not a valid status report: the gateway itself answers 400.
    assert _call(gateway, "/api/v1/aomei/status")[0]["status"] == 400
    assert _call(gateway, "/api/v1/aomei/register")[0]["status"] == 200

    gateway.in_flight = 1  # one report is being handled
    for path in ("/api/v1/aomei/status", "/api/v1/aomei/log-analysis", "/api/v1/aomei/register"):
        refused = _call(gateway, path)
        assert refused[0]["status"] == 503
        assert (b"retry-after", b"7") in refused[0]["headers"]
    assert reached == ["/api/v1/aomei/register"]

    # Reads and health checks are never refused.
    assert _call(gateway, "/health", method="GET")[0]["status"] == 200
    assert gateway.in_flight == 1


def test_the_in_flight_bound_comes_from_the_environment() -> None:
    assert Settings.from_env({}).max_in_flight == 256
    assert Settings.from_env({"BACKUPHUB_MAX_IN_FLIGHT": "64"}).max_in_flight == 64


def test_deployments_on_one_broker_get_their_own_processor_group() -> None:
    assert processor_group(Topics()) == "backuphub-processor"  # existing offsets kept
    assert processor_group(Topics("it1234.")) == "it1234.processor"
    assert processor_group(Topics("a.")) != processor_group(Topics("b."))


def test_metrics_of_several_ingest_workers_are_summed(tmp_path: Any, monkeypatch: Any) -> None:
    from prometheus_client import values

    from backuphub.http import metrics_text

    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    monkeypatch.setattr(values, "ValueClass", values.MultiProcessValue(lambda: 4242))
    counter = Counter("bench_probe_reports", "a counter written as worker 4242", registry=None)
    counter.inc(3)

    assert b"bench_probe_reports_total 3.0" in metrics_text()


def test_the_persister_gathers_a_trickle_into_one_batch() -> None:
    from aiokafka import TopicPartition

    from consumers.persister import Persister

    first, second = TopicPartition("t", 0), TopicPartition("t", 1)

    class Trickle:
        def __init__(self) -> None:
            self.answers: list[dict[Any, list[int]]] = [{first: [1]}, {first: [2], second: [3]}]

        async def getmany(self, timeout_ms: int, max_records: int) -> dict[Any, list[int]]:
            if self.answers:
                return self.answers.pop(0)
            await asyncio.sleep(timeout_ms / 1000)
            return {}

    persister = Persister.__new__(Persister)
    batches = asyncio.run(persister._next_batch(Trickle()))  # type: ignore[arg-type]

    assert batches == {first: [1, 2], second: [3]}
