"""Settings from environment variables (prefix ``BROADCASTER_``) and an optional ``.env`` file.

Secrets (the Twilio auth token) are only ever read from the environment and are kept as
``SecretStr`` so they never appear in a repr, a log line or an error message.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from zoneinfo import ZoneInfo

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
    concurrency: int | None = Field(default=None, ge=1, le=256)  # default: from the rate limit
    lease_seconds: float = Field(default=120.0, gt=0)
    batch_size: int = Field(default=100, ge=1, le=5000)
    worker_id: str | None = Field(default=None, max_length=200)
    backoff_base_seconds: float = Field(default=2.0, gt=0)
    backoff_max_seconds: float = Field(default=300.0, gt=0)
    reconcile_delay_seconds: float = Field(default=30.0, ge=0)
    log_provider_delay_ms: float = Field(default=0.0, ge=0)

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

    # --- scheduler daemon settings (issue 4) go below this line ---

    # --- audit and console settings (issue 5) go below this line ---

    # --- end of settings ---

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        ZoneInfo(value)  # raises for an unknown zone name
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
