"""Configuration from the environment, checked once at start.

The embedded mode needs nothing: it keeps its SQLite file and generated secrets under
``BACKUPHUB_HOME``. The distributed services refuse to start without their secrets.
"""

import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from schemas.topics import DEFAULT_PREFIX, Topics


class ConfigurationError(RuntimeError):
    """A setting is missing or wrong; the message says which and how to fix it."""


def _keys_from(value: str) -> list[str]:
    return [key.strip() for key in value.replace("\n", ",").split(",") if key.strip()]


@dataclass(frozen=True)
class Settings:
    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    database_url: str = ""
    api_keys: list[str] = field(default_factory=list)
    jwt_secret: str = ""
    topics: Topics = field(default_factory=Topics)
    home: Path = Path(".backuphub")
    publish_timeout_seconds: float = 3.0
    retry_after_seconds: int = 5
    # Report POSTs one ingest process handles at once; more are answered 503 at once.
    max_in_flight: int = 256
    # Alerts: how often the missing-backup check runs, the auth-failure-burst thresholds,
    # and the notify service's target file (JSON; see consumers.notify).
    alert_check_seconds: float = 30.0
    auth_burst_threshold: int = 20
    auth_burst_window_seconds: int = 60
    auth_burst_quiet_seconds: int = 300
    notify_config: str = ""

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> "Settings":
        env = dict(os.environ if environ is None else environ)
        keys = _keys_from(env.get("AOMEI_API_KEYS", "")) or _keys_from(env.get("AOMEI_API_KEY", ""))
        return cls(
            kafka_bootstrap_servers=env.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
            database_url=env.get("DATABASE_URL", ""),
            api_keys=keys,
            jwt_secret=env.get("BACKUPHUB_JWT_SECRET", ""),
            topics=Topics(env.get("BACKUPHUB_TOPIC_PREFIX", DEFAULT_PREFIX)),
            home=Path(env.get("BACKUPHUB_HOME", ".backuphub")),
            publish_timeout_seconds=float(env.get("BACKUPHUB_PUBLISH_TIMEOUT", "3")),
            retry_after_seconds=int(env.get("BACKUPHUB_RETRY_AFTER", "5")),
            max_in_flight=int(env.get("BACKUPHUB_MAX_IN_FLIGHT", "256")),
            alert_check_seconds=float(env.get("BACKUPHUB_ALERT_CHECK_SECONDS", "30")),
            auth_burst_threshold=int(env.get("BACKUPHUB_AUTH_BURST_THRESHOLD", "20")),
            auth_burst_window_seconds=int(env.get("BACKUPHUB_AUTH_BURST_WINDOW", "60")),
            auth_burst_quiet_seconds=int(env.get("BACKUPHUB_AUTH_BURST_QUIET", "300")),
            notify_config=env.get("BACKUPHUB_NOTIFY_CONFIG", ""),
        )

    def require(self, *names: str) -> None:
        """Stop the start of a distributed service when a setting it needs is missing."""
        missing = []
        if "api_keys" in names and not self.api_keys:
            missing.append("AOMEI_API_KEYS (one or more API keys, comma-separated)")
        if "jwt_secret" in names and len(self.jwt_secret.strip()) < 32:
            # HS256 wants a key at least as long as its 32-byte hash.
            missing.append("BACKUPHUB_JWT_SECRET (at least 32 characters)")
        if "database_url" in names and not self.database_url:
            missing.append("DATABASE_URL (e.g. postgresql+psycopg://user:pass@127.0.0.1/backuphub)")
        if missing:
            raise ConfigurationError("missing configuration: " + "; ".join(missing))


@dataclass(frozen=True)
class EmbeddedSecrets:
    api_key: str
    jwt_secret: str
    created: bool


def embedded_secrets(home: Path) -> EmbeddedSecrets:
    """The embedded mode's API key and JWT secret, made on first start and kept in ``home``.

    The files are readable by their owner only; nothing else stores the key.
    """
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    key_file, secret_file = home / "api_key", home / "jwt_secret"
    created = not key_file.exists()

    for path in (key_file, secret_file):
        if not path.exists():
            # Created private, never readable by others even for a moment.
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w") as secret:
                secret.write(secrets.token_urlsafe(32) + "\n")

    return EmbeddedSecrets(
        api_key=key_file.read_text().strip(),
        jwt_secret=secret_file.read_text().strip(),
        created=created,
    )
