"""Where alerts go: the notify service's targets, their config file and their message shapes.

The config is a JSON file (``backuphub notify --config PATH`` or ``BACKUPHUB_NOTIFY_CONFIG``)::

    {
      "targets": [
        {"name": "ops", "type": "webhook", "url": "https://hooks.example/backuphub",
         "secret_env": "OPS_HOOK_SECRET"},
        {"name": "chat", "type": "slack", "url_env": "SLACK_WEBHOOK_URL",
         "kinds": ["backup_failed", "backup_missing"]},
        {"name": "teams", "type": "teams", "url_env": "TEAMS_WEBHOOK_URL",
         "min_severity": "critical"},
        {"name": "mail", "type": "email", "smtp_host": "mail.example", "smtp_port": 587,
         "starttls": true, "username_env": "SMTP_USER", "password_env": "SMTP_PASSWORD",
         "from": "backuphub@example", "to": ["ops@example"]}
      ],
      "retry": {"max_attempts": 5, "base_delay_seconds": 1, "max_delay_seconds": 60},
      "timeout_seconds": 10
    }

Secrets (webhook secrets, URLs that embed tokens, SMTP passwords) may be given inline or,
better, through ``*_env`` keys naming an environment variable. They are never logged: logs
name targets by their ``name`` only.

A generic ``webhook`` gets the event envelope as JSON, signed: ``X-Backuphub-Signature:
sha256=<hex>`` is the HMAC-SHA256 of the raw body with the target's secret, next to
``X-Backuphub-Timestamp`` (Unix seconds of the delivery) and ``X-Backuphub-Event-Id`` (the id
to drop duplicates on). ``slack`` gets ``{"text", "blocks"}``, ``teams`` a MessageCard, and
``email`` a plain-text mail sent with smtplib in a worker thread.
"""

import asyncio
import hashlib
import hmac
import json
import os
import smtplib
import time
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx

from schemas.events import EventEnvelope

TARGET_TYPES = ("webhook", "slack", "teams", "email")
SEVERITY_ORDER = {"info": 0, "warning": 1, "critical": 2}
SIGNATURE_HEADER = "X-Backuphub-Signature"
TIMESTAMP_HEADER = "X-Backuphub-Timestamp"
EVENT_ID_HEADER = "X-Backuphub-Event-Id"


class ConfigError(ValueError):
    """The notify config cannot be used; the message names the target and the key."""


class DeliveryFailed(Exception):
    """A delivery attempt failed. ``permanent``: trying again cannot help (e.g. HTTP 404)."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential back-off with full jitter, bounded in attempts and delay."""

    max_attempts: int = 5
    base_delay_seconds: float = 1.0
    max_delay_seconds: float = 60.0

    def delay(self, attempt: int, random: float) -> float:
        """The pause after failed attempt ``attempt`` (1-based); ``random`` is in [0, 1)."""
        ceiling = min(self.max_delay_seconds, self.base_delay_seconds * 2 ** (attempt - 1))
        return ceiling * random


@dataclass(frozen=True)
class Target:
    name: str
    type: str
    url: str = ""
    secret: str = ""
    kinds: frozenset[str] | None = None
    min_severity: str = "info"
    smtp_host: str = ""
    smtp_port: int = 25
    starttls: bool = False
    username: str = ""
    password: str = ""
    sender: str = ""
    recipients: tuple[str, ...] = ()

    def wants(self, event: EventEnvelope) -> bool:
        """Whether this target takes the event (its kind and severity filters)."""
        payload = event.payload
        if self.kinds is not None and payload.get("kind") not in self.kinds:
            return False
        severity = SEVERITY_ORDER.get(str(payload.get("severity")), 2)
        return severity >= SEVERITY_ORDER[self.min_severity]


@dataclass(frozen=True)
class NotifyConfig:
    targets: tuple[Target, ...]
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    timeout_seconds: float = 10.0


