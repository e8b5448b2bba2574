"""Settings from environment variables (prefix ``BROADCASTER_``) and an optional ``.env`` file.

Secrets (the Twilio auth token) are only ever read from the environment and are kept as
``SecretStr`` so they never appear in a repr, a log line or an error message.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="BROADCASTER_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    database_url: str = "sqlite:///var/broadcaster.db"
    provider: str = "log"
    templates_dir: Path = Path("templates")
    schedules_dir: Path = Path("schedules")
    recipients_dir: Path = Path("recipients")
    var_dir: Path = Path("var")
    timezone: str = "Asia/Shanghai"
    default_region: str = "CN"
    log_provider_file: Path | None = None
    quiet_hours: str | None = None
    max_attempts: int = 5
    actor: str | None = None

    twilio_account_sid: str | None = Field(
        default=None, validation_alias=AliasChoices("TWILIO_ACCOUNT_SID", "BROADCASTER_TWILIO_ACCOUNT_SID")
    )
    twilio_auth_token: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("TWILIO_AUTH_TOKEN", "BROADCASTER_TWILIO_AUTH_TOKEN")
    )
    twilio_from_number: str | None = Field(
        default=None, validation_alias=AliasChoices("TWILIO_FROM_NUMBER", "BROADCASTER_TWILIO_FROM_NUMBER")
    )
    twilio_messaging_service_sid: str | None = Field(
        default=None,
        validation_alias=AliasChoices(
            "TWILIO_MESSAGING_SERVICE_SID", "BROADCASTER_TWILIO_MESSAGING_SERVICE_SID"
        ),
    )
    twilio_base_url: str | None = None
    webhook_base_url: str | None = None

    # --- delivery engine settings (issue 3) go below this line ---
    # (documented in docs/delivery.md; quiet_hours and max_attempts above belong here too)
    rate_limit: float = Field(default=10.0, ge=0)  # per sender, per second; 0 = no limit
    rate_unit: str = "segments"  # messages | segments
    # The limiter paces this fraction below rate_limit, so jitter cannot push a second at the provider over.
    rate_margin: float = Field(default=0.01, ge=0, lt=0.5)
    # Share rate_limit among all dispatchers sending through the database (workers, daemon, send).
    rate_sharing: bool = True
    concurrency: int | None = Field(default=None, ge=1, le=256)  # default: from the rate limit
    lease_seconds: float = Field(default=120.0, gt=0)
    batch_size: int = Field(default=250, ge=1, le=5000)
    worker_id: str | None = Field(default=None, max_length=200)
    backoff_base_seconds: float = Field(default=2.0, gt=0)
    backoff_max_seconds: float = Field(default=300.0, gt=0)
    reconcile_delay_seconds: float = Field(default=30.0, ge=0)
    log_provider_delay_ms: float = Field(default=0.0, ge=0)
    # auto: providers that can (Twilio) send from one event loop; threads: always a thread pool.
    send_mode: str = Field(default="auto", pattern="^(auto|threads)$")

    @field_validator("quiet_hours")
    @classmethod
    def _quiet_hours(cls, value: str | None) -> str | None:
        from broadcaster.quiet_hours import effective

        effective(None, value)  # raises with the value quoted if it cannot be read
        return value

    @field_validator("rate_unit")
    @classmethod
    def _rate_unit(cls, value: str) -> str:
        if value not in ("messages", "segments"):
            raise ValueError(f"rate unit {value!r}: expected messages or segments")
        return value

    # Twilio adapter, fake Twilio and webhooks (issue 3, Twilio part).
    #: Seconds to open a connection to Twilio; a connect failure means the request surely was not sent.
    twilio_connect_timeout: float = Field(default=5.0, gt=0)
    #: Seconds to wait for Twilio's answer once the request is sent; past it the message may exist.
    twilio_read_timeout: float = Field(default=20.0, gt=0)
    #: HTTP connections kept open to Twilio: at least the number of sending threads.
    twilio_pool_size: int = Field(default=64, ge=1)
    #: Twilio's ValidityPeriod in seconds (1-36000): drop a message still queued after this long.
    twilio_validity_period: int | None = Field(default=None, ge=1, le=36000)
    #: Reconciliation looks for messages created this many seconds before the attempt started
    #: (clock skew between this host and Twilio).
    twilio_lookup_skew_seconds: float = Field(default=300.0, ge=0)
    #: TwiML reply to HELP / INFO.
    help_reply: str = (
        "回复TD或退订停止接收本号码的短信，回复START恢复。Reply STOP to opt out, START to opt in."
    )
    #: TwiML reply confirming a Chinese opt-out word (退订/TD/T); Twilio answers STOP etc. itself.
    optout_reply: str = "退订成功，您将不再收到本号码的短信。回复START恢复。"

    # --- scheduler daemon settings (issue 4) go below this line ---
    # inline: the daemon also dispatches (an embedded worker); workers: `broadcaster worker` does.
    daemon_dispatch: str = Field(default="inline", pattern="^(inline|workers)$")
    daemon_heartbeat_seconds: float = Field(default=10.0, gt=0)
    daemon_standby_poll_seconds: float = Field(default=5.0, gt=0)
    daemon_reload_poll_seconds: float = Field(default=5.0, gt=0)  # watch schedules/ and templates/
    daemon_retry_seconds: float = Field(default=60.0, gt=0)  # after a fire failed, within its grace
    daemon_stop_timeout_seconds: float = Field(default=30.0, ge=0)  # wait for in-flight sends
    daemon_log_format: str = Field(default="text", pattern="^(text|json)$")
    schedule_default_grace_seconds: float = Field(default=3600.0, ge=0)  # misfire grace of a job
    # Rehearsal and tests only (refused unless provider=log): the daemon's clock starts at this
    # ISO instant (with offset) and runs at real speed.
    clock_start: str | None = None

    # --- audit and console settings (issue 5) go below this line ---
    # Records younger than this are never pruned; `audit prune` defaults to this cut-off.
    audit_retention_days: int = Field(default=730, ge=1)
    # Where `audit prune` writes its archive files (default: VAR_DIR/archive).
    audit_archive_dir: Path | None = None
    # Unsealed message events are chained in batches of this many rows per transaction.
    audit_seal_batch: int = Field(default=5000, ge=1)
    # The active daemon seals new message events this often (seconds), so they are protected
    # without an operator running `audit seal`.
    audit_seal_interval_seconds: float = Field(default=60.0, gt=0)
    # For the estimated cost in reports: price of one SMS segment, and its currency.
    cost_per_segment: float = Field(default=0.05, ge=0)
    cost_currency: str = "CNY"
    # Audit console: bind address, session lifetime (absolute) and idle timeout, cookie flags.
    console_host: str = "127.0.0.1"
    console_port: int = 8470
    console_session_minutes: int = Field(default=480, ge=1)
    console_idle_minutes: int = Field(default=60, ge=1)
    console_secure_cookies: bool = False  # set true when the console is served over HTTPS

    # --- end of settings ---

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r} (an IANA name, e.g. Asia/Shanghai)") from None
        return value

    @cached_property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def log_provider_path(self) -> Path:
        return self.log_provider_file or self.var_dir / "log-provider.jsonl"


def load_settings(**overrides: object) -> Settings:
    """Read the environment now (not at import time) so tests and subprocesses see their own."""
    return Settings(**overrides)  # type: ignore[arg-type]
