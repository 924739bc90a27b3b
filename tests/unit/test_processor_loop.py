"""The processor loop's handling of reports it cannot turn into executions (no broker)."""

import asyncio
from typing import Any

from aiokafka import ConsumerRecord
from aiokafka.errors import MessageSizeTooLargeError

from ingest_api.reports import report_event
from processors import stream
from processors.stream import ReportProcessor
from schemas.api import StatusRequest
from schemas.events import utc_now
from schemas.topics import Topics


class _Producer:
    """Records what is sent; refuses executions as too large when told to."""

    def __init__(self, refuse_executions: bool = False) -> None:
        self.refuse_executions = refuse_executions
        self.sent: list[tuple[str, bytes, dict[str, bytes]]] = []

    async def send(
        self, topic: str, value: bytes, key: bytes | None = None, headers: Any = None
    ) -> "asyncio.Future[None]":
        if self.refuse_executions and topic.endswith("executions"):
            raise MessageSizeTooLargeError("too large")
        self.sent.append((topic, value, dict(headers or [])))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


def _record(value: bytes) -> ConsumerRecord:
    return ConsumerRecord(
        topic="t.reports.raw", partition=2, offset=41, timestamp=0, timestamp_type=0,
        key=b"7", value=value, checksum=None, serialized_key_size=1,
        serialized_value_size=len(value), headers=(),
    )  # fmt: skip


def _report() -> bytes:
    body = StatusRequest.model_validate({"job_id": 7, "status": "success", "report_id": "r-1"})
    return report_event("status", body, utc_now()).to_bytes()


def _publish(producer: _Producer, value: bytes) -> None:
    processor = ReportProcessor("127.0.0.1:1", Topics("t."))
    processor.producer = producer
    asyncio.run(processor._publish([_record(value)]))


def test_an_execution_too_large_to_publish_sets_its_report_aside() -> None:
    producer = _Producer(refuse_executions=True)
    value = _report()

    _publish(producer, value)

    [(topic, sent, headers)] = producer.sent
    assert topic == "t.deadletter"
    assert sent == value
    assert headers["source_offset"] == b"41"
    assert b"too large" in headers["reason"]


def test_a_rule_that_breaks_sets_the_report_aside_and_the_loop_goes_on(monkeypatch: Any) -> None:
    def broken(*_args: Any) -> list[Any]:
        raise KeyError("a field the rules expected")

    monkeypatch.setattr(stream, "process_report", broken)
    producer = _Producer()

    _publish(producer, _report())

    [(topic, _sent, headers)] = producer.sent
    assert topic == "t.deadletter"
    assert headers["reason"].startswith(b"rules failed")


def test_a_good_report_becomes_an_execution_keyed_by_its_job() -> None:
    producer = _Producer()

    _publish(producer, _report())

    [(topic, sent, _headers)] = producer.sent
    assert topic == "t.executions"
    assert b'"report_id":"r-1"' in sent


def test_lag_is_not_asked_of_a_partition_a_rebalance_took_away() -> None:
    from aiokafka import TopicPartition

    from backuphub.kafka_topics import record_lag
    from backuphub.metrics import CONSUMER_LAG

    kept, moved = TopicPartition("t.reports.raw", 0), TopicPartition("t.reports.raw", 1)

    class _Consumer:
        def assignment(self) -> set[TopicPartition]:
            return {kept}

        def highwater(self, partition: TopicPartition) -> int:
            assert partition == kept, "aiokafka asserts on a partition it does not hold"
            return 100

    record_lag(_Consumer(), {kept: [_record(b"x")], moved: [_record(b"y")]})

    assert CONSUMER_LAG.labels("t.reports.raw", "0")._value.get() == 100 - 42
