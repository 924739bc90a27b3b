"""Schedules on jobs, the alerts table and the alert outbox.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

UNRESOLVED = "state <> 'resolved'"
UNPUBLISHED = "published_at IS NULL"


def upgrade() -> None:
    op.add_column("backup_jobs", sa.Column("schedule_cron", sa.String(120), nullable=True))
    op.add_column("backup_jobs", sa.Column("schedule_timezone", sa.String(64), nullable=True))
    op.add_column("backup_jobs", sa.Column("grace_seconds", sa.Integer, nullable=True))
    op.add_column("backup_jobs", sa.Column("max_duration_seconds", sa.Integer, nullable=True))
    op.add_column("backup_jobs", sa.Column("schedule_updated_at", sa.DateTime, nullable=True))
    op.add_column("backup_jobs", sa.Column("last_heartbeat_at", sa.DateTime, nullable=True))

    op.create_table(
        "alerts",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
        sa.Column("alert_uid", sa.String(36), nullable=False, unique=True),
        sa.Column("dedupe_key", sa.String(300), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("severity", sa.String(16), nullable=False),
        sa.Column("job_id", sa.Integer, sa.ForeignKey("backup_jobs.id"), nullable=True),
        sa.Column("source", sa.String(255), nullable=True),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("details", sa.Text, nullable=False, server_default="{}"),
        sa.Column("execution_id", sa.String(36), nullable=True),
        sa.Column("triggered_at", sa.DateTime, nullable=False),
        sa.Column("opened_at", sa.DateTime, nullable=False),
        sa.Column("acknowledged_at", sa.DateTime, nullable=True),
        sa.Column("acknowledged_by", sa.String(255), nullable=True),
        sa.Column("resolved_at", sa.DateTime, nullable=True),
        sa.Column("resolved_reason", sa.Text, nullable=True),
        sa.Column("resolved_execution_id", sa.String(36), nullable=True),
        sa.Column("updated_at", sa.DateTime, nullable=False),
    )
    # The guarantee behind "one open alert per job and kind": a second insert of an
    # unresolved alert with the same key fails, whichever process decided it.
    op.create_index(
        "uq_alerts_unresolved_key",
        "alerts",
        ["dedupe_key"],
        unique=True,
        postgresql_where=sa.text(UNRESOLVED),
        sqlite_where=sa.text(UNRESOLVED),
    )
    op.create_index("ix_alerts_state_kind", "alerts", ["state", "kind"])
    op.create_index("ix_alerts_job", "alerts", ["job_id"])

    op.create_table(
        "alert_outbox",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
        sa.Column("event_id", sa.String(36), nullable=False, unique=True),
        sa.Column("event_type", sa.String(32), nullable=False),
        sa.Column("alert_uid", sa.String(36), nullable=False),
        sa.Column("job_id", sa.Integer, nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("published_at", sa.DateTime, nullable=True),
    )
    op.create_index(
        "ix_alert_outbox_unpublished",
        "alert_outbox",
        ["id"],
        postgresql_where=sa.text(UNPUBLISHED),
        sqlite_where=sa.text(UNPUBLISHED),
    )


def downgrade() -> None:
    op.drop_table("alert_outbox")
    op.drop_table("alerts")
    for column in (
        "last_heartbeat_at",
        "schedule_updated_at",
        "max_duration_seconds",
        "grace_seconds",
        "schedule_timezone",
        "schedule_cron",
    ):
        op.drop_column("backup_jobs", column)
