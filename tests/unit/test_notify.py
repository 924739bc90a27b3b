"""The notify service's parts: config, message shapes, retries, parking, dedupe, SMTP.

Receivers (HTTP and SMTP) are small servers of the test's own on 127.0.0.1.
"""

import asyncio
import json
import socketserver
import threading
from collections.abc import Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from consumers.alert_store import alert_event
from consumers.notify import DeliveryLedger, Notifier
from consumers.notify_targets import (
    ConfigError,
    RetryPolicy,
    parse_config,
    slack_message,
    teams_message,
)
from schemas.events import EventEnvelope

NOW = datetime(2025, 6, 2, 3, 0)


def event(kind: str = "backup_failed", **fields: Any) -> EventEnvelope:
    row = {
        "alert_uid": "7d8f3c1e-6a9b-5c2d-8e4f-0a1b2c3d4e5f",
        "kind": kind,
        "state": "open",
        "severity": "critical",
        "job_id": 7,
        "message": "Backup 'Nightly' failed: disk full",
        "details": "{}",
        "triggered_at": NOW,
        "opened_at": NOW,
        **fields,
    }
    return alert_event(row, "Nightly", "persister", NOW)


class Http:
    """An HTTP receiver answering ``codes`` in turn (the last one from then on)."""

    def __init__(self, codes: list[int]) -> None:
        self.codes = codes
        self.bodies: list[bytes] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                receiver.bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
                code = receiver.codes[min(len(receiver.bodies), len(receiver.codes)) - 1]
                self.send_response(code)
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def ledger(tmp_path: Path) -> DeliveryLedger:
    return DeliveryLedger.in_state_dir(tmp_path)


def config(url: str, kind: str = "webhook", attempts: int = 3, **extra: Any) -> Any:
    target = {"name": "t", "type": kind, "url": url, "secret": "s", **extra}
    return parse_config(
        {
            "targets": [target],
            "retry": {"max_attempts": attempts, "base_delay_seconds": 0.01},
            "timeout_seconds": 3,
        }
    )


def deliver(notifier: Notifier, alert: EventEnvelope) -> list[Any]:
    async def run() -> list[Any]:
        try:
            return await notifier.deliver(alert)
        finally:
            await notifier.close()

    return asyncio.run(run())


# --- config ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "complaint"),
    [
        ({"type": "pager", "url": "http://127.0.0.1/"}, "type must be one of"),
        ({"type": "webhook", "url": "http://127.0.0.1/"}, "needs a secret"),
        ({"type": "slack", "url": "ftp://x"}, "http"),
        ({"type": "slack", "url_env": "NOT_SET_ANYWHERE"}, "NOT_SET_ANYWHERE"),
        ({"type": "email", "smtp_host": "127.0.0.1"}, "from and to"),
        ({"type": "slack", "url": "http://127.0.0.1/", "min_severity": "loud"}, "min_severity"),
    ],
)
def test_bad_targets_are_refused_with_a_reason(target: dict[str, Any], complaint: str):
    with pytest.raises(ConfigError, match=complaint):
        parse_config({"targets": [target]}, environ={})


def test_secrets_come_from_the_environment():
    parsed = parse_config(
        {"targets": [{"type": "webhook", "url_env": "HOOK", "secret_env": "SECRET"}]},
        environ={"HOOK": "http://127.0.0.1:1/x", "SECRET": "abc"},
    )
    assert parsed.targets[0].url == "http://127.0.0.1:1/x"
    assert parsed.targets[0].secret == "abc"


def test_filters_by_kind_and_severity():
    parsed = parse_config(
        {
            "targets": [
                {
                    "name": "a",
                    "type": "slack",
                    "url": "http://127.0.0.1/",
                    "kinds": ["backup_missing"],
                },
                {
                    "name": "b",
                    "type": "slack",
                    "url": "http://127.0.0.1/",
                    "min_severity": "critical",
                },
            ]
        }
    )
    kinds_only, critical_only = parsed.targets
    assert not kinds_only.wants(event())
    assert critical_only.wants(event())
    assert not critical_only.wants(event("backup_warning", severity="warning"))


