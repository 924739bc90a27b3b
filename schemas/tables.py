"""The database tables, shared by the job registry (ingest), the persister and the queries.

All times are stored as naive UTC. The tables and column names are part of the contract that
reporting tools already read; columns beyond it only add.
"""

from collections.abc import Iterable
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    ColumnElement,
    Connection,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    any_,
    bindparam,
    text,
)
from sqlalchemy.dialects import postgresql

metadata = MetaData()

backup_jobs = Table(
    "backup_jobs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job_name", String(255), nullable=False),
    Column("job_type", String(32), nullable=False, server_default="system_image"),
    Column("backup_tool", String(32), nullable=False, server_default="aomei"),
    # '' rather than NULL, so that the job's identity on its server can be unique.
    Column("target_server", String(255), nullable=False, server_default=""),
    Column("target_path", String(1024)),
    Column("description", Text),
    Column("task_guid", String(36)),
    Column("is_active", Boolean, nullable=False, server_default=text("true")),
    Column("schedule_type", String(32), nullable=False, server_default="manual"),
    Column("retention_days", Integer, nullable=False, server_default="30"),
    Column("created_at", DateTime, nullable=False),
    Column("updated_at", DateTime, nullable=False),
    # When runs are expected (processors.schedules) and how late or long they may be
    # (processors.alerting); added by migration 0002.
    Column("schedule_cron", String(120)),
    Column("schedule_timezone", String(64)),
    Column("grace_seconds", Integer),
    Column("max_duration_seconds", Integer),
    Column("schedule_updated_at", DateTime),
    # The newest "running" status report: a run in progress, so not missing. Not an execution.
    Column("last_heartbeat_at", DateTime),
    # One job per AOMEI task and server: by GUID when known, else by name (migration 0001).
    Index(
        "uq_backup_jobs_server_guid",
        "target_server",
        "task_guid",
        unique=True,
        postgresql_where=text("task_guid IS NOT NULL"),
        sqlite_where=text("task_guid IS NOT NULL"),
    ),
    Index(
        "uq_backup_jobs_server_name",
        "target_server",
        "job_name",
        unique=True,
        postgresql_where=text("task_guid IS NULL"),
        sqlite_where=text("task_guid IS NULL"),
    ),
)

backup_executions = Table(
    "backup_executions",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    # The idempotency key: a redelivered event or a retried report maps to the same value.
    Column("execution_uid", String(36), nullable=False, unique=True),
    Column("report_id", String(64), nullable=False),
    Column("job_id", Integer, ForeignKey("backup_jobs.id"), nullable=False),
    Column("execution_date", DateTime, nullable=False),
    Column("execution_result", String(16), nullable=False),
    Column("reported_status", String(64)),
    Column("backup_size_bytes", BigInteger),
    Column("duration_seconds", Integer),
    Column("start_time", DateTime),
    Column("end_time", DateTime),
    Column("error_message", Text),
    Column("details", Text),
    Column("task_name", String(255)),
    Column("source_system", String(32), nullable=False, server_default="aomei_powershell"),
    Column("flags", String(255), nullable=False, server_default=""),
    Column("received_at", DateTime, nullable=False),
    Column("created_at", DateTime, nullable=False),
    Index("ix_backup_executions_job_date", "job_id", "execution_date"),
)

backup_copies = Table(
    "backup_copies",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job_id", Integer, ForeignKey("backup_jobs.id"), nullable=False),
    Column("copy_type", String(16), nullable=False),
    Column("media_type", String(16), nullable=False, server_default="disk"),
    Column("storage_path", String(1024)),
    Column("last_backup_date", DateTime, nullable=False),
    Column("last_backup_size", BigInteger),
    Column("status", String(16), nullable=False),
    Column("updated_at", DateTime, nullable=False),
    UniqueConstraint("job_id", "copy_type", name="uq_backup_copies_job_copy"),
)

# Alert states: "open" and "acknowledged" are both unresolved; "resolved" is final.
UNRESOLVED = "state <> 'resolved'"

alerts = Table(
    "alerts",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    # Deterministic (processors.alerting.alert_id_for): the same decision twice is one alert.
    Column("alert_uid", String(36), nullable=False, unique=True),
    # "job:<id>:<kind>" or "source:<address>:<kind>": at most one unresolved alert per key.
    Column("dedupe_key", String(300), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("state", String(16), nullable=False),
    Column("severity", String(16), nullable=False),
    Column("job_id", Integer, ForeignKey("backup_jobs.id")),
    Column("source", String(255)),
    Column("message", Text, nullable=False),
    Column("details", Text, nullable=False, server_default="{}"),
    Column("execution_id", String(36)),
    # The time of what raised it (execution date, missed window start, first failure).
    Column("triggered_at", DateTime, nullable=False),
    Column("opened_at", DateTime, nullable=False),
    Column("acknowledged_at", DateTime),
    Column("acknowledged_by", String(255)),
    Column("resolved_at", DateTime),
    Column("resolved_reason", Text),
    Column("resolved_execution_id", String(36)),
    Column("updated_at", DateTime, nullable=False),
    Index(
        "uq_alerts_unresolved_key",
        "dedupe_key",
        unique=True,
        postgresql_where=text(UNRESOLVED),
        sqlite_where=text(UNRESOLVED),
    ),
    Index("ix_alerts_state_kind", "state", "kind"),
    Index("ix_alerts_job", "job_id"),
)

# Alert events waiting to be published (transactional outbox): written in the transaction
# that decided the alert, sent to the alerts topic by consumers.outbox, then marked.
alert_outbox = Table(
    "alert_outbox",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("event_id", String(36), nullable=False, unique=True),
    Column("event_type", String(32), nullable=False),
    Column("alert_uid", String(36), nullable=False),
    Column("job_id", Integer, nullable=False),
    Column("payload", Text, nullable=False),
    Column("created_at", DateTime, nullable=False),
    Column("published_at", DateTime),
    Index(
        "ix_alert_outbox_unpublished",
        "id",
        postgresql_where=text("published_at IS NULL"),
        sqlite_where=text("published_at IS NULL"),
    ),
)


def one_of(connection: Connection, column: ColumnElement[Any], values: Iterable[Any]) -> Any:
    """``column IN values``, as a condition whose SQL text does not depend on the count.

    On PostgreSQL it is ``column = ANY(:array)``: every batch sends the same statement, which
    psycopg and the server then prepare once, instead of a new ``IN`` list to parse and plan
    for each batch size (a fifth of the persister's CPU went there). SQLite has no arrays and
    no server to spare that work, so it keeps ``IN``.
    """
    items = list(values)
    if connection.dialect.name != "postgresql":
        return column.in_(items)
    return column == any_(bindparam(None, items, type_=postgresql.ARRAY(column.type)))
