"""Kafka topic names, kept in one place so every service agrees on them.

A prefix (``BACKUPHUB_TOPIC_PREFIX``) lets several deployments, or test runs, share a broker
without reading each other's events.
"""

from dataclasses import dataclass

DEFAULT_PREFIX = "backuphub."


@dataclass(frozen=True, slots=True)
class Topics:
    """The topics of one deployment."""

    prefix: str = DEFAULT_PREFIX

    @property
    def reports(self) -> str:
        """Reports exactly as the ingest API accepted them, keyed by job id."""
        return f"{self.prefix}reports.raw"

    @property
    def executions(self) -> str:
        """Normalised execution events, one per backup run, keyed by job id."""
        return f"{self.prefix}executions"

    @property
    def alerts(self) -> str:
        """Alert events for downstream subscribers, keyed by job id."""
        return f"{self.prefix}alerts"

    @property
    def dead_letters(self) -> str:
        """Events a service could not handle; kept so nothing accepted is lost."""
        return f"{self.prefix}deadletter"

    def all(self) -> list[str]:
        return [self.reports, self.executions, self.alerts, self.dead_letters]