def test_back_off_is_exponential_jittered_and_bounded():
    policy = RetryPolicy(max_attempts=10, base_delay_seconds=1, max_delay_seconds=8)

    assert [policy.delay(n, 0.999) for n in (1, 2, 3, 4, 5)] == pytest.approx(
        [0.999, 1.998, 3.996, 7.992, 7.992]
    )
    assert policy.delay(3, 0.0) == 0.0


# --- shapes ------------------------------------------------------------------------------------


def test_slack_and_teams_shapes():
    slack = slack_message(event())
    assert slack["text"].startswith("[CRITICAL] backup_failed")
    assert slack["blocks"][0]["type"] == "section"

    resolved = event(state="resolved", resolved_at=NOW, resolved_reason="backup succeeded")
    teams = teams_message(resolved)
    assert teams["@type"] == "MessageCard" and teams["title"].startswith("[RESOLVED]")
    facts = {fact["name"]: fact["value"] for fact in teams["sections"][0]["facts"]}
    assert facts["Job"] == "Nightly (id 7)"


# --- delivery ------------------------------------------------------------------------------------


def test_a_delivery_that_keeps_failing_is_parked_and_not_resent(ledger: DeliveryLedger):
    receiver = Http([500])
    try:
        [outcome] = deliver(Notifier(config(receiver.url), ledger), event())
        assert (outcome.status, outcome.attempts) == ("parked", 3)
        assert len(receiver.bodies) == 3

        [again] = deliver(Notifier(config(receiver.url), ledger), event())
        assert again.status == "duplicate" and len(receiver.bodies) == 3
    finally:
        receiver.close()

    [(event_id, target, error)] = ledger.parked()
    assert (event_id, target, error) == (event().event_id, "t", "HTTP 500")


def test_a_permanent_refusal_is_parked_at_once(ledger: DeliveryLedger):
    receiver = Http([404])
    try:
        [outcome] = deliver(Notifier(config(receiver.url, attempts=5), ledger), event())
    finally:
        receiver.close()
    assert (outcome.status, outcome.attempts) == ("parked", 1)


def test_slack_gets_text_after_a_retry(ledger: DeliveryLedger):
    receiver = Http([429, 200])
    try:
        [outcome] = deliver(Notifier(config(receiver.url, "slack"), ledger), event())
    finally:
        receiver.close()
    assert (outcome.status, outcome.attempts) == ("delivered", 2)
    assert json.loads(receiver.bodies[-1])["text"].startswith("[CRITICAL]")


class Smtp(socketserver.StreamRequestHandler):
    """Just enough SMTP to take one message (no TLS, no auth)."""

    received: list[str] = []

    def reply(self, line: str) -> None:
        self.wfile.write(f"{line}\r\n".encode())

    def handle(self) -> None:
        self.reply("220 test")
        for _ in range(50):
            line = self.rfile.readline().decode().strip()
            verb = line.split(" ")[0].upper()
            if verb in ("EHLO", "HELO"):
                self.reply("250 test")
            elif verb in ("MAIL", "RCPT", "RSET", "NOOP"):
                self.reply("250 ok")
            elif verb == "DATA":
                self.reply("354 go")
                lines = []
                while (text := self.rfile.readline().decode()) not in (".\r\n", ""):
                    lines.append(text)
                Smtp.received.append("".join(lines))
                self.reply("250 queued")
            elif verb == "QUIT" or not line:
                self.reply("221 bye")
                return
            else:
                self.reply("502 no")


@pytest.fixture
def smtp() -> Iterator[int]:
    Smtp.received = []
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Smtp)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_email_goes_through_smtp(ledger: DeliveryLedger, smtp: int):
    parsed = parse_config(
        {
            "targets": [
                {
                    "name": "mail",
                    "type": "email",
                    "smtp_host": "127.0.0.1",
                    "smtp_port": smtp,
                    "from": "backuphub@test.invalid",
                    "to": ["ops@test.invalid"],
                }
            ]
        }
    )
    [outcome] = deliver(Notifier(parsed, ledger), event())

    assert outcome.status == "delivered"
    [message] = Smtp.received
    assert "Subject: [CRITICAL] backup_failed" in message
    assert "disk full" in message
