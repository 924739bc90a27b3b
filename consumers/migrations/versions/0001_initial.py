"""The three contract tables: jobs, executions, copies.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "backup_jobs",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("job_name", sa.String(255), nullable=False),
        sa.Column("job_type", sa.String(32), nullable=False, server_default="system_image"),
        sa.Column("backup_tool", sa.String(32), nullable=False, server_default="aomei"),
        sa.Column("target_server", sa.String(255), nullable=False, server_default=""),
        sa.Column("target_path", sa.String(1024)),
        sa.Column("description", sa.Text),
        sa.Column("task_guid", sa.String(36)),
        sa.Column("is_active", sa.Boolean, nullable=False, server_default=sa.text("true")),
        sa.Column("schedule_type", sa.String(32), nullable=False, server_default="manual"),
        sa.Column("retention_days", sa.Integer, nullable=False, server_default="30"),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("updated_at", sa.DateTime, nullable=False),
    )
    # A job is one AOMEI task on one server: its GUID when the agent knows it, else its name.
    # Two tasks of one name but different GUIDs (one deleted and made again) are two jobs.
    op.create_index(
        "uq_backup_jobs_server_guid",
        "backup_jobs",
        ["target_server", "task_guid"],
        unique=True,
        postgresql_where=sa.text("task_guid IS NOT NULL"),
        sqlite_where=sa.text("task_guid IS NOT NULL"),
    )
    op.create_index(
        "uq_backup_jobs_server_name",
        "backup_jobs",
        ["target_server", "job_name"],
        unique=True,
        postgresql_where=sa.text("task_guid IS NULL"),
        sqlite_where=sa.text("task_guid IS NULL"),
    )

    op.create_table(
        "backup_executions",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
        sa.Column("execution_uid", sa.String(36), nullable=False, unique=True),
        sa.Column("report_id", sa.String(64), nullable=False),
        sa.Column("job_id", sa.Integer, sa.ForeignKey("backup_jobs.id"), nullable=False),
        sa.Column("execution_date", sa.DateTime, nullable=False),
        sa.Column("execution_result", sa.String(16), nullable=False),
        sa.Column("reported_status", sa.String(64)),
        sa.Column("backup_size_bytes", sa.BigInteger),
        sa.Column("duration_seconds", sa.Integer),
        sa.Column("start_time", sa.DateTime),
        sa.Column("end_time", sa.DateTime),
        sa.Column("error_message", sa.Text),
        sa.Column("details", sa.Text),
        sa.Column("task_name", sa.String(255)),
        sa.Column(
            "source_system", sa.String(32), nullable=False, server_default="aomei_powershell"
        ),
        sa.Column("flags", sa.String(255), nullable=False, server_default=""),
        sa.Column("received_at", sa.DateTime, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )
    op.create_index(
        "ix_backup_executions_job_date", "backup_executions", ["job_id", "execution_date"]
    )

    op.create_table(
        "backup_copies",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.Integer, sa.ForeignKey("backup_jobs.id"), nullable=False),
        sa.Column("copy_type", sa.String(16), nullable=False),
        sa.Column("media_type", sa.String(16), nullable=False, server_default="disk"),
        sa.Column("storage_path", sa.String(1024)),
        sa.Column("last_backup_date", sa.DateTime, nullable=False),
        sa.Column("last_backup_size", sa.BigInteger),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("updated_at", sa.DateTime, nullable=False),
        sa.UniqueConstraint("job_id", "copy_type", name="uq_backup_copies_job_copy"),
    )


def downgrade() -> None:
    op.drop_table("backup_copies")
    op.drop_table("backup_executions")
    op.drop_table("backup_jobs")