def _secret(raw: dict[str, Any], key: str, where: str, environ: dict[str, str]) -> str:
    """An inline value, or the environment variable named by ``<key>_env``."""
    variable = raw.get(f"{key}_env")
    if variable:
        if variable not in environ:
            raise ConfigError(f"{where}: environment variable {variable!r} ({key}_env) is not set")
        return environ[variable]
    return str(raw.get(key) or "")


def _target(raw: Any, index: int, environ: dict[str, str]) -> Target:
    if not isinstance(raw, dict):
        raise ConfigError(f"targets[{index}] must be an object")
    name = str(raw.get("name") or f"target-{index}")
    where = f"target {name!r}"
    kind = raw.get("type")
    if kind not in TARGET_TYPES:
        raise ConfigError(f"{where}: type must be one of {', '.join(TARGET_TYPES)}")

    kinds = raw.get("kinds")
    if kinds is not None and not (
        isinstance(kinds, list) and all(isinstance(k, str) for k in kinds)
    ):
        raise ConfigError(f"{where}: kinds must be a list of alert kinds")
    min_severity = raw.get("min_severity", "info")
    if min_severity not in SEVERITY_ORDER:
        raise ConfigError(f"{where}: min_severity must be one of {', '.join(SEVERITY_ORDER)}")

    target = Target(
        name=name,
        type=kind,
        url=_secret(raw, "url", where, environ),
        secret=_secret(raw, "secret", where, environ),
        kinds=frozenset(kinds) if kinds is not None else None,
        min_severity=min_severity,
        smtp_host=str(raw.get("smtp_host") or ""),
        smtp_port=int(raw.get("smtp_port") or 25),
        starttls=bool(raw.get("starttls", False)),
        username=_secret(raw, "username", where, environ),
        password=_secret(raw, "password", where, environ),
        sender=str(raw.get("from") or ""),
        recipients=tuple(raw.get("to") or ()),
    )
    if kind == "email":
        if not (target.smtp_host and target.sender and target.recipients):
            raise ConfigError(f"{where}: email needs smtp_host, from and to")
    elif not target.url.startswith(("http://", "https://")):
        raise ConfigError(f"{where}: url (or url_env) must be an http(s) URL")
    if kind == "webhook" and not target.secret:
        raise ConfigError(f"{where}: a webhook needs a secret (or secret_env) to sign with")
    return target


def parse_config(raw: Any, environ: dict[str, str] | None = None) -> NotifyConfig:
    """Check a decoded config and build it; ``ConfigError`` says what is wrong."""
    env = dict(os.environ if environ is None else environ)
    if not isinstance(raw, dict) or not isinstance(raw.get("targets"), list):
        raise ConfigError("the config must be an object with a 'targets' list")

    targets = tuple(_target(item, index, env) for index, item in enumerate(raw["targets"]))
    names = [target.name for target in targets]
    if len(set(names)) != len(names):
        raise ConfigError("target names must be unique (they key the delivery ledger)")

    retry_raw = raw.get("retry") or {}
    retry = RetryPolicy(
        max_attempts=max(1, min(20, int(retry_raw.get("max_attempts", 5)))),
        base_delay_seconds=float(retry_raw.get("base_delay_seconds", 1.0)),
        max_delay_seconds=float(retry_raw.get("max_delay_seconds", 60.0)),
    )
    return NotifyConfig(targets, retry, float(raw.get("timeout_seconds", 10.0)))


def load_config(path: str | Path, environ: dict[str, str] | None = None) -> NotifyConfig:
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ConfigError(f"cannot read notify config {path}: {error}") from error
    return parse_config(raw, environ)


# --- message shapes --------------------------------------------------------------------------


def summary(event: EventEnvelope) -> str:
    """One line a person reads first."""
    payload = event.payload
    state = "RESOLVED" if event.event_type == "alert.resolved" else str(payload["severity"]).upper()
    return f"[{state}] {payload['kind']}: {payload['message']}"


