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
