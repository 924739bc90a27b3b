"""Every Prometheus metric of the project, named in one place so dashboards stay true.

Label values are bounded: endpoints are route templates, reasons and statuses come from short
fixed lists, partitions from the topic's partition count.
"""

from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter(
    "backuphub_http_requests_total", "HTTP requests answered", ["service", "endpoint", "code"]
)
AUTH_FAILURES = Counter(
    "backuphub_auth_failures_total", "Requests refused for a bad API key or token", ["kind"]
)
REPORTS_ACCEPTED = Counter(
    "backuphub_reports_accepted_total", "Reports answered 200 (durable)", ["kind"]
)
REPORTS_REJECTED = Counter("backuphub_reports_rejected_total", "Reports refused", ["reason"])
PUBLISH_SECONDS = Histogram(
    "backuphub_publish_seconds",
    "Time from a valid report to its durable acknowledgement",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
EVENTS_PROCESSED = Counter(
    "backuphub_events_processed_total", "Executions produced by the processors", ["status"]
)
EVENTS_FAILED = Counter(
    "backuphub_events_failed_total", "Events set aside on the dead-letter topic", ["stage"]
)
ROWS_PERSISTED = Counter("backuphub_rows_persisted_total", "New execution rows committed", [])
PERSIST_SECONDS = Histogram(
    "backuphub_persist_batch_seconds",
    "Time to write and commit one batch",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
CONSUMER_LAG = Gauge(
    "backuphub_consumer_lag", "Messages behind the end of the partition", ["topic", "partition"]
)
DATABASE_ERRORS = Counter(
    "backuphub_database_errors_total", "Database operations that failed", ["service"]
)

# --- alerts and what ops watch (consumers.alert_checker, consumers.outbox, consumers.notify) ---
OPEN_ALERTS = Gauge("backuphub_alerts_open", "Unresolved alerts (open or acknowledged)", ["kind"])
ALERT_EVENTS = Counter(
    "backuphub_alert_events_total", "Alert events decided and queued", ["kind", "event_type"]
)
ALERT_CHECKS = Counter(
    "backuphub_alert_checks_total",
    "Missing-backup checks, by outcome (done, skipped: another instance held the lock, failed)",
    ["outcome"],
)
OUTBOX_PENDING = Gauge("backuphub_alert_outbox_pending", "Alert events not yet published")
ALERTS_PUBLISHED = Counter(
    "backuphub_alerts_published_total", "Alert events published to the alerts topic"
)
JOBS_BY_SUCCESS_AGE = Gauge(
    "backuphub_jobs_by_last_success_age",
    "Active jobs by the age of their last successful backup (<1d, 1-2d, 2-7d, >7d, never)",
    ["age"],
)
OLDEST_SUCCESS_AGE = Gauge(
    "backuphub_last_success_oldest_age_seconds",
    "Age of the oldest last successful backup among active jobs that have one",
)
NOTIFY_DELIVERIES = Counter(
    "backuphub_notify_deliveries_total",
    "Alert deliveries by target type and outcome (delivered, retried, parked, duplicate)",
    ["target_type", "outcome"],
)
NOTIFY_SECONDS = Histogram(
    "backuphub_notify_delivery_seconds",
    "Time from an alert event's creation to its delivery",
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
AUTH_FAILURE_SOURCES = Gauge(
    "backuphub_auth_failure_sources_tracked", "Client addresses with recent API-key failures"
)