def _facts(event: EventEnvelope) -> list[tuple[str, str]]:
    payload = event.payload
    facts = [
        ("Job", f"{payload.get('job_name') or '-'} (id {payload.get('job_id') or '-'})"),
        ("Kind", str(payload["kind"])),
        ("Severity", str(payload["severity"])),
        ("Opened", str(payload.get("opened_at"))),
    ]
    if payload.get("source"):
        facts.append(("Source", str(payload["source"])))
    if payload.get("resolved_at"):
        facts.append(("Resolved", f"{payload['resolved_at']} ({payload.get('resolved_reason')})"))
    facts.append(("Alert id", str(payload["alert_id"])))
    return facts


def slack_message(event: EventEnvelope) -> dict[str, Any]:
    text = summary(event)
    fields = [{"type": "mrkdwn", "text": f"*{name}*\n{value}"} for name, value in _facts(event)]
    return {
        "text": text,
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": text}},
            {"type": "section", "fields": fields[:10]},
        ],
    }


def teams_message(event: EventEnvelope) -> dict[str, Any]:
    resolved = event.event_type == "alert.resolved"
    critical = event.payload.get("severity") == "critical"
    color = "2EB886" if resolved else ("D00000" if critical else "F2C744")
    return {
        "@type": "MessageCard",
        "@context": "https://schema.org/extensions",
        "summary": summary(event),
        "themeColor": color,
        "title": summary(event),
        "sections": [{"facts": [{"name": name, "value": value} for name, value in _facts(event)]}],
    }


def email_message(event: EventEnvelope, target: Target) -> EmailMessage:
    message = EmailMessage()
    message["Subject"] = summary(event)[:200]
    message["From"] = target.sender
    message["To"] = ", ".join(target.recipients)
    message["Message-ID"] = f"<{event.event_id}@backuphub>"
    lines = [summary(event), ""] + [f"{name}: {value}" for name, value in _facts(event)]
    message.set_content("\n".join(lines) + "\n")
    return message


def signature(secret: str, body: bytes) -> str:
    """The ``X-Backuphub-Signature`` value of ``body``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


# --- sending -----------------------------------------------------------------------------------


async def _post(
    client: httpx.AsyncClient, target: Target, body: bytes, headers: dict[str, str]
) -> None:
    try:
        answer = await client.post(target.url, content=body, headers=headers)
    except httpx.HTTPError as error:
        raise DeliveryFailed(f"{type(error).__name__}") from error
    if answer.status_code < 300:
        return
    permanent = 400 <= answer.status_code < 500 and answer.status_code not in (408, 425, 429)
    raise DeliveryFailed(f"HTTP {answer.status_code}", permanent=permanent)


def _send_mail(target: Target, message: EmailMessage, timeout: float) -> None:
    try:
        with smtplib.SMTP(target.smtp_host, target.smtp_port, timeout=timeout) as smtp:
            if target.starttls:
                smtp.starttls()
            if target.username:
                smtp.login(target.username, target.password)
            smtp.send_message(message)
    except smtplib.SMTPRecipientsRefused as error:
        raise DeliveryFailed("recipients refused", permanent=True) from error
    except (smtplib.SMTPException, OSError) as error:
        raise DeliveryFailed(type(error).__name__) from error


async def send(
    client: httpx.AsyncClient, target: Target, event: EventEnvelope, timeout: float
) -> None:
    """One delivery attempt of ``event`` to ``target``; ``DeliveryFailed`` when it failed."""
    if target.type == "email":
        await asyncio.to_thread(_send_mail, target, email_message(event, target), timeout)
        return

    headers = {"Content-Type": "application/json", EVENT_ID_HEADER: event.event_id}
    if target.type == "webhook":
        body = event.to_bytes()
        headers[TIMESTAMP_HEADER] = str(int(time.time()))
        headers[SIGNATURE_HEADER] = signature(target.secret, body)
    elif target.type == "slack":
        body = json.dumps(slack_message(event)).encode()
    else:
        body = json.dumps(teams_message(event)).encode()
    await _post(client, target, body, headers)
